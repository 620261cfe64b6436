"""Where the deployment files live, and how to read the ones the tests check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "docker-compose.gpu.yml")
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_RULES = DEPLOY / "prometheus" / "alerts.yml"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"

# YAML files under deploy/k8s that are not Kubernetes objects.
K8S_NON_MANIFESTS = {K8S / "kustomization.yaml", ADAPTER_VALUES}


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p not in K8S_NON_MANIFESTS)


def k8s_objects(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def all_k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_manifests():
        for obj in k8s_objects(path):
            yield path, obj


def find_object(kind: str, name: str) -> dict[str, Any]:
    for _, obj in all_k8s_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise LookupError(f"no {kind} named {name} under {K8S}")


def embedded_gateway_configs() -> dict[str, str]:
    """Every gateway config embedded in a ConfigMap, keyed by 'file:ConfigMap/name'."""
    found: dict[str, str] = {}
    for path, obj in all_k8s_objects():
        if obj["kind"] == "ConfigMap" and "gateway.yaml" in obj.get("data", {}):
            key = f"{path.relative_to(REPO)}:ConfigMap/{obj['metadata']['name']}"
            found[key] = obj["data"]["gateway.yaml"]
    return found


def gateway_config_files() -> list[Path]:
    """Gateway configs kept as plain files: the examples in config/ and compose's."""
    return [*sorted((REPO / "config").glob("*.yaml")), DEPLOY / "compose" / "gateway.yaml"]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)
