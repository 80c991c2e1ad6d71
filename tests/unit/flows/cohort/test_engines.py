"""Cohort engines without Spark: Pathling's installation check, its failure report and row normalisation
(subprocess faked; the real Pathling run is tests/integration/test_pathling.py), NDJSON folders with our
runner, the ``name__N`` coalescing of the shipped views, and engine/source validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kaapana_fhir.core.cohort.views import ViewError, coalesce_plan, load_view, run_view, shipped_views
from kaapana_fhir.core.sof.table import ViewTable
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.cohort import flow
from kaapana_fhir.flows.cohort import pathling_engine as pe
from tests.support.cohort_data import cohort_resources


def _home(tmp_path: Path) -> pe.PathlingHome:
    for p in ("venv/bin/python", "java/bin/java", "jars/library-runtime-9.4.0.jar", ".complete"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("")
    return pe.PathlingHome.find(tmp_path)


def test_missing_pathling_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAAPANA_FHIR_PATHLING_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(pe.PathlingUnavailable, match=r"not installed in .*nowhere.*install-pathling.sh"):
        pe.PathlingHome.find()
    home = _home(tmp_path)
    assert home.python == tmp_path / "venv/bin/python" and home.jars[0].name == "library-runtime-9.4.0.jar"


def test_a_view_pathling_cannot_run_is_named_with_pathlings_message(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path / "home")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p"}\n')
    seen: dict[str, Any] = {}

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.update(cmd=cmd, env=kw["env"], request=json.loads(Path(cmd[-1]).read_text()))
        out = {"views": {}, "errors": {"mine": "UnsupportedFhirPathFeatureError: Unsupported function: iif"}}
        return subprocess.CompletedProcess(cmd, 2, json.dumps(out) + "\n", "")

    monkeypatch.setattr(pe.subprocess, "run", fake_run)
    view = {"resourceType": "ViewDefinition", "name": "mine", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "x", "path": "iif(active, 1, 0)"}]}]}
    with pytest.raises(pe.PathlingFailed, match=r"view 'mine': .*Unsupported function: iif"):
        pe.run_views(tmp_path / "in", {"mine": view}, home=home, work_dir=tmp_path / "work")
    assert seen["env"]["JAVA_HOME"] == str(home.java_home) and seen["cmd"][0] == str(home.python)
    assert seen["request"]["views"] == {"mine": view} and seen["request"]["jars"] == [str(home.jars[0])]

    def crash(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "Error occurred during initialization of VM\n")

    monkeypatch.setattr(pe.subprocess, "run", crash)
    with pytest.raises(pe.PathlingFailed, match="initialization of VM"):
        pe.run_views(tmp_path / "in", {"mine": view}, home=home, work_dir=tmp_path / "work")
    with pytest.raises(ConfigError, match="no .ndjson files"):
        pe.run_views(tmp_path / "work", {"mine": view}, home=home)


def test_pathling_keys_and_decimals_read_like_ours(tmp_path: Path) -> None:
    view = load_view("radiomics_feature")
    kinds = pe.column_kinds(view)
    assert kinds["feature_key"] == kinds["patient_key"] == "key" and kinds["value"] == "decimal"
    folder = tmp_path / "rows"
    folder.mkdir()
    pq.write_table(pa.table({"feature_key": ["Observation/o1", None], "patient_key": ["Patient/p", "Patient/q"],
                             "value": ["81", "1.6265"], "unit": ["1", "Patient/x"]}), folder / "part-0.parquet")
    t = pe.read_rows(folder, kinds)
    assert t.tuples == [("o1", "p", 81, "1"), (None, "q", 1.6265, "Patient/x")]  # only key columns lose Type/


def test_shipped_views_coalesce_their_parts(tmp_path: Path) -> None:
    res = cohort_resources("urn:test:parts", 2, n_clinical=3, n_features=2)
    pid = next(r["id"] for r in res if r["resourceType"] == "Patient")
    res.append({"resourceType": "Observation", "id": "bp", "status": "final",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "component": [{"code": {"text": "Systolic"}, "valueQuantity": {"value": 107, "code": "mm[Hg]"}}]})
    for name in shipped_views():
        rows = run_view(load_view(name), res)
        assert rows, name
        assert not [c for c in rows[0] if "__" in c], f"{name}: parts left after coalescing"
    cols, row = coalesce_plan(["a", "v__1", "b", "v__2", "v__3"]) or ([], None)
    assert cols == ["a", "v", "b"] and row is not None
    assert row((1, None, 2, "", "x")) == (1, "x", 2) and row((1, [], 2, 0, "x")) == (1, 0, 2)
    assert coalesce_plan(["a", "b"]) is None
    with pytest.raises(ViewError, match=r"'mine' at column v: parts v__1, v__3: numbered with a gap"):
        coalesce_plan(["v__1", "v__3"], "mine")
    with pytest.raises(ViewError, match=r"both 'v' and its parts"):
        coalesce_plan(["v", "v__1"], "mine")


def test_ndjson_folder_with_our_runner_and_engine_rules(tmp_path: Path) -> None:
    res = cohort_resources("urn:test:ndjson", 3, n_clinical=3, n_features=2)
    by_type: dict[str, list[str]] = {}
    for r in res:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    for rtype, lines in by_type.items():
        (tmp_path / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    built = flow.build_cohort(None, ndjson_folder=tmp_path, filters=["n_series>=1"])
    assert len(built.cohort.patients) == 3 and sum(built.fetched.count().values()) == len(res)
    assert isinstance(built.rows["patient"], ViewTable) and "deceased" in built.rows["patient"].columns
    with pytest.raises(ConfigError, match="engine 'spark': use one of ours, pathling"):
        flow.build_cohort(None, ndjson_folder=tmp_path, engine="spark")
    with pytest.raises(ConfigError, match="engine 'pathling' reads NDJSON: give --bulk FOLDER"):
        flow.build_cohort(None, engine="pathling")
    with pytest.raises(ConfigError, match="use --where filters instead of searches"):
        flow.build_cohort(None, ndjson_folder=tmp_path, patient_search="Patient?gender=female")
    with pytest.raises(ConfigError, match="a FHIR server .* or an NDJSON folder"):
        flow.build_cohort(None)


def _ndjson(folder: Path, tag: str, n: int) -> list[dict[str, Any]]:
    res = cohort_resources(tag, n, n_clinical=3, n_features=2)
    by_type: dict[str, list[str]] = {}
    for r in res:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    folder.mkdir(parents=True, exist_ok=True)
    for rtype, lines in by_type.items():
        (folder / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    return res


def test_run_cohort_summary_is_a_dataclass_with_the_documented_json(tmp_path: Path) -> None:
    """The summary's JSON keys are a contract (XCom, the Kaapana container's result): a rename fails here."""
    _ndjson(tmp_path / "in", "urn:test:summary", 2)
    s = flow.run_cohort(None, tmp_path / "out", ndjson_folder=tmp_path / "in", formats=("csv",))
    assert isinstance(s, flow.CohortSummary) and s.patients == s.selected_patients == 2
    d = s.as_dict()
    assert list(d) == ["resources", "requests", "fetch_seconds", "join_seconds", "rows", "dropped", "patients",
                       "selected_patients", "filters", "series_uids", "out_dir", "files", "bucket", "object_keys",
                       "dataset"]
    assert d["bucket"] is None and d["object_keys"] == [] and "cohort.csv" in d["files"]
    assert json.loads(json.dumps(d)) == d
    from kaapana_fhir.flows.cohort.report import report_job

    info = report_job(tmp_path / "out")
    assert list(info.as_dict()) == ["path", "bytes", "seconds", "patients"] and info.patients == 2
    info.bucket, info.object_key = "b", "fhir-cohort/report.html"
    assert list(info.as_dict()) == ["path", "bytes", "seconds", "patients", "bucket", "object_key"]


def test_engine_is_a_cohort_param_and_pathling_missing_is_a_clear_error(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from kaapana_fhir.flows.cohort.params import CohortEngine, CohortParams

    assert CohortParams().engine is CohortEngine.OURS
    assert CohortParams.from_conf({"workflow_form": {"engine": "Pathling"}}).engine is CohortEngine.PATHLING
    with pytest.raises(ConfigError, match=r"cohort parameter 'engine' .*'spark' is not one of ours, pathling"):
        CohortParams.from_conf({"workflow_form": {"engine": "spark"}})
    _ndjson(tmp_path / "in", "urn:test:nopathling", 1)
    monkeypatch.setenv("KAAPANA_FHIR_PATHLING_HOME", str(tmp_path / "absent"))
    with pytest.raises(pe.PathlingUnavailable, match=r"Pathling is not installed in .*absent.*install-pathling"):
        flow.run_cohort(None, tmp_path / "out", ndjson_folder=tmp_path / "in", engine=CohortEngine.PATHLING)
    assert not (tmp_path / "out").exists(), "refused before anything was read or written"
    # without a folder (operator, container): a temporary export folder, after the same installation check
    with pytest.raises(pe.PathlingUnavailable):
        flow.run_cohort(None, tmp_path / "out", engine="pathling")


def test_pathling_without_a_folder_exports_into_a_temporary_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator and the Kaapana container give no folder: ``$export`` goes to a temporary folder, removed
    afterwards (export and Spark faked; the real run is tests/integration/test_pathling.py)."""
    from kaapana_fhir.clients.fhir import FhirClient

    _ndjson(tmp_path / "in", "urn:test:tmpexport", 2)
    home = _home(tmp_path / "home")
    monkeypatch.setattr(pe.PathlingHome, "find", classmethod(lambda cls, root=None: home))
    seen: list[Path] = []

    def fake_bulk(client: Any, views: Any, folder: Any, **kw: Any) -> Any:
        seen.append(Path(folder))
        assert Path(folder).is_dir() and kw["engine"] == "pathling"
        return flow.flatten_ndjson(tmp_path / "in", views)

    monkeypatch.setattr(flow, "fetch_bulk_and_flatten", fake_bulk)
    s = flow.run_cohort(FhirClient("http://127.0.0.1:9/fhir"), tmp_path / "out", engine="pathling",
                        filters=["n_series>=1"])
    assert s.patients == 2 and len(seen) == 1 and not seen[0].exists(), "the temporary export folder is removed"
