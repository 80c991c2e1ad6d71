"""helm lint + helm template of both charts (default and non-default values), asserting on rendered objects.

helm comes from `bash .ci/install-helm.sh`; without it these tests fail in CI (CI=true) and skip elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.kaapana_packaging import (
    DAG_DOCKERFILE,
    REPO,
    helm,
    helm_binary,
    parse_dockerfile,
    render,
    workflow_chart_with_deps,
)

WORKFLOW = REPO / "helm" / "kaapana-fhir-workflow"
PLATFORM = (
    "global.registry_url=registry.example.org/kaapana",
    "global.kaapana_build_version=0.6.0",
    "global.services_namespace=services",
    "global.admin_namespace=admin",
)


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    helm_binary()


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


# ---------------------------------------------------------------- workflow chart
def test_workflow_chart_metadata_follows_kaapana_conventions() -> None:
    chart = yaml.safe_load((WORKFLOW / "Chart.yaml").read_text())
    values = yaml.safe_load((WORKFLOW / "values.yaml").read_text())
    reqs = yaml.safe_load((WORKFLOW / "requirements.yaml").read_text())
    assert chart["apiVersion"] == "v1"
    assert "kaapanaworkflow" in chart["keywords"]
    assert chart["annotations"]["ui-visible-name"] and chart["annotations"]["documentation"]
    assert [d["name"] for d in reqs["dependencies"]] == ["dag-installer-chart"]
    assert values["global"]["action"] == "copy"
    # values.global.image must equal the DAG image's LABEL IMAGE, or the installer runs another image
    assert values["global"]["image"] == parse_dockerfile(DAG_DOCKERFILE).labels["IMAGE"] == "dag-kaapana-fhir"


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("kaapanaFhir.fhirBaseUrl=https://fhir.example.org/r4", "kaapanaFhir.importWatcher.schedule=@hourly"),
    ],
)
def test_workflow_chart_lints(tmp_path: Path, extra: tuple[str, ...]) -> None:
    chart = workflow_chart_with_deps(tmp_path)
    out = helm("lint", str(chart), "--strict", *[a for s in (*PLATFORM, *extra) for a in ("--set", s)])
    assert "0 chart(s) failed" in out


def test_workflow_chart_default_render(tmp_path: Path) -> None:
    objs = render(workflow_chart_with_deps(tmp_path), *PLATFORM)
    jobs = by_kind(objs, "Job")
    installer = jobs["dag-kaapana-fhir"]
    container = installer["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/kaapana/dag-kaapana-fhir:0.6.0"
    assert {"name": "ACTION", "value": "copy"} in container["env"]
    assert installer["metadata"]["namespace"] == "services"
    settings = json.loads(
        by_kind(objs, "ConfigMap")["kaapana-fhir-settings"]["data"]["kaapana_fhir_settings.json"]
    )
    assert settings["fhir_base_url"] == "http://hapi-fhir-service.services.svc:8080/fhir"
    assert settings["import_watcher_prefix"] == "fhir-import/"
    assert settings["import_watcher_schedule"] == "*/2 * * * *"
    assert settings["import_watcher_bucket"] == "project-admin"
    writer = jobs["kaapana-fhir-settings"]
    assert writer["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    wc = writer["spec"]["template"]["spec"]["containers"][0]
    assert wc["image"] == container["image"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in writer["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"dags-pv-claim"}
    assert jobs["kaapana-fhir-settings-remove"]["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"


def test_workflow_chart_non_default_values(tmp_path: Path) -> None:
    values = {
        "global": {
            "registry_url": "reg.local:5000/x",
            "kaapana_build_version": "0.6.1",
            "services_namespace": "svc-ns",
            "custom_registry_url": "localhost:32000",
        },
        "kaapanaFhir": {
            "fhirBaseUrl": "https://fhir.example.org/r4",
            "dicomwebUrl": "http://pacs/dw",
            "importWatcher": {
                "minioPrefix": "clinical/incoming/",
                "schedule": "@hourly",
                "bucket": "project-lung",
            },
        },
    }
    objs = render(workflow_chart_with_deps(tmp_path), values=values, tmp=tmp_path)
    cm = by_kind(objs, "ConfigMap")["kaapana-fhir-settings"]
    assert cm["metadata"]["namespace"] == "svc-ns"
    settings = json.loads(cm["data"]["kaapana_fhir_settings.json"])
    assert settings == {
        "fhir_base_url": "https://fhir.example.org/r4",
        "dicomweb_url": "http://pacs/dw",
        "import_watcher_prefix": "clinical/incoming/",
        "import_watcher_schedule": "@hourly",
        "import_watcher_bucket": "project-lung",
    }
    writer = by_kind(objs, "Job")["kaapana-fhir-settings"]
    assert (
        writer["spec"]["template"]["spec"]["containers"][0]["image"]
        == "localhost:32000/dag-kaapana-fhir:0.6.1"
    )


def test_workflow_chart_settings_job_can_be_disabled(tmp_path: Path) -> None:
    objs = render(workflow_chart_with_deps(tmp_path), *PLATFORM, "kaapanaFhir.settingsJob.enabled=false")
    assert "ConfigMap" not in {o["kind"] for o in objs}
    assert set(by_kind(objs, "Job")) == {"dag-kaapana-fhir"}


# The HAPI FHIR application chart (helm/hapi-fhir) is tested in test_hapi_fhir_chart.py.
