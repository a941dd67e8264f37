"""deploy/k8s: every overlay renders, validates offline and keeps the platform's rules.

Built-in kinds are validated against the Kubernetes JSON schemas of one pinned version
(`kubernetes-validate`, strict: unknown fields fail); the CRDs used (KEDA ScaledObject and
TriggerAuthentication, Strimzi KafkaTopic, prometheus-operator ServiceMonitor) against the schemas
in deploy/schemas/, condensed from the projects' published CRDs (each file names its source).
Then policy: requests, limits, probes and a locked-down security context on every container; no
Secret value anywhere; every reference resolves; settings, topics and autoscalers agree with the
settings model (schemas/settings.py) and with each other.
"""

import copy
import os
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from emostream.schemas.settings import Settings

from tests._deploy_helpers import (
    KUBERNETES_VERSION,
    METRICS_PORT,
    OVERLAYS,
    STAGES,
    WORKER_UID,
    by_kind,
    crd_schemas,
    external_secrets,
    one,
    pod_templates,
    render,
    settings_env,
    worker_deployments,
)
from tests._deploy_helpers import (
    RUNBOOK as RUNBOOK_PATH,
)

# stage -> the settings field of its input topic (the topic whose consumer-group lag it scales on)
INPUT_TOPIC = {"vad": "audio", "inference": "segments", "plugins": "emotions"}
SECRET_NAME_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE", re.IGNORECASE)
# EMOSTREAM_* variables read outside schemas/settings.py, each with who reads it
OUTSIDE_SETTINGS = {"EMOSTREAM_MODEL_PATH": "model/registry.py: extra checkpoint folders"}

pytestmark = pytest.mark.parametrize("overlay", OVERLAYS)


def _settings(docs: list[dict[str, Any]]) -> Settings:
    """The settings a worker of this overlay builds from its ConfigMap (Settings() reads the env)."""
    env = settings_env(docs)
    saved = {
        name: os.environ.pop(name) for name in list(os.environ) if name.startswith("EMOSTREAM_")
    }
    try:
        os.environ.update(env)
        return Settings()
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)


# -- rendering and schemas --------------------------------------------------------------------------
def test_overlay_renders_and_validates_against_pinned_schemas(overlay):
    docs = render(overlay)
    schemas = crd_schemas()
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        schema = schemas.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
            assert not errors, f"{where}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
            )
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(
                f"{where}: no schema for {doc['apiVersion']} {doc['kind']} (add one to deploy/schemas)"
            )
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {error.message} at {'/'.join(map(str, error.path))}")
    assert {
        "Deployment",
        "ConfigMap",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    assert {"KafkaTopic"} <= kinds


def test_the_crd_schemas_reject_a_misspelt_field(overlay):
    """The condensed CRD schemas are closed: a field the CRD does not have fails (not pruned)."""
    docs = render(overlay)
    schemas = crd_schemas()
    checked = 0
    for doc in docs:
        schema = schemas.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            continue
        broken = copy.deepcopy(doc)
        broken["spec"]["replicaCount"] = 3  # in no CRD used here
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken)), doc["kind"]
        checked += 1
    assert checked >= 2


# -- containers ----------------------------------------------------------------------------------
def test_every_container_has_resources_probes_and_a_locked_down_security_context(overlay):
    docs = render(overlay)
    templates = list(pod_templates(docs))
    assert templates
    for workload, pod in templates:
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, f"{where}: no API token mounted"
        assert pod.get("terminationGracePeriodSeconds", 0) >= 10, f"{where}: a grace period"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name = f"{where} container {container['name']}"
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resources.get(section, {}).get(resource), f"{name}: {section}.{resource}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("privileged", False) is False, name
            assert "ALL" in security.get("capabilities", {}).get("drop", []), name
            assert (security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))) is True, name
            uid = security.get("runAsUser", pod_security.get("runAsUser"))
            assert uid is not None and uid != 0, f"{name}: a numeric non-root user"
            seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault"
        for container in pod["containers"]:
            name = f"{where} container {container['name']}"
            assert container.get("livenessProbe"), f"{name}: liveness probe"
            assert container.get("readinessProbe"), f"{name}: readiness probe"


def test_workers_probe_the_health_endpoints_and_run_the_stage_entry_point(overlay, emostream_cli):
    docs = render(overlay)
    env = settings_env(docs)
    assert int(env["EMOSTREAM_OBSERVABILITY__METRICS_PORT"]) == METRICS_PORT
    assert (
        env["EMOSTREAM_OBSERVABILITY__METRICS_HOST"] == "0.0.0.0"
    )  # the pod network, not loopback
    help_text = emostream_cli.run("worker", "--help").stdout
    for stage, deployment in worker_deployments(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsUser"] == WORKER_UID  # the image's user (Dockerfile)
        assert container["args"][:2] == ["worker", stage]
        for flag in container["args"][2:]:
            assert flag in help_text, f"{stage}: {flag} is not an option of `emostream worker`"
        assert stage in help_text
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"metrics": METRICS_PORT}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)


