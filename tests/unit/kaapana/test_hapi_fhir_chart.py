"""helm lint + helm template of helm/hapi-fhir (the installable, offline HAPI FHIR chart), asserting on the
rendered objects: every image from the platform registry, registry-secret, a kept PVC with Kaapana's storage
class, partitioning and Bulk Data $export on, and the Dockerfile that re-tags HAPI's image.

helm comes from `bash .ci/install-helm.sh`; without it these tests fail in CI (CI=true) and skip elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kaapana_packaging import REPO, helm, helm_binary, parse_dockerfile, render

HAPI = REPO / "helm" / "hapi-fhir"
DOCKERFILE = REPO / "docker" / "hapi-fhir" / "Dockerfile"
REGISTRY = "registry.example.org/kaapana"
PLATFORM = (
    f"global.registry_url={REGISTRY}",
    "global.kaapana_build_version=0.6.0",
    "global.storage_class_fast=kaapana-hostpath-fast-data-dir",
    "global.services_namespace=services",
    "global.admin_namespace=admin",
)


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    helm_binary()


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def hapi_settings(objs: list[dict[str, Any]]) -> dict[str, Any]:
    c = by_kind(objs, "Deployment")["hapi-fhir"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    return dict(json.loads(env["SPRING_APPLICATION_JSON"]["value"])["hapi"]["fhir"])


def test_chart_metadata() -> None:
    chart = yaml.safe_load((HAPI / "Chart.yaml").read_text())
    assert "kaapanaapplication" in chart["keywords"]
    assert chart["annotations"]["ui-visible-name"]
    assert chart["appVersion"] == "8.8.0"  # the HAPI version of our test server (dev/servers/hapi/pom.xml)
    pom = REPO / "operators" / "kaapana_fhir" / "dev" / "servers" / "hapi" / "pom.xml"
    assert "<version>8.8.0</version>" in pom.read_text()


@pytest.mark.parametrize(
    "extra",
    [
        PLATFORM,
        (*PLATFORM, "image.tag=8.8.0-1", "storage.size=50Gi", "ingress.enabled=false",
         "fhir.partitioning.enabled=false", "fhir.bulkExport.enabled=false",
         "networkPolicy.egressFromNamespaces={project-a,project-b}"),
    ],
)
def test_chart_lints(extra: tuple[str, ...]) -> None:
    out = helm("lint", str(HAPI), "--strict", *[a for s in extra for a in ("--set", s)])
    assert "0 chart(s) failed" in out


def test_every_image_comes_from_the_platform_registry_with_the_pull_secret() -> None:
    objs = render(HAPI, *PLATFORM)
    specs = pod_specs(objs)
    assert len(specs) == 2  # HAPI and Postgres
    images = [c["image"] for s in specs for c in s.get("initContainers", []) + s["containers"]]
    assert images and all(i.startswith(REGISTRY + "/") for i in images), images
    assert f"{REGISTRY}/hapi-fhir:0.6.0" in images
    assert f"{REGISTRY}/postgres-17.7-alpine:0.6.0" in images
    assert all(s["imagePullSecrets"] == [{"name": "registry-secret"}] for s in specs)
    # no Docker Hub anywhere in the rendered chart
    assert "hapiproject" not in json.dumps(objs) and "docker.io" not in json.dumps(objs)


def test_rendering_without_the_platform_registry_fails_clearly() -> None:
    with pytest.raises(AssertionError, match=r"global\.registry_url is required"):
        render(HAPI, "global.kaapana_build_version=0.6.0")
    with pytest.raises(AssertionError, match=r"global\.kaapana_build_version is required"):
        render(HAPI, f"global.registry_url={REGISTRY}")


def test_pvc_is_kept_on_uninstall_and_uses_kaapanas_storage_class(tmp_path: Path) -> None:
    objs = render(HAPI, *PLATFORM)
    pvc = by_kind(objs, "PersistentVolumeClaim")["hapi-fhir-postgres-data"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["storageClassName"] == "kaapana-hostpath-fast-data-dir"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    db = by_kind(objs, "Deployment")["hapi-fhir-postgres"]["spec"]["template"]["spec"]
    assert db["volumes"][0]["persistentVolumeClaim"]["claimName"] == "hapi-fhir-postgres-data"
    # an explicit class wins; none at all: the cluster's default class (no storageClassName)
    objs = render(HAPI, *PLATFORM, "storage.storageClass=fast", "storage.size=50Gi")
    pvc = by_kind(objs, "PersistentVolumeClaim")["hapi-fhir-postgres-data"]
    assert pvc["spec"]["storageClassName"] == "fast" and pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    objs = render(HAPI, f"global.registry_url={REGISTRY}", "global.kaapana_build_version=0.6.0")
    assert "storageClassName" not in by_kind(objs, "PersistentVolumeClaim")["hapi-fhir-postgres-data"]["spec"]


def test_partitioning_and_bulk_export_are_on() -> None:
    cfg = hapi_settings(render(HAPI, *PLATFORM))
    assert cfg["fhir_version"] == "R4"
    assert cfg["partitioning"] == {
        "request_tenant_partitioning_mode": True,  # URL tenants: <base>/<project>/Patient
        "database_partition_mode_enabled": True,  # same client-assigned id in two projects
        "default_partition_id": 0,
        "allow_references_across_partitions": False,
        "partitioning_include_in_search_hashes": False,
        "conditional_create_duplicate_identifiers_enabled": True,
    }
    assert cfg["bulk_export_enabled"] is True and cfg["bulk_export_file_retention_period_hours"] == 2
    off = hapi_settings(render(HAPI, *PLATFORM, "fhir.partitioning.enabled=false", "fhir.bulkExport.enabled=false"))
    assert "partitioning" not in off and off["bulk_export_enabled"] is False


def test_server_wiring_service_ingress_and_network_policies() -> None:
    objs = render(HAPI, *PLATFORM)
    assert {o["metadata"]["namespace"] for o in objs} == {"services"}
    svc = by_kind(objs, "Service")["hapi-fhir-service"]
    assert svc["spec"]["ports"][0]["port"] == 8080
    server = by_kind(objs, "Deployment")["hapi-fhir"]
    assert svc["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    c = server["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["SPRING_DATASOURCE_URL"]["value"] == "jdbc:postgresql://hapi-fhir-postgres.services.svc:5432/hapi"
    assert env["SPRING_DATASOURCE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "hapi-fhir-postgres"
    assert hapi_settings(objs)["server_address"] == "http://hapi-fhir-service.services.svc:8080/fhir"
    path = by_kind(objs, "Ingress")["hapi-fhir-ingress"]["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/fhir" and path["backend"]["service"]["name"] == "hapi-fhir-service"
    np = by_kind(objs, "NetworkPolicy")["hapi-fhir-allow-processing-containers"]
    assert {"namespaceSelector": {}, "podSelector": {"matchLabels": {"kaapana.ai/type": "processing-container"}}} \
        in np["spec"]["ingress"][0]["from"]
    assert by_kind(objs, "NetworkPolicy")["hapi-fhir-postgres-only-hapi"]["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 5432}]
    host = render(HAPI, *PLATFORM, "ingress.host=kp.example.org")
    assert hapi_settings(host)["server_address"] == "https://kp.example.org/fhir"


def test_dockerfile_retags_hapis_image_for_the_platform_registry() -> None:
    df = parse_dockerfile(DOCKERFILE)
    values = yaml.safe_load((HAPI / "values.yaml").read_text())
    assert df.labels["IMAGE"] == values["image"]["name"] == "hapi-fhir"  # Kaapana pushes <registry>/<IMAGE>
    assert df.base == "docker.io/hapiproject/hapi:v8.8.0-1"  # HAPI 8.8.0, as our test server
