"""deploy/k8s: rendered by kustomize, valid against the Kubernetes JSON schemas, and within our own policy.

Rendering uses `kubectl kustomize` (kustomize is built into kubectl; the machine image ships kubectl). The
schemas are the strict (no unknown fields) ones `kubernetes-validate` ships, so validation is offline. Each
resource file is also validated on its own, which needs no kubectl. The policy checks are the operational
promises of docs/operations.md: long drain, probes on the health endpoints, secrets only from Secret
objects, non-root read-only containers, sized resources, an HPA that scales before the load threshold.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
EXAMPLES = ROOT / "catalog" / "examples"

OLDEST_SUPPORTED = "1.29"
VERSIONS = (OLDEST_SUPPORTED, latest_version())

LIVEKIT_MIN_DRAIN_S = 600
IMAGE_UID = 10001
# Sizing basis: this worker's density benchmark with the thread executor the manifests configure
# (`python -m benchmarks.density --executor thread`, README "Performance"): one worker process held 20 calls
# at 106 % of a core (5.3 % per call), 1.9 MB marginal PSS per call (rounded up here) over ~480 MB of its own.
CPU_PER_CALL = 0.053
PSS_MB_PER_CALL = 5
WORKER_BASE_MB = 480
# After its last call ends a draining worker still runs that call's post-call steps and flushes the outbox.
POSTCALL_ALLOWANCE_S = 60

SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)$|^DATABASE_URL$")


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _render() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed; the per-file validation still ran")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return _render()


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _by_prefix(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(found) == 1, f"{kind}/{prefix}-*: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module")
def worker(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(rendered, "Deployment", "voice-worker")


@pytest.fixture(scope="module")
def door(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(rendered, "Deployment", "voice-worker-door")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _config(rendered: list[dict[str, Any]]) -> dict[str, str]:
    return _by_prefix(rendered, "ConfigMap", "voice-worker-config")["data"]


# -- schemas --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_file_is_valid_on_its_own(version: str) -> None:
    files = _kustomization()["resources"]
    assert files, "the kustomization lists no resources"
    for name in files:
        docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
        assert docs, f"{name} is empty"
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = set(_kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_manifests_are_valid(rendered: list[dict[str, Any]], version: str) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
        ]
    )
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_is_strict(worker: dict[str, Any]) -> None:
    broken = copy.deepcopy(worker)
    spec = broken["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_SUPPORTED, strict=True)
    broken = copy.deepcopy(worker)
    _container(broken)["resources"]["requests"]["cpu"] = ["2"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_SUPPORTED, strict=True)


def test_everything_lands_in_one_namespace(rendered: list[dict[str, Any]]) -> None:
    namespace = _one(rendered, "Namespace", "voice-worker")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "voice-worker", doc["metadata"]["name"]


# -- drain and health -----------------------------------------------------------------------------------------


def test_worker_grace_period_covers_the_drain(rendered: list[dict[str, Any]], worker: dict[str, Any]) -> None:
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    config = _config(rendered)
    drain, flush = int(config["DRAIN_TIMEOUT_S"]), float(config["OUTBOX_FLUSH_TIMEOUT_S"])
    assert drain >= LIVEKIT_MIN_DRAIN_S
    # Kubernetes must not SIGKILL the pod while the worker still lets calls end and flushes the outbox.
    assert grace >= drain + POSTCALL_ALLOWANCE_S + flush
    # the longest call the shipped catalog allows ends within the drain
    longest_ms = max(
        r.get("pipeline", {}).get("max_call_duration_ms") or 0
        for p in EXAMPLES.glob("*.yaml")
        for r in yaml.safe_load(p.read_text()).get("revisions", [])
    )
    assert drain >= longest_ms / 1000


def test_rollouts_never_remove_a_worker_before_its_replacement_is_ready(worker: dict[str, Any]) -> None:
    rolling = worker["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_worker_probes_use_the_health_port(worker: dict[str, Any]) -> None:
    container = _container(worker)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 8081
    assert _env(container)["HEALTH_PORT"]["value"] == "8081"
    # alive while the process is up; ready only while registered with LiveKit (worker/server.py)
    paths = {"startupProbe": "/", "readinessProbe": "/ready", "livenessProbe": "/"}
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "health"), probe


def test_door_probes_use_healthz(door: dict[str, Any]) -> None:
    container = _container(door)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8000 == int(_env(container)["DOOR_PORT"]["value"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == ("/healthz", "http"), probe


def test_both_run_the_same_image_with_their_own_command(worker: dict[str, Any], door: dict[str, Any]) -> None:
    assert _container(worker)["image"] == _container(door)["image"]
    assert re.fullmatch(r"voice-worker:\d+\.\d+\.\d+", _container(worker)["image"])
    assert _container(worker)["args"] == ["voice-worker", "start"]
    assert _container(door)["args"] == ["voice-worker", "door"]


# -- secrets --------------------------------------------------------------------------------------------------


def test_no_secret_is_written_into_the_manifests(rendered: list[dict[str, Any]]) -> None:
    assert not [d for d in rendered if d["kind"] == "Secret"], "Secrets are created out of band (docs/operations.md)"
    for doc in rendered:
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if SECRET_NAME.search(k)], doc["metadata"]["name"]


@pytest.mark.parametrize("name", ["voice-worker", "voice-worker-door"])
def test_secret_settings_come_from_secret_key_refs(rendered: list[dict[str, Any]], name: str) -> None:
    container = _container(_one(rendered, "Deployment", name))
    env = _env(container)
    secretish = {k: v for k, v in env.items() if SECRET_NAME.search(k)}
    assert {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DISPATCH_SIGNING_SECRET", "DATABASE_URL"} <= set(secretish)
    for key, var in secretish.items():
        assert "value" not in var, f"{key} is a literal"
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "voice-worker-secrets" and ref["key"] == key
        # the process refuses to start without these, so they must not be optional
        if key in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DISPATCH_SIGNING_SECRET", "DATABASE_URL"):
            assert not ref.get("optional", False), key


def test_door_keys_come_from_a_secret_volume(door: dict[str, Any]) -> None:
    container = _container(door)
    path = Path(_env(container)["DOOR_API_KEYS_FILE"]["value"])
    volumes = {v["name"]: v for v in door["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "voice-worker-door-keys"
    assert [i["path"] for i in secret["items"]] == [path.name]


# -- security context -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["voice-worker", "voice-worker-door"])
def test_runs_as_the_image_user_with_a_read_only_root(rendered: list[dict[str, Any]], name: str) -> None:
    deployment = _one(rendered, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    container = _container(deployment)
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]


def test_worker_can_write_its_working_directory(worker: dict[str, Any]) -> None:
    # the image's WORKDIR (and SQLite's default location) must stay writable under a read-only root
    container = _container(worker)
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/voice-worker")
    assert "emptyDir" in volumes[data["name"]]


# -- resources, load and autoscaling --------------------------------------------------------------------------


def _cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _mib(value: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(value[:-2]) * units[value[-2:]]


@pytest.mark.parametrize("name", ["voice-worker", "voice-worker-door"])
def test_resources_are_set(rendered: list[dict[str, Any]], name: str) -> None:
    resources = _container(_one(rendered, "Deployment", name))["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    assert _mib(resources["limits"]["memory"]) >= _mib(resources["requests"]["memory"])


def test_worker_is_sized_for_its_call_capacity(rendered: list[dict[str, Any]], worker: dict[str, Any]) -> None:
    resources = _container(worker)["resources"]
    config = _config(rendered)
    capacity, threshold = int(config["WORKER_CALL_CAPACITY"]), float(config["LOAD_THRESHOLD"])
    cpus = _cpu(resources["requests"]["cpu"])
    # one thread-executor worker process: the GIL keeps it near one core, so a pod asks for one
    assert config["JOB_EXECUTOR"] == "thread"
    assert cpus == 1
    # the calls a pod takes (up to its capacity, all at once in a burst) fit in its CPU request and its memory;
    # the CPU guard (threshold) only stops calls that cost more than planned
    assert capacity * CPU_PER_CALL <= cpus
    assert 0 < threshold <= 1
    assert _mib(resources["requests"]["memory"]) >= WORKER_BASE_MB + capacity * PSS_MB_PER_CALL
    assert _mib(resources["limits"]["memory"]) >= 1.4 * (WORKER_BASE_MB + capacity * PSS_MB_PER_CALL)


def test_worker_load_is_computed_over_its_cpu_request(worker: dict[str, Any]) -> None:
    ref = _env(_container(worker))["NUM_CPUS"]["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": "worker", "resource": "requests.cpu", "divisor": "1"}


def test_hpa_scales_the_worker_before_its_load_threshold(
    rendered: list[dict[str, Any]], worker: dict[str, Any]
) -> None:
    hpa = _one(rendered, "HorizontalPodAutoscaler", "voice-worker")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    target = metric["resource"]["target"]
    assert target["type"] == "Utilization"
    config = _config(rendered)
    threshold, capacity = float(config["LOAD_THRESHOLD"]), int(config["WORKER_CALL_CAPACITY"])
    cpus = _cpu(_container(worker)["resources"]["requests"]["cpu"])
    # The worker is full at capacity calls, or at threshold of its CPUs, whichever comes first.
    # Utilization is relative to the CPU request (which is also NUM_CPUS): the HPA must ask for a new pod
    # while the busiest it can be is still some way below the first of the two.
    cpu_when_full = min(capacity * CPU_PER_CALL, threshold * cpus)
    target_cores = target["averageUtilization"] / 100 * cpus
    assert target_cores <= 0.8 * cpu_when_full, f"scales at {target_cores:.2f} cores, full at {cpu_when_full:.2f}"
    assert target_cores >= 0.4 * cpu_when_full, "so low that pods idle"
    # scaling down drains calls: slowly, after a quiet spell
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@pytest.mark.parametrize(("name", "component"), [("voice-worker", "worker"), ("voice-worker-door", "door")])
def test_pod_disruption_budgets_cover_the_pods(rendered: list[dict[str, Any]], name: str, component: str) -> None:
    pdb = _one(rendered, "PodDisruptionBudget", name)["spec"]
    labels = _one(rendered, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/component"] == component
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1


def test_door_service_reaches_the_door(rendered: list[dict[str, Any]], door: dict[str, Any]) -> None:
    service = _one(rendered, "Service", "voice-worker-door")["spec"]
    labels = door["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert service["selector"]["app.kubernetes.io/component"] == "door"
    assert [p["targetPort"] for p in service["ports"]] == ["http"]


# -- config, catalog, metrics ---------------------------------------------------------------------------------


def test_catalog_configmap_is_the_example_catalog(rendered: list[dict[str, Any]]) -> None:
    data = _by_prefix(rendered, "ConfigMap", "voice-worker-catalog")["data"]
    # a ConfigMap is flat: tools/ files land beside the agents (the loader tells them apart by kind)
    assert data == {p.name: p.read_text() for p in EXAMPLES.rglob("*.yaml")}
    # deploy/k8s/catalog is a copy kustomize may read (it refuses files outside its directory)
    assert {p.relative_to(K8S / "catalog"): p.read_bytes() for p in (K8S / "catalog").rglob("*.yaml")} == {
        p.relative_to(EXAMPLES): p.read_bytes() for p in EXAMPLES.rglob("*.yaml")
    }


@pytest.mark.parametrize("name", ["voice-worker", "voice-worker-door"])
def test_catalog_is_mounted_at_catalog_path(rendered: list[dict[str, Any]], name: str) -> None:
    deployment = _one(rendered, "Deployment", name)
    container = _container(deployment)
    catalog_path = _config(rendered)["CATALOG_PATH"]
    assert any(r["configMapRef"]["name"].startswith("voice-worker-config-") for r in container["envFrom"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == catalog_path)
    assert mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"].startswith("voice-worker-catalog-")


@pytest.mark.parametrize("name", ["voice-worker", "voice-worker-door"])
def test_every_variable_is_a_setting(rendered: list[dict[str, Any]], name: str) -> None:
    """Settings ignore unknown variables, so a misspelt name would silently keep its default."""
    from door.settings import DoorSettings
    from worker.settings import Settings

    # the ConfigMap feeds both deployments: a name is known when the worker's or the door's settings read it
    known = {field.validation_alias for cls in (Settings, DoorSettings) for field in cls.model_fields.values()}
    # read by livekit-agents (its CPU monitor, its warm-up), not by Settings
    known |= {"NUM_CPUS", "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"}
    names = set(_config(rendered)) | set(_env(_container(_one(rendered, "Deployment", name))))
    assert names <= known, sorted(names - known)


def test_config_runs_in_production_mode(rendered: list[dict[str, Any]]) -> None:
    config = _config(rendered)
    assert config["VOICE_WORKER_MODE"] == "production"
    assert config["LIVEKIT_URL"].startswith(("ws://", "wss://"))
    assert config["DOOR_PUBLIC_LIVEKIT_URL"].startswith("wss://")


def test_prometheus_scrapes_the_metrics_ports(worker: dict[str, Any], door: dict[str, Any]) -> None:
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    container = _container(worker)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert (
        int(annotations["prometheus.io/port"]) == ports["metrics"] == int(_env(container)["PROMETHEUS_PORT"]["value"])
    )
    assert annotations["prometheus.io/path"] == "/metrics"
    door_annotations = door["spec"]["template"]["metadata"]["annotations"]
    assert int(door_annotations["prometheus.io/port"]) == _container(door)["ports"][0]["containerPort"]
    assert door_annotations["prometheus.io/path"] == "/metrics"