# -- secrets and references ------------------------------------------------------------------------
def test_no_secret_value_is_rendered(overlay):
    docs = render(overlay)
    for secret in by_kind(docs, "Secret").values():
        assert not secret.get("data") and not secret.get("stringData"), secret["metadata"]["name"]
    for name in settings_env(docs):
        assert not SECRET_NAME_WORDS.search(name), f"{name} is a secret: reference it from a Secret"
    for workload, pod in pod_templates(docs):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            for variable in container.get("env", []):
                if SECRET_NAME_WORDS.search(variable["name"]):
                    assert "value" not in variable, f"{variable['name']} carries a value"
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]


def _secret_references(docs):
    """(where, secret name, key or None) of every Secret reference in the rendered output."""
    for workload, pod in pod_templates(docs):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield where, ref["name"], ref["key"]
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    yield where, source["secretRef"]["name"], None
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                items = volume["secret"].get("items") or [{"key": None}]
                for item in items:
                    yield where, volume["secret"]["secretName"], item["key"]
    for auth in by_kind(docs, "TriggerAuthentication").values():
        for ref in auth["spec"].get("secretTargetRef", []):
            yield f"TriggerAuthentication/{auth['metadata']['name']}", ref["name"], ref["key"]


def test_every_secret_reference_resolves_to_a_rendered_or_documented_secret(overlay):
    docs = render(overlay)
    rendered = {
        name: set(secret.get("data") or {}) | set(secret.get("stringData") or {})
        for name, secret in by_kind(docs, "Secret").items()
    }
    documented = external_secrets()
    references = list(_secret_references(docs))
    assert references or overlay == "dev"
    for where, name, key in references:
        keys = rendered.get(name, documented.get(name))
        assert keys is not None, (
            f"{overlay}: {where} references Secret {name!r}: neither rendered nor in deploy/README.md's Secrets table"
        )
        assert key is None or key in keys, (
            f"{overlay}: {where}: Secret {name!r} has no key {key!r} documented"
        )


