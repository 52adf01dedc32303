"""deploy/kubernetes validated offline: every Kubernetes object against the API's JSON schemas in strict mode
(kubernetes-validate ships them), KEDA's objects against the fields of its CRD we use (tests/data); then what
the schemas cannot say: a worker Deployment and a ScaledObject per queue kind, probes on /healthz and /readyz,
resources on every container, the migration Job, references that resolve, the providers file loading, the
settings parsing. And docker-compose.yml: the monitoring profile's services and the files they mount."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from switchyard.core.config import load_config
from switchyard.settings import Settings
from switchyard.workers.queues import ALL
from tests.support import ROOT

K8S = ROOT / "deploy" / "kubernetes"
# The Kubernetes version the manifests are checked against (HPA autoscaling/v2, PDB policy/v1, batch/v1 Jobs
# with ttlSecondsAfterFinished are all GA well before it).
K8S_VERSION = "1.29.0"
KEDA = json.loads((ROOT / "tests" / "data" / "keda-v2-subset.schema.json").read_text())


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            yield doc


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc) for doc in documents(path)]
    return found


ALL_MANIFESTS = manifests()


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in ALL_MANIFESTS if doc["kind"] == kind}


@pytest.mark.parametrize(("where", "doc"), ALL_MANIFESTS, ids=[w for w, _ in ALL_MANIFESTS])
def test_each_object_validates(where: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        schema = {**KEDA, "$ref": f"#/$defs/{doc['kind']}"}
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validators_refuse_mistakes() -> None:
    deployment = of_kind("Deployment")["switchyard-api"]
    wrong = json.loads(json.dumps(deployment))
    wrong["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)
    scaled = json.loads(json.dumps(of_kind("ScaledObject")["switchyard-worker-provider"]))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 500
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator({**KEDA, "$ref": "#/$defs/ScaledObject"}).validate(scaled)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec["containers"]) + list(spec.get("initContainers", []))


def test_a_worker_per_queue_kind_scaled_on_its_queue() -> None:
    deployments = of_kind("Deployment")
    scaled = of_kind("ScaledObject")
    for queue in ALL:
        name = f"switchyard-worker-{queue}"
        args = containers(deployments[name])[0]["args"]
        assert args[0] == "worker"
        assert args[args.index("--queues") + 1] == queue
        triggers = scaled[name]["spec"]["triggers"]
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        assert [t["metadata"]["listName"] for t in triggers if t["type"] == "redis"] == [queue]
        assert triggers[0]["authenticationRef"]["name"] in of_kind("TriggerAuthentication")


def test_api_probes_service_and_hpa() -> None:
    api = of_kind("Deployment")["switchyard-api"]
    (container,) = containers(api)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = of_kind("Service")["switchyard-api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}
    hpa = of_kind("HorizontalPodAutoscaler")["switchyard-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "switchyard-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_migration_job() -> None:
    job = of_kind("Job")["switchyard-migrate"]
    assert containers(job)[0]["args"] == ["migrate"]


def test_every_container_has_resources_and_resolvable_references() -> None:
    config_maps, secrets, claims = of_kind("ConfigMap"), of_kind("Secret"), of_kind("PersistentVolumeClaim")
    for kind in ("Deployment", "Job"):
        for name, doc in of_kind(kind).items():
            for container in containers(doc):
                resources = container["resources"]
                assert {"cpu", "memory"} <= resources["requests"].keys() <= resources["limits"].keys(), name
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        assert source["configMapRef"]["name"] in config_maps
                    else:
                        assert source["secretRef"]["name"] in secrets
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
    # The Secret the pods read carries what Switchyard needs to reach its database and Redis.
    secret = secrets["switchyard-secrets"]["stringData"]
    assert {"SWITCHYARD_DATABASE_URL", "SWITCHYARD_REDIS_URL", "REDIS_ADDRESS", "REDIS_PASSWORD"} <= secret.keys()


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # The example Secret is never applied with the rest.
    assert "secret.example.yaml" not in kustomization["resources"]


def test_providers_file_and_settings_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = of_kind("ConfigMap")["switchyard-config"]["data"]["switchyard.yaml"]
    (tmp_path / "switchyard.yaml").write_text(data)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    config = load_config(tmp_path / "switchyard.yaml")
    assert "chat-default" in config.models
    env = of_kind("ConfigMap")["switchyard-env"]["data"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.shed_queue_depth == int(env["SWITCHYARD_SHED_QUEUE_DEPTH"])
    assert settings.retention_s("tasks") == float(env["SWITCHYARD_RETENTION_TASKS_DAYS"]) * 86400


# --- docker-compose.yml ------------------------------------------------------------------------------------------


def test_compose_monitoring_profile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    mounted = set()
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
        for mount in services[name].get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                mounted.add(source.removeprefix("./"))
    # The dashboard (deploy/grafana/dashboards/switchyard.json) and the alert rules (deploy/prometheus/alerts.yml)
    # come with the metrics work, in these directories; the rest is here.
    assert mounted == {"deploy/prometheus", "deploy/grafana/dashboards", "deploy/grafana/provisioning"}
    for directory in mounted - {"deploy/grafana/dashboards"}:
        assert (ROOT / directory).is_dir(), directory
    # The core services stay out of any profile: `docker compose up` starts them as before.
    assert all("profiles" not in services[name] for name in ("api", "worker-provider", "postgres", "redis"))
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in prometheus["rule_files"]
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["switchyard-api"]["static_configs"][0]["targets"] == ["api:8000"]
    (discovery,) = jobs["switchyard-workers"]["dns_sd_configs"]
    workers = {name for name in services if name.startswith("worker-")}
    assert set(discovery["names"]) == workers
    assert discovery["port"] == 9101
    assert {"worker-provider", "worker-batch", "worker-ml", "worker-control", "worker-webhooks"} == workers
    for worker in workers:
        assert services[worker]["environment"]["SWITCHYARD_METRICS_PORT"] == "9101"
    datasources = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "switchyard.yml").read_text()
    )
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
