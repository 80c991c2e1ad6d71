"""helm lint + helm template of the workflow chart as Kaapana 0.6.0's build leaves it (chart versions rewritten,
dag-installer subchart copied in by name), asserting on rendered objects: every rendered image is a tag the
build pushes (issue 21 failure 3: the installer pulled ``dag-kaapana-fhir:0.0.0``, a tag never pushed).

helm comes from `bash .ci/install-helm.sh`; without it these tests fail in CI (CI=true) and skip elsewhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.kaapana_packaging import (
    DAG_DOCKERFILE,
    DAG_INSTALLER_STUB,
    EXTENSION,
    PLATFORM_IMAGES,
    WORKFLOW_CHART,
    Build,
    build_layout,
    helm,
    helm_binary,
    kaapana_build,
    operator_images,
    parse_dockerfile,
    platform_values,
    render,
    rendered_images,
)

WORKFLOW = WORKFLOW_CHART


def workflow_chart_with_deps(tmp: Path, version: str = "0.6.0") -> Path:
    return kaapana_build(tmp, version).chart


PLATFORM = platform_values(Build(Path(), set(), "0.6.0", "registry.example.org/kaapana"))


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    helm_binary()


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


# ---------------------------------------------------------------- workflow chart
def test_workflow_chart_metadata_follows_kaapana_conventions() -> None:
    chart = yaml.safe_load((WORKFLOW / "Chart.yaml").read_text())
    assert chart["version"] == "0.0.0"  # the build rewrites it
    assert '\nversion: "0.0.0"\n' in (WORKFLOW / "Chart.yaml").read_text()  # the EDK's sed needs the quotes
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


@pytest.mark.parametrize("version", ["0.6.0", "0.6.1-12-gabcdef0"])
def test_every_rendered_image_is_a_pushed_tag(tmp_path: Path, version: str) -> None:
    """Reproduce Kaapana's build (chart versions rewritten, images tagged with the build version), render with
    the platform's values, and compare every image the install pulls with what the build pushed."""
    build = kaapana_build(tmp_path / "build", version)
    objs = render(build.chart, *platform_values(build))
    ext = tmp_path / "ext"
    shutil.copytree(EXTENSION, ext, ignore=shutil.ignore_patterns("dags", "src"))
    dags = build_layout.dag_image_files(ext)
    pulled = set(rendered_images(objs)) | operator_images(dags, build.registry, version)
    ours = {i for i in pulled if i.rsplit(":", 1)[0].rsplit("/", 1)[1] not in PLATFORM_IMAGES}
    assert ours - build.pushed == set(), f"pulled but never pushed: {sorted(ours - build.pushed)}"
    assert build.pushed - ours == set(), f"pushed but never used: {sorted(build.pushed - ours)}"
    assert {i.rsplit(":", 1)[1] for i in pulled} == {version}  # Kaapana's own images: same platform version
    assert f"{build.registry}/kaapana-fhir:{version}" in pulled  # the processing image, via the operators


def test_without_the_rewrite_the_installer_pulls_an_unpushed_tag(tmp_path: Path) -> None:
    """The failure this guards against: the subchart's own version (0.0.0) tags the DAG image."""
    chart = tmp_path / "kaapana-fhir-workflow"
    shutil.copytree(WORKFLOW, chart)
    shutil.copytree(DAG_INSTALLER_STUB, chart / "charts" / "dag-installer-chart")
    objs = render(chart, *PLATFORM)
    assert "registry.example.org/kaapana/dag-kaapana-fhir:0.0.0" in rendered_images(objs)


def test_settings_jobs_run_on_the_installer_node(tmp_path: Path) -> None:
    objs = render(workflow_chart_with_deps(tmp_path), *PLATFORM)
    jobs = by_kind(objs, "Job")
    installer = jobs["dag-kaapana-fhir"]["spec"]["template"]["spec"]["nodeSelector"]
    assert installer == {"kubernetes.io/hostname": "kaapana-main"}
    for name in ("kaapana-fhir-settings", "kaapana-fhir-settings-remove"):
        assert jobs[name]["spec"]["template"]["spec"]["nodeSelector"] == installer, name


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
    assert settings["fhir_partitioning"] == "url"  # one HAPI partition per project, as the hapi-fhir chart runs
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
            "main_node_name": "node-a",
            "custom_registry_url": "localhost:32000",
        },
        "kaapanaFhir": {
            "fhirBaseUrl": "https://fhir.example.org/r4",
            "dicomwebUrl": "http://pacs/dw",
            "fhirPartitioning": "none",
            "importWatcher": {
                "minioPrefix": "clinical/incoming/",
                "schedule": "@hourly",
                "bucket": "project-lung",
            },
        },
    }
    objs = render(workflow_chart_with_deps(tmp_path, "0.6.1"), values=values, tmp=tmp_path)
    cm = by_kind(objs, "ConfigMap")["kaapana-fhir-settings"]
    assert cm["metadata"]["namespace"] == "svc-ns"
    settings = json.loads(cm["data"]["kaapana_fhir_settings.json"])
    assert settings == {
        "fhir_base_url": "https://fhir.example.org/r4",
        "dicomweb_url": "http://pacs/dw",
        "import_watcher_prefix": "clinical/incoming/",
        "import_watcher_schedule": "@hourly",
        "import_watcher_bucket": "project-lung",
        "fhir_partitioning": "none",
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



