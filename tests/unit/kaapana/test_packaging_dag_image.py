"""The DAG image as Kaapana installs it: its build context generated (docker/tools/build_layout.py), its files
laid out from the Dockerfile's COPY lines (context = the Dockerfile's own folder), then the DagBag loaded from
there with the contract harness standing in for Kaapana's plugin (tests/support/kaapana_contract) and the
Kaapana runtime.

Also checks Kaapana's build-script rule that every operator file names its image on one line matching
IMAGE_PATTERN, that no dev module ships, and the processing-container Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kaapana_contract import PLUGIN_DIR
from tests.support.kaapana_contract.pod import PLATFORM_ENV
from tests.support.kaapana_packaging import (
    DAG_DOCKERFILE,
    EXTENSION,
    IMAGE_PATTERN,
    INSTALLER_TOP_LEVEL,
    PC_DOCKERFILE,
    REPO,
    build_layout,
    lay_out_image,
    parse_dockerfile,
)

PROBE = REPO / "tests" / "support" / "dagbag_probe.py"
KAAPANA_OPERATORS = REPO / "operators" / "kaapana_fhir" / "kaapana" / "operators"
PLATFORM_ENV = {
    **{
        k: f"http://{k.lower().replace('_', '-')}.services.svc:8080"
        for k in PLATFORM_ENV
    },
    "DEFAULT_REGISTRY": "registry.kaapana.test/kaapana",
    "KAAPANA_BUILD_VERSION": "0.6.0",
    "SERVICES_NAMESPACE": "services",
    "ADMIN_NAMESPACE": "admin",
    # KaapanaBaseOperator.set_defaults reads this Airflow Variable at parse time; the env secrets backend
    # answers before the metastore (Kaapana has it in its DB).
    "AIRFLOW_VAR_ENABLE_JOB_SCHEDULER": "True",
}
#: libraries the flows need but Kaapana's Airflow image does not ship (the DAGs must parse without them)
NOT_IN_KAAPANA_AIRFLOW = (
    "fhir",
    "fhir_core",
    "radiomics",
    "highdicom",
    "fhirpathpy",
    "dicomweb_client",
    "boto3",
    "botocore",
    "pyarrow",
)


def dag_files() -> list[Path]:
    return sorted((REPO / "dags").glob("dag_*.py"))


def generated_extension(tmp: Path) -> Path:
    """A copy of docker/kaapana-fhir with its build contexts generated (the repo's copy stays untouched)."""
    ext = tmp / "kaapana-fhir"
    shutil.copytree(EXTENSION, ext, ignore=shutil.ignore_patterns("dags", "src"))
    build_layout.dag_image_files(ext)
    build_layout.processing_image_files(ext)
    return ext


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated_extension(tmp_path_factory.mktemp("ext"))


@pytest.fixture(scope="module")
def image_root(extension: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dockerfile = extension / DAG_DOCKERFILE.relative_to(EXTENSION)
    return lay_out_image(dockerfile, tmp_path_factory.mktemp("dag-image"))


def probe(image_root: Path, tmp: Path, blocked: tuple[str, ...] = (), python: str = sys.executable) -> dict:
    dags_dir = image_root / "kaapana" / "tmp" / "dags"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        **PLATFORM_ENV,
        "PYTHONPATH": os.pathsep.join([str(dags_dir), str(PLUGIN_DIR), str(REPO)]),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "KAAPANA_FHIR_SETTINGS": str(tmp / "no-settings.json"),
    }
    proc = subprocess.run(
        [python, str(PROBE), str(dags_dir), ",".join(blocked)],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kaapana_bag(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return probe(image_root, tmp_path_factory.mktemp("probe"))


# ------------------------------------------------------------------ Dockerfiles
def test_dag_dockerfile_follows_kaapana_conventions() -> None:
    df = parse_dockerfile(DAG_DOCKERFILE)
    assert df.base == "local-only/base-installer:latest"
    assert df.labels["IMAGE"] == "dag-kaapana-fhir"
    assert re.fullmatch(r"\d+\.\d+\.\d+", df.labels["VERSION"])
    assert df.labels["BUILD_IGNORE"] == "False"
    assert df.copies and all(dest.startswith(("/kaapana/tmp/dags/", "/kaapana/tmp/plugins/")) for _, dest in df.copies)
    assert ("files/plugins/", "/kaapana/tmp/plugins/") in df.copies  # the explorer/API plugin


def test_processing_container_dockerfile() -> None:
    df = parse_dockerfile(PC_DOCKERFILE)
    assert df.base == "local-only/base-python-cpu:latest"
    assert df.labels["IMAGE"] == "kaapana-fhir"
    text = PC_DOCKERFILE.read_text()
    # Kaapana 0.6 runs the pod without command/args: the image's own command must name no flow
    assert 'ENTRYPOINT ["kaapana-fhir", "kaapana-run"]' in text
    assert not re.search(r"^CMD", text, re.M)
    reqs = (PC_DOCKERFILE.parent / "files" / "requirements.txt").read_text().split("\n")
    pins = [r for r in reqs if r and not r.startswith("#")]
    assert pins and all("==" in r for r in pins), "every processing-container requirement is pinned"
    assert "pyradiomics-bhklab==3.1.4" in pins and not any(p.startswith("pyradiomics==") for p in pins)


def test_processing_requirements_cover_the_package_dependencies() -> None:
    """Every runtime dependency of pyproject.toml is pinned in the image (pip check runs in CI too)."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = (PC_DOCKERFILE.parent / "files" / "requirements.txt").read_text().lower()
    pinned = {ln.split("==")[0].strip() for ln in reqs.splitlines() if "==" in ln and not ln.startswith("#")}
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].strip().lower() for d in deps}
    assert names - pinned == set(), f"not pinned in the processing image: {sorted(names - pinned)}"


def test_every_image_builds_from_its_own_folder(extension: Path) -> None:
    """Kaapana's build and the EDK run `docker build .` in the Dockerfile's folder: every COPY source must be
    there (after build_layout), and the EDK accepts exactly one Chart.yaml in the extension."""
    dockerfiles = sorted(extension.rglob("Dockerfile"))
    assert len(dockerfiles) == 2
    for df in dockerfiles:
        for src, _ in parse_dockerfile(df).copies:
            assert ".." not in Path(src).parts and (df.parent / src.rstrip("/")).exists(), (df, src)
    assert len(list(EXTENSION.rglob("Chart.yaml"))) == 1


def test_dag_image_ships_no_dev_module(image_root: Path) -> None:
    pkg = image_root / "kaapana" / "tmp" / "dags" / "kaapana_fhir"
    assert pkg.is_dir() and not (pkg / "dev").exists()
    dev_imports = [
        f"{path.relative_to(pkg)}:{n}"
        for path in pkg.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"\s*(from|import)\s+kaapana_fhir\.dev\b", line)
    ]
    assert dev_imports == [], f"modules shipped in the DAG image import the excluded dev room: {dev_imports}"
    assert (pkg / ".airflowignore").read_text().strip() == ".*"


def test_image_layout_only_uses_installer_folders(image_root: Path) -> None:
    tmp_root = image_root / "kaapana" / "tmp"
    assert {p.name for p in tmp_root.iterdir()} <= INSTALLER_TOP_LEVEL
    dags = tmp_root / "dags"
    top = {p.name for p in dags.iterdir()}
    # never shadow fhir.resources' top-level `fhir` package or pyradiomics (`radiomics`)
    assert not top & {"fhir", "radiomics", "kaapana", "operators"}
    assert (dags / "kaapana_fhir" / "__init__.py").is_file()
    assert (dags / "kaapana_fhir" / "kaapana" / "operators" / "DicomToFhirKaapanaOperator.py").is_file()
    assert {p.name for p in dag_files()} <= top
    assert not list(dags.rglob("__pycache__"))
    # the plugin lands in Airflow's plugins folder under a name that shadows no package
    assert sorted(p.name for p in (tmp_root / "plugins").iterdir()) == ["kaapana_fhir_plugin.py"]


def test_trigger_rules_are_shipped_and_well_formed(image_root: Path) -> None:
    rules = sorted((image_root / "kaapana" / "tmp" / "dags").glob("*trigger_rule.json"))
    assert {p.name for p in rules} >= {
        "kaapana_fhir_dicom_to_fhir_trigger_rule.json",
        "kaapana_fhir_radiomics_trigger_rule.json",
    }
    for path in rules:
        assert path.name.startswith("kaapana_fhir_"), f"{path.name}: not unique to this extension"
        data = json.loads(path.read_text())
        assert isinstance(data, list) and data
        for rule in data:
            assert isinstance(rule["search_tags"], dict)
            for tag in rule["search_tags"]:
                assert re.fullmatch(r"0x[0-9A-Fa-f]{4},0x[0-9A-Fa-f]{4}", tag), tag
            for dag_id, opts in rule["dag_ids"].items():
                assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", dag_id)
                assert opts["fetch_method"] in ("copy", "fetch")
    seg = json.loads((image_root / "kaapana/tmp/dags/kaapana_fhir_radiomics_trigger_rule.json").read_text())
    assert seg[0]["search_tags"] == {"0x0008,0x0060": "SEG"}


# ------------------------------------------------------------------ build-script image regex
def operator_files() -> list[Path]:
    return sorted(p for p in KAAPANA_OPERATORS.glob("*.py") if "operator" in p.name.lower())


def test_every_kaapana_operator_file_matches_the_build_script_image_pattern() -> None:
    files = [p for p in operator_files() if p.name != "KaapanaFhirBaseOperator.py"]
    assert len(files) == 4
    pc_image = parse_dockerfile(PC_DOCKERFILE).labels["IMAGE"]
    for path in files:
        matches = [m for line in path.read_text().splitlines() if (m := re.match(IMAGE_PATTERN, line))]
        assert len(matches) == 1, f"{path.name}: expected one image line matching IMAGE_PATTERN"
        assert matches[0]["image_name"] == pc_image
        assert matches[0]["version"] == "{KAAPANA_BUILD_VERSION}"


def test_no_image_reference_escapes_the_pattern(image_root: Path) -> None:
    """Like the build script: every shipped file whose name contains "operator" and names an image via
    DEFAULT_REGISTRY does so on one line that matches IMAGE_PATTERN (else the image is never built)."""
    shipped = image_root / "kaapana" / "tmp" / "dags"
    for path in shipped.rglob("*.py"):
        if "operator" not in path.name.lower():
            continue
        for line in path.read_text().splitlines():
            if "DEFAULT_REGISTRY}/" in line:
                assert re.match(IMAGE_PATTERN, line), f"{path}: {line.strip()}"


# ------------------------------------------------------------------ DagBag from the image layout
def test_dagbag_from_image_layout_has_no_import_errors(kaapana_bag: dict, image_root: Path) -> None:
    assert kaapana_bag["import_errors"] == {}
    dags_dir = image_root / "kaapana" / "tmp" / "dags"
    assert Path(kaapana_bag["kaapana_fhir_file"]).resolve().is_relative_to(dags_dir.resolve()), (
        "kaapana_fhir must be imported from the DAG image's copy, not the development tree"
    )
    loaded_files = {Path(d["fileloc"]).name for d in kaapana_bag["dags"].values()}
    assert loaded_files == {p.name for p in dag_files()}


def test_flow_tasks_run_as_kaapana_container_operators(kaapana_bag: dict) -> None:
    """In Kaapana the four flow operators run as KaapanaBaseOperators with the kaapana-fhir image; their
    in-process classes (runtime.FLOWS) are not used there."""
    from kaapana_fhir.kaapana.runtime import FLOWS

    in_process = {target.replace(":", ".") for target, _ in FLOWS.values()}
    for dag_id, dag in kaapana_bag["dags"].items():
        for task_id, t in dag["tasks"].items():
            assert t["class"] not in in_process, (
                f"{dag_id}.{task_id} uses the in-process {t['class']} under KAAPANA_FHIR_RUNTIME=kaapana"
            )
            if t["class"].startswith("kaapana_fhir.kaapana."):
                assert "kaapana.operators.KaapanaBaseOperator.KaapanaBaseOperator" in t["mro"]
                assert t["image"] == "registry.kaapana.test/kaapana/kaapana-fhir:0.6.0"
                assert t["image_pull_secrets"] == ["registry-secret"]
                assert t["arguments"] == [] and t["cmds"] == []  # Kaapana 0.6 would ignore them anyway
                assert t["env_vars"]["KAAPANA_FHIR_TASK"] in ("dicom-to-fhir", "import-table", "radiomics", "cohort")


def test_cohort_downstream_is_wired_through_the_local_reader(kaapana_bag: dict) -> None:
    """Container operators push no XCom: the trigger reads the local read-downstream task's XCom."""
    tasks = kaapana_bag["dags"]["fhir-cohort"]["tasks"]
    assert tasks["fhir-query"]["downstream"] == ["read-downstream"]
    assert tasks["read-downstream"]["downstream"] == ["trigger-downstream"]
    assert not tasks["read-downstream"]["class"].startswith("kaapana")  # runs inside Airflow


def test_dags_parse_without_flow_libraries(image_root: Path, tmp_path: Path) -> None:
    """Kaapana's Airflow image lacks fhir.resources, pyradiomics, highdicom, ...: with the Kaapana runtime the
    DAG files must not import them at parse time (the container does the work)."""
    bag = probe(image_root, tmp_path, blocked=NOT_IN_KAAPANA_AIRFLOW)
    assert bag["import_errors"] == {}
    assert bag["loaded_blocked"] == []
