"""The Kubernetes manifests: schema-valid, and wired to each other as DEPLOY.md describes."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.deploy.files import (
    ADAPTER_VALUES,
    K8S,
    REPO,
    all_k8s_objects,
    find_object,
    k8s_manifests,
    load_yaml,
)
from tests.tools import require_tool

VALIDATE_TIMEOUT_S = 60


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    spec = _pod_spec(workload)
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        if container["name"] == name:
            return container
    raise LookupError(name)


def test_every_manifest_passes_kubernetes_validate() -> None:
    tool = require_tool("kubernetes-validate")
    manifests = [str(p.relative_to(REPO)) for p in k8s_manifests()]
    result = subprocess.run(
        [tool, "--strict", *manifests],
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_S,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_top_level_manifest() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in k8s_manifests() if p.parent == K8S}
    assert listed == on_disk


def test_backend_asks_for_gpus_and_probes_health_and_readiness() -> None:
    backend = find_object("Deployment", "tailgate-backend")
    container = _container(backend, "backend")
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    tp = int(container["args"][container["args"].index("--tp") + 1])
    assert tp == container["resources"]["limits"]["nvidia.com/gpu"]
    service = find_object("Service", "tailgate-backend")
    assert service["spec"]["clusterIP"] == "None"
    assert (
        service["spec"]["selector"].items()
        <= backend["spec"]["template"]["metadata"]["labels"].items()
    )


def test_gateway_probes_autoscaling_and_disruption_budget_target_the_gateway() -> None:
    gateway = find_object("Deployment", "tailgate-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    container = _container(gateway, "gateway")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "replicas" not in gateway["spec"], "the HorizontalPodAutoscaler owns replicas"
    spread = _pod_spec(gateway)["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    pdb = find_object("PodDisruptionBudget", "tailgate-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find_object("HorizontalPodAutoscaler", "tailgate-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tailgate-gateway"
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a CPU request"


def test_gateway_drain_fits_in_the_termination_grace_period() -> None:
    gateway = find_object("Deployment", "tailgate-gateway")
    config = yaml.safe_load(find_object("ConfigMap", "tailgate-gateway")["data"]["gateway.yaml"])
    pre_stop_s = int(_container(gateway, "gateway")["lifecycle"]["preStop"]["exec"]["command"][1])
    drain_s = int(str(config["drain_timeout"]).removesuffix("s"))
    assert pre_stop_s + drain_s < _pod_spec(gateway)["terminationGracePeriodSeconds"]


def test_custom_metric_is_served_by_the_adapter_rule(gateway_families: set[str]) -> None:
    from tests.deploy.promql import is_exported, metric_names

    hpa = find_object("HorizontalPodAutoscaler", "tailgate-gateway")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    rules = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    assert wanted <= {rule["name"]["as"] for rule in rules}
    for rule in rules:
        for name in metric_names(rule["seriesQuery"]):
            assert is_exported(name, gateway_families), name


def test_sidecar_gateway_listens_on_loopback_for_its_application() -> None:
    (path,) = (p for p in k8s_manifests() if p.name == "sidecar.yaml")
    objects = {obj["kind"]: obj for source, obj in all_k8s_objects() if source == path}
    config = yaml.safe_load(objects["ConfigMap"]["data"]["gateway.yaml"])
    assert config["listen"]["host"] == "127.0.0.1"
    containers = _pod_spec(objects["Deployment"])
    sidecar = containers["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    app_env = {e["name"]: e["value"] for e in containers["containers"][0]["env"]}
    assert app_env["OPENAI_BASE_URL"].startswith(f"http://127.0.0.1:{config['listen']['port']}/")


def test_backends_scale_on_ttft_p95_served_by_the_adapters_external_rule(
    gateway_families: set[str],
) -> None:
    from tests.deploy.promql import is_exported, metric_names

    backend = find_object("Deployment", "tailgate-backend")
    assert "replicas" not in backend["spec"], "the HorizontalPodAutoscaler owns replicas"
    hpa = find_object("HorizontalPodAutoscaler", "tailgate-backend")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tailgate-backend"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["target"] == {"type": "Value", "value": "500m"}  # 500 ms
    (rule,) = (
        r
        for r in load_yaml(ADAPTER_VALUES)["rules"]["external"]
        if r["name"]["as"] == metric["external"]["metric"]["name"]
    )
    assert metric_names(rule["seriesQuery"]) == {"tailgate_time_to_first_token_seconds_bucket"}
    assert all(is_exported(n, gateway_families) for n in metric_names(rule["seriesQuery"]))
    assert "histogram_quantile(0.95" in rule["metricsQuery"]