def test_every_object_reference_resolves(overlay):
    docs = render(overlay)
    config_maps = by_kind(docs, "ConfigMap")
    deployments = by_kind(docs, "Deployment")
    service_accounts = by_kind(docs, "ServiceAccount")
    for workload, pod in pod_templates(docs):
        where = f"{overlay}: {workload['metadata']['name']}"
        account = pod.get("serviceAccountName")
        assert account is None or account in service_accounts, f"{where}: ServiceAccount {account}"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where
            mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
            claims = workload["spec"].get("volumeClaimTemplates", [])
            volumes = {v["name"] for v in pod.get("volumes", [])} | {
                c["metadata"]["name"] for c in claims
            }
            assert mounted <= volumes, where
    auths = by_kind(docs, "TriggerAuthentication")
    for scaled in by_kind(docs, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in auths, "the TriggerAuthentication exists"
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    # selectors (PDBs, Services, NetworkPolicies) select the pods they are meant for
    pods = [
        workload["spec"]["template"]["metadata"]["labels"] for workload, _ in pod_templates(docs)
    ]

    def selected(selector):
        labels = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
        return [
            pod
            for pod in pods
            if all(pod.get(k) == v for k, v in labels.items())
            and all(pod.get(e["key"]) in e["values"] for e in expressions if e["operator"] == "In")
        ]

    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        assert len(selected(pdb["spec"]["selector"])) == 1, pdb["metadata"]["name"]
    for policy in by_kind(docs, "NetworkPolicy").values():
        assert selected(policy["spec"]["podSelector"]), policy["metadata"]["name"]
    metrics = by_kind(docs, "Service")["emostream-metrics"]
    scraped = selected({"matchLabels": metrics["spec"]["selector"]})
    assert {pod["app.kubernetes.io/component"] for pod in scraped} == set(STAGES)
    monitor = one(docs, "ServiceMonitor")
    service_labels = metrics["metadata"]["labels"]
    assert all(
        service_labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in metrics["spec"]["ports"]
    }
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for stage in worker_deployments(docs):
        assert f"emostream-{stage}" in pdbs, f"{overlay}: a PodDisruptionBudget for {stage}"


# -- settings, topics, autoscaling ---------------------------------------------------------------
def _field(model, dotted: list[str]):
    for part in dotted:
        fields = type(model).model_fields if not isinstance(model, type) else model.model_fields
        assert part in fields, part
        model = fields[part].annotation
    return model


def test_every_settings_variable_is_a_field_of_the_settings_model(overlay):
    docs = render(overlay)
    names = set(settings_env(docs))
    for _, pod in pod_templates(docs):
        for container in pod["containers"]:
            names |= {
                v["name"] for v in container.get("env", []) if v["name"].startswith("EMOSTREAM_")
            }
    for name in sorted(names - set(OUTSIDE_SETTINGS)):
        path = name.removeprefix("EMOSTREAM_").lower().split("__")
        try:
            _field(Settings, path)
        except AssertionError as error:
            pytest.fail(f"{overlay}: {name} is no field of schemas/settings.py (at {error})")
    _settings(docs)  # and the ConfigMap's values validate


def test_kafka_topics_match_the_settings(overlay):
    docs = render(overlay)
    settings = _settings(docs)
    topics = {doc["spec"]["topicName"]: doc["spec"] for doc in by_kind(docs, "KafkaTopic").values()}
    wanted = {
        getattr(settings.topics, field)
        for field in ("audio", "segments", "emotions", "alerts", "dead_letters")
    }
    assert set(topics) == wanted
    for name, spec in topics.items():
        assert spec["partitions"] == settings.topics.partitions, name
        assert spec["replicas"] == settings.topics.replication_factor, name
        assert int(spec["config"]["min.insync.replicas"]) <= spec["replicas"], name
    dead_letters = int(topics[settings.topics.dead_letters]["config"]["retention.ms"])
    others = [
        int(spec["config"]["retention.ms"])
        for name, spec in topics.items()
        if name != settings.topics.dead_letters
    ]
    assert dead_letters > max(others), "dead letters are kept longer than anything else"


def test_autoscalers_follow_lag_or_cpu_and_are_capped_by_partitions(overlay):
    docs = render(overlay)
    settings = _settings(docs)
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]: doc for doc in by_kind(docs, "ScaledObject").values()
    }
    hpas = {
        doc["spec"]["scaleTargetRef"]["name"]: doc
        for doc in by_kind(docs, "HorizontalPodAutoscaler").values()
    }
    for stage, deployment in worker_deployments(docs).items():
        name = deployment["metadata"]["name"]
        assert (name in scaled) != (name in hpas), f"{overlay}: {name} has exactly one autoscaler"
        if name in scaled:
            spec = scaled[name]["spec"]
            assert (
                1
                <= spec["minReplicaCount"]
                <= spec["maxReplicaCount"]
                <= settings.topics.partitions
            )
            (trigger,) = spec["triggers"]
            assert trigger["type"] == "kafka"
            meta = trigger["metadata"]
            assert meta["topic"] == getattr(settings.topics, INPUT_TOPIC[stage])
            assert (
                meta["consumerGroup"] == f"{settings.worker_id}-{stage}"
            )  # workers.app.create_app
            assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
            assert meta["offsetResetPolicy"] == "earliest"  # as the workers' consumers
            assert meta["allowIdleConsumers"] == "false"
            assert int(meta["lagThreshold"]) >= 1
            behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        else:
            spec = hpas[name]["spec"]
            assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] <= settings.topics.partitions
            behavior = spec["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120, (
            "scale-downs are rebalances"
        )
        assert "stabilizationWindowSeconds" in behavior["scaleUp"]
        replicas = deployment["spec"].get("replicas", 1)
        assert replicas <= settings.topics.partitions


def test_settings_reach_workers_only_through_the_configmap_and_secrets(overlay):
    docs = render(overlay)
    for deployment in worker_deployments(docs).values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for variable in container.get("env", []):
            if variable["name"].startswith("EMOSTREAM_") and "value" in variable:
                # plain values belong in the ConfigMap, except a file path the Deployment mounts
                assert variable["value"].startswith("/etc/emostream/"), variable["name"]


# -- alerts ------------------------------------------------------------------------------------
def _exported_metric_names() -> set[str]:
    """Every sample name a worker exports (workers/runtime/metrics.py's WorkerMetrics)."""
    from emostream.workers.runtime.metrics import WorkerMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in WorkerMetrics("vad").registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_alert_rules_use_only_metrics_the_workers_export(overlay):
    docs = render(overlay)
    exported = _exported_metric_names()
    rules = [
        rule
        for doc in by_kind(docs, "PrometheusRule").values()
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    assert rules
    for rule in rules:
        for name in re.findall(r"\b(emostream_[a-z_]+)", str(rule["expr"])):
            assert name in exported, f"{rule['alert']}: {name} is not a worker metric"
        assert rule["annotations"]["runbook"].startswith("deploy/README.md#")
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        headings = re.findall(r"^## (.+)$", (RUNBOOK_PATH.read_text()), re.MULTILINE)
        assert anchor in {
            re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings
        }, anchor
