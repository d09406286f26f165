"""deploy/k8s: every Kustomize overlay renders with ``kubectl kustomize`` (Debian's kubernetes-client)
and each rendered object validates with ``kubernetes-validate`` (strict: unknown fields fail).

The overlays need their secret files, which are never committed: the test makes them the way the
README tells an admin to (``make-secrets.sh`` for the demo, two URL files for production) in a copy.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from node.config import load_config
from tests.helpers import ROOT, require_tool

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes release still widely supported by vendors in 2026
OVERLAYS = ("production", "demo")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    kubectl = require_tool("kubectl")
    require_tool("openssl")
    tree = tmp_path_factory.mktemp("k8s") / "deploy"
    shutil.copytree(ROOT / "deploy", tree)
    subprocess.run(["sh", str(tree / "docker/make-secrets.sh"), str(tree / "k8s/overlays/demo/secrets")], check=True, capture_output=True, timeout=60)
    prod = tree / "k8s/overlays/production/secrets"
    prod.mkdir()
    (prod / "ledger_url").write_text("postgresql+psycopg://alnnode:pw1@db.example.org:5432/alnnode")
    (prod / "broker_url").write_text("redis://:pw2@redis.example.org:6379/0")
    out: dict[str, list[dict[str, Any]]] = {}
    for name in ("base", *(f"overlays/{o}" for o in OVERLAYS)):
        run = subprocess.run([kubectl, "kustomize", str(tree / "k8s" / name)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"kubectl kustomize {name}: {run.stderr}"
        out[name.removeprefix("overlays/")] = [d for d in yaml.safe_load_all(run.stdout) if d]
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_rendered_manifests_validate_with_kubernetes_validate(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    for doc in rendered[name]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_is_strict(rendered: dict[str, list[dict[str, Any]]]) -> None:
    edge = copy.deepcopy(by_kind(rendered["production"], "Deployment")["alnnode-edge"])
    edge["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo must not pass
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(edge, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_have_what_a_deployment_needs(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    docs = rendered[name]
    deployments = by_kind(docs, "Deployment")
    assert {"alnnode-edge", "alnnode-worker-gpu", "alnnode-worker-io"} <= set(deployments)
    ns = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert ns == {f"alnnode{'-demo' if name == 'demo' else ''}"}
    services = by_kind(docs, "Service")
    assert {p["port"] for p in services["alnnode-dicom"]["spec"]["ports"]} == {11112}
    assert {p["port"] for p in services["alnnode-http"]["spec"]["ports"]} == {8080}
    assert {"alnnode-edge", "alnnode-worker-io"} <= set(by_kind(docs, "PodDisruptionBudget"))
    claims = by_kind(docs, "PersistentVolumeClaim")
    assert claims["alnnode-spool"]["spec"]["accessModes"] == ["ReadWriteMany"]
    configmaps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    for dep_name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        if dep_name.startswith("alnnode-"):
            assert pod["securityContext"]["runAsNonRoot"] is True, dep_name
        for container in pod["containers"]:
            assert "readinessProbe" in container or "livenessProbe" in container, dep_name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:  # the generated (hash-suffixed) Secret exists and holds the key
                    assert ref["key"] in secrets[ref["name"]]["data"], (dep_name, ref)
                else:
                    assert "://" not in env.get("value", ""), (dep_name, env["name"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, (dep_name, volume)
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (dep_name, volume)
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (dep_name, volume)
    edge = deployments["alnnode-edge"]["spec"]["template"]["spec"]["containers"][0]
    assert edge["livenessProbe"]["tcpSocket"]["port"] == "dicom"
    assert edge["readinessProbe"]["exec"]["command"] == ["alnnode-healthcheck", "edge"]
    gpu = deployments["alnnode-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in gpu["resources"]["limits"]) == (name == "production")


@pytest.mark.parametrize("name", OVERLAYS)
def test_configmap_toml_is_a_valid_node_config(rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config,) = by_kind(rendered[name], "ConfigMap").values()
    path = tmp_path / "alnnode.toml"
    path.write_text(config["data"]["alnnode.toml"])
    for key in [k for k in os.environ if k.startswith("ALNNODE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ALNNODE_STORAGE__LEDGER_URL", "postgresql+psycopg://alnnode:pw@postgres:5432/alnnode")
    monkeypatch.setenv("ALNNODE_QUEUE__BROKER_URL", "redis://:pw@redis:6379/0")
    settings = load_config(path)
    assert settings.queue.embedded_workers == 0 and settings.storage.data_dir == Path("/var/lib/alnnode")
    assert settings.destinations[0].host == ("orthanc" if name == "demo" else "pacs.example.org")
