"""Rendering and reading deploy/: kustomize overlays, CRD schemas, the runbook's table of Secrets.

`render(overlay)` runs `kubectl kustomize` (or a standalone `kustomize build`) on
deploy/k8s/overlays/<overlay> and returns the parsed documents; the tests that need it skip with a
message naming what to install when neither command exists.
"""

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS_DIR = DEPLOY / "k8s" / "overlays"
OVERLAYS = sorted(
    path.name for path in OVERLAYS_DIR.iterdir() if (path / "kustomization.yaml").exists()
)
CRD_SCHEMAS_DIR = DEPLOY / "schemas"
RUNBOOK = DEPLOY / "README.md"
# The Kubernetes version whose (strict) schemas the rendered built-in resources must satisfy.
KUBERNETES_VERSION = "1.33.0"
STAGES = ("vad", "inference", "plugins")
WORKER_UID = 10001
METRICS_PORT = 9102

Doc = dict[str, Any]


MIN_KUSTOMIZE_MAJOR = 4  # kustomize Components; kubectl >= 1.21 embeds kustomize 4 or newer
INSTALL_HINT = (
    "install kubectl >= 1.21 (it embeds kustomize; Debian 12's kubernetes-client is 1.20, too old) "
    "or a kustomize >= 4 binary to render deploy/k8s/overlays"
)


@functools.cache
def _kustomize_prefix() -> tuple[str, ...]:
    if kubectl := shutil.which("kubectl"):
        result = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        try:
            embedded = json.loads(result.stdout).get("kustomizeVersion", "")
        except ValueError:
            embedded = ""
        major = re.match(r"v?(\d+)", embedded)
        if major and int(major.group(1)) >= MIN_KUSTOMIZE_MAJOR:
            return (kubectl, "kustomize")
    if kustomize := shutil.which("kustomize"):
        return (kustomize, "build")
    pytest.skip(f"no kustomize >= {MIN_KUSTOMIZE_MAJOR} found: {INSTALL_HINT}")


def _kustomize_command(directory: Path) -> list[str]:
    return [*_kustomize_prefix(), str(directory)]


@functools.cache
def _render_text(overlay: str) -> str:
    result = subprocess.run(
        _kustomize_command(OVERLAYS_DIR / overlay),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize failed for overlay {overlay}:\n{result.stderr}")
    return result.stdout


def render(overlay: str) -> list[Doc]:
    """The rendered documents of one overlay (a fresh copy: tests may modify them)."""
    return [doc for doc in yaml.safe_load_all(_render_text(overlay)) if doc]


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def one(docs: list[Doc], kind: str) -> Doc:
    found = list(by_kind(docs, kind).values())
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> JSON schema, from deploy/schemas/<group>-<version>-<Kind>.json."""
    schemas = {}
    for path in sorted(CRD_SCHEMAS_DIR.glob("*.json")):
        group, version, kind = path.stem.rsplit("-", 2)
        schemas[(f"{group}/{version}", kind)] = json.loads(path.read_text())
    return schemas


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template spec) of every Deployment / StatefulSet / DaemonSet / Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def worker_deployments(docs: list[Doc]) -> dict[str, Doc]:
    """stage -> the Deployment running `emostream worker <stage>`."""
    found = {}
    for doc in by_kind(docs, "Deployment").values():
        stage = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        if stage in STAGES:
            found[stage] = doc
    assert sorted(found) == sorted(STAGES), f"worker Deployments found: {sorted(found)}"
    return found


def settings_env(docs: list[Doc]) -> dict[str, str]:
    """The EMOSTREAM_* variables of the settings ConfigMap every worker reads."""
    maps = [
        doc
        for doc in docs
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("emostream-settings")
    ]
    assert len(maps) == 1, "one settings ConfigMap"
    return dict(maps[0]["data"])


def external_secrets() -> dict[str, set[str]]:
    """The Secrets the runbook documents as created outside this repository: name -> keys.

    Rows of the table under the heading "## Secrets" in deploy/README.md:
    | `secret-name` | `key1`, `key2` | ... |
    """
    text = RUNBOOK.read_text()
    section = re.search(r"^## Secrets\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert section, "deploy/README.md has a '## Secrets' section"
    secrets: dict[str, set[str]] = {}
    for row in re.finditer(r"^\| `([a-z0-9.-]+)` \| ([^|]+) \|", section.group(1), re.MULTILINE):
        secrets[row.group(1)] = set(re.findall(r"`([^`]+)`", row.group(2)))
    assert secrets, "the Secrets table lists at least one Secret"
    return secrets
