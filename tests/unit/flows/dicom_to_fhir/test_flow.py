"""dicom-to-fhir flow, operator and CLI against in-memory fakes (no servers): idempotence, If-Match conflicts,
create races, Patient merging, PACS failures, conf shapes, files mode."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kaapana_fhir.core.dicom.mapping import MappingOptions, Profile
from kaapana_fhir.core.dicom.merge import same_content
from kaapana_fhir.exceptions import DicomWebError, FhirServerError, ResourceNotFound
from kaapana_fhir.flows.dicom_to_fhir import flow as flow
from tests.support.dicom_json import STUDY, file_dataset, series_json


class FakeFhir:
    """Versioned in-memory FHIR server: PUT upserts, unchanged PUT keeps the version, ifMatch → 409."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.before_transaction: list[Callable[[], None]] = []
        self.transactions = 0
        self.batch_reads = 0

    def put(self, res: dict[str, Any], if_match: str | None = None) -> tuple[str, str]:
        key = (res["resourceType"], res["id"])
        versions = self.store.setdefault(key, [])
        if if_match is not None and (not versions or if_match != f'W/"{len(versions)}"'):
            raise FhirServerError("version conflict", status_code=409)
        if versions and same_content(versions[-1], res):
            return "200 OK", "NO_CHANGE"
        stored = copy.deepcopy(res)
        stored["meta"] = {**stored.get("meta", {}), "versionId": str(len(versions) + 1)}
        versions.append(stored)
        return ("201 Created" if len(versions) == 1 else "200 OK"), "UPDATE"

    def read_with_etag(self, rtype: str, rid: str) -> tuple[dict[str, Any], str]:
        versions = self.store.get((rtype, rid))
        if not versions:
            raise ResourceNotFound("gone", status_code=404)
        return copy.deepcopy(versions[-1]), f'W/"{len(versions)}"'

    def current(self, rtype: str, rid: str) -> dict[str, Any]:
        return self.store[(rtype, rid)][-1]

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if bundle.get("type") == "batch":  # read-only batch of GETs (no precondition hooks)
            self.batch_reads += 1
            entries = []
            for e in bundle["entry"]:
                rtype, rid = e["request"]["url"].split("/")
                versions = self.store.get((rtype, rid))
                entries.append({"response": {"status": "200 OK"}, "resource": copy.deepcopy(versions[-1])}
                               if versions else {"response": {"status": "404 Not Found"}})
            return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
        self.transactions += 1
        while self.before_transaction:
            self.before_transaction.pop(0)()
        for e in bundle["entry"]:  # all-or-nothing: check preconditions first
            m = e["request"].get("ifMatch")
            key = (e["resource"]["resourceType"], e["resource"]["id"])
            if m is not None and m != f'W/"{len(self.store.get(key, []))}"':
                raise FhirServerError("HAPI-0989: not the current version", status_code=409)
        out = []
        for e in bundle["entry"]:
            status, what = self.put(e["resource"])
            r = e["resource"]
            code = "SUCCESSFUL_UPDATE_NO_CHANGE" if what == "NO_CHANGE" else "SUCCESSFUL_UPDATE"
            out.append({"response": {"status": status,
                                     "location": f"{r['resourceType']}/{r['id']}/_history/"
                                                 f"{len(self.store[(r['resourceType'], r['id'])])}",
                                     "outcome": {"issue": [{"details": {"coding": [{"code": code}]}}]}}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}

    def request(self, method: str, path: str) -> Any:
        rtype, rid, _, version = path.split("/")
        return SimpleNamespace(json=lambda: copy.deepcopy(self.store[(rtype, rid)][int(version) - 1]))


class FakePacs:
    def __init__(self, *records: dict[str, Any], down: bool = False) -> None:
        self.url = "http://pacs.example/dicom-web"
        self.wado_rs_base = self.url
        self.records = list(records)
        self.down = down

    def _check(self) -> None:
        if self.down:
            raise DicomWebError(f"DICOMweb server at {self.url} is unreachable during QIDO-RS series")

    def find_series(self, uid: str) -> dict[str, Any] | None:
        self._check()
        return next((r for r in self.records if r["0020000E"]["Value"][0] == uid), None)

    def search_series(self, study: str | None, filters: dict[str, Any] | None = None,
                      **_kw: Any) -> list[dict[str, Any]]:
        self._check()
        if study is None:  # UID list matching (StudyInstanceUID=a,b), one page
            if (filters or {}).get("offset"):
                return []
            wanted = str((filters or {}).get("StudyInstanceUID", "")).split(",")
            return [r for r in self.records if r.get("0020000D", {}).get("Value", [None])[0] in wanted]
        return [r for r in self.records if r.get("0020000D", {}).get("Value", [None])[0] == study]

    def search_instances(self, study: str, series: str, **_kw: Any) -> list[dict[str, Any]]:
        return [{"00080018": {"vr": "UI", "Value": [series + ".1"]},
                 "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}}]

    def instance_metadata(self, study: str, series: str, sop: str) -> dict[str, Any]:
        return {"00200060": {"vr": "CS", "Value": ["R"]}}


S1 = series_json(series=STUDY + ".1", SeriesNumber="1")
S2 = series_json(series=STUDY + ".2", SeriesNumber="2", Modality="PT")


def _study_id() -> str:
    from kaapana_fhir.core.ids import stable_id

    return stable_id("ImagingStudy", STUDY)


def test_sync_twice_no_duplicates_no_new_versions() -> None:
    fhir, pacs = FakeFhir(), FakePacs(S1, S2)
    r1 = flow.sync_studies(pacs, fhir, series_uids=[STUDY + ".1"])
    assert r1.studies == 1 and r1.series == 2 and r1.resources.created == 4
    # the result's JSON keys are a documented contract (XCom, CLI --result, the Kaapana container): a rename fails
    d = r1.as_dict()
    assert list(d) == ["studies", "series", "study_uids", "imaging_study_ids", "patient_ids", "observations",
                       "resources", "conflict_retries", "failed", "issues", "issue_count", "skipped_files",
                       "pacs_requests", "timings"]
    assert list(d["resources"]) == ["created", "updated", "unchanged"] and json.loads(json.dumps(d)) == d
    assert list(d["timings"]) == ["dicomweb_s", "mapping_s", "fhir_s"]
    study = fhir.current("ImagingStudy", _study_id())
    assert [s["uid"] for s in study["series"]] == [STUDY + ".1", STUDY + ".2"]
    # WADO metadata read because QIDO lacked the MII CT attributes (KVP); it also brings the laterality
    assert study["series"][0]["laterality"]["code"] == "24028007"
    assert study["endpoint"][0]["reference"].startswith("Endpoint/")
    before = {k: len(v) for k, v in fhir.store.items()}
    r2 = flow.sync_studies(pacs, fhir, study_uids=[STUDY])
    assert {k: len(v) for k, v in fhir.store.items()} == before
    assert r2.resources.created == 0 and r2.resources.updated == 0


def test_if_match_conflict_is_retried_and_keeps_concurrent_series() -> None:
    fhir = FakeFhir()
    flow.sync_studies(FakePacs(S1), fhir, study_uids=[STUDY])  # ImagingStudy exists with S1

    def concurrent_writer() -> None:  # another run writes S1+S2 between our read and our write
        flow.sync_studies(FakePacs(S1, S2), fhir, study_uids=[STUDY])

    # our run saw only S1 plus a changed description → must write → conflict → re-read → merge
    changed = series_json(series=STUDY + ".1", SeriesNumber="1", StudyDescription="new description")
    fhir.before_transaction.append(concurrent_writer)
    r = flow.sync_studies(FakePacs(changed), fhir, study_uids=[STUDY])
    assert r.conflict_retries == 1
    study = fhir.current("ImagingStudy", _study_id())
    assert {s["uid"] for s in study["series"]} == {STUDY + ".1", STUDY + ".2"}
    assert study["numberOfSeries"] == 2 and {m["code"] for m in study["modality"]} == {"CT", "PT"}
    assert study["description"] == "new description"


def test_create_race_merges_the_overwritten_version_back() -> None:
    fhir = FakeFhir()
    fhir.before_transaction.append(lambda: flow.sync_studies(FakePacs(S2), fhir, study_uids=[STUDY]))
    r = flow.sync_studies(FakePacs(S1), fhir, study_uids=[STUDY])
    assert r.conflict_retries >= 1
    study = fhir.current("ImagingStudy", _study_id())
    assert {s["uid"] for s in study["series"]} == {STUDY + ".1", STUDY + ".2"}


def test_patient_from_clinical_table_is_kept_and_completed() -> None:
    fhir = FakeFhir()
    from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id

    pid = patient_id(DEFAULT_PATIENT_SYSTEM, "PAT-1")
    fhir.put({"resourceType": "Patient", "id": pid, "gender": "male",
              "identifier": [{"system": DEFAULT_PATIENT_SYSTEM, "value": "PAT-1"}],
              "meta": {"tag": [{"system": "urn:kaapana-fhir:source", "code": "clinical-table"}]}})
    flow.sync_studies(FakePacs(S1), fhir, study_uids=[STUDY])
    p = fhir.current("Patient", pid)
    assert p["gender"] == "male" and p["name"][0]["family"] == "Doe" and p["birthDate"] == "1970-01-01"
    assert {t["code"] for t in p["meta"]["tag"]} == {"clinical-table", "dicom"}
    assert len(p["identifier"]) == 1


def test_pacs_unreachable_writes_nothing_and_names_the_url() -> None:
    fhir = FakeFhir()
    with pytest.raises(DicomWebError, match="pacs.example"):
        flow.sync_studies(FakePacs(S1, down=True), fhir, series_uids=[STUDY + ".1"])
    assert fhir.store == {} and fhir.transactions == 0


def test_missing_series_fails_or_skips() -> None:
    with pytest.raises(DicomWebError, match="1.2.3.4.5"):
        flow.resolve_study_uids(FakePacs(S1), [], ["1.2.3.4.5"])
    assert flow.resolve_study_uids(FakePacs(S1), [], ["1.2.3.4.5", STUDY + ".1"], missing="skip") == [STUDY]


def test_one_bad_study_fails_alone() -> None:
    bad = series_json(study="1.2.3.77", series="1.2.3.77.1", PatientID=None)
    fhir = FakeFhir()
    r = flow.sync_studies(FakePacs(S1, bad), fhir, study_uids=["1.2.3.77", STUDY])
    assert r.studies == 1 and len(r.failed) == 1 and "(0010,0020)" in r.failed[0]["error"]
    assert ("ImagingStudy", _study_id()) in fhir.store


def test_dry_run_bundle_validates() -> None:
    from kaapana_fhir.core.validate import validate_bundle

    r = flow.sync_studies(FakePacs(S1, S2), None, study_uids=[STUDY])
    validate_bundle(r.bundle)
    types = [e["resource"]["resourceType"] for e in r.bundle["entry"]]
    assert types == ["Endpoint", "Device", "Patient", "ImagingStudy"]


# ----------------------------------------------------------------------------- operator conf shapes
def test_uids_from_conf_shapes() -> None:
    from kaapana_fhir.operators.dicom_to_fhir import uids_from_conf

    assert uids_from_conf({"data_form": {"identifiers": ["1.2.1", "1.2.2"]}, "fetch_method": "copy"}) == (
        [], ["1.2.1", "1.2.2"])
    assert uids_from_conf({"studyInstanceUID": "1.2", "seriesInstanceUID": "1.2.1", "callingAET": "x"}) == (
        ["1.2"], [])
    assert uids_from_conf({"study_uids": "1.2 1.3", "series_uids": ["1.4"]}) == (["1.2", "1.3"], ["1.4"])
    assert uids_from_conf({}) == ([], [])


def test_operator_execute_with_kaapana_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaapana_fhir.hooks import fhir as hooks
    from kaapana_fhir.operators.dicom_to_fhir import DicomToFhirOperator

    fhir, pacs = FakeFhir(), FakePacs(S1, S2)
    monkeypatch.setattr(hooks.FhirHook, "get_conn", lambda self: fhir)
    monkeypatch.setattr(hooks.DicomWebHook, "get_conn", lambda self: pacs)
    op = DicomToFhirOperator(task_id="t")
    conf = {"data_form": {"identifiers": [STUDY + ".2"]}, "workflow_form": {"timezone": "Europe/Berlin"}}
    out = op.execute({"dag_run": SimpleNamespace(conf=conf)})
    assert out["studies"] == 1 and out["series"] == 2
    json.dumps(out)  # XCom must be JSON-able
    assert fhir.current("ImagingStudy", _study_id())["started"] == "2020-01-02T10:00:00+01:00"


# ----------------------------------------------------------------------------- files mode + CLI
def _write(path: Path, study: str | None, series: str, **attrs: Any) -> Path:
    ds = file_dataset("1.2.840.10008.5.1.4.1.1.2")
    if study:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality, ds.PatientID, ds.StudyDate, ds.InstanceNumber = "CT", "PAT-F", "20210304", 1
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_cli_files_mode_charset_ds_comma_and_missing_study_uid(tmp_path: Path) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from kaapana_fhir.cli.main import main

    a = _write(tmp_path / "a.dcm", "1.2.3.100", "1.2.3.100.1", SpecificCharacterSet="ISO_IR 100",
               PatientName="Müller^Jürgen")
    ds = __import__("pydicom").dcmread(a)
    ds[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 3, b"1,5", 0, False, True)
    ds.save_as(a)
    _write(tmp_path / "b.dcm", None, "1.2.3.200.1")
    _write(tmp_path / "c.dcm", "1.2.3.300", "1.2.3.300.1", PatientID="PAT-G")
    (tmp_path / "notes.txt").write_text("not dicom")
    tmp_out = tmp_path.parent / (tmp_path.name + "-out")
    tmp_out.mkdir()
    out = tmp_out / "bundle.json"
    res_file = tmp_out / "result.json"
    rc = main(["dicom-to-fhir", "--files", str(tmp_path), "--out", str(out), "--result", str(res_file)])
    result = json.loads(res_file.read_text())
    assert rc == 1  # one study failed, the others are in the bundle
    assert result["studies"] == 2
    errors = " ".join(f["error"] for f in result["failed"])
    assert "(0020,000D)" in errors and "notes.txt" not in errors
    assert [Path(p).name for p in result["skipped_files"]] == ["notes.txt"]  # non-DICOM: skipped, an issue
    assert any(i["tag"] == "(0018,0050)" and "comma" in i["rule"] for i in result["issues"])
    bundle = json.loads(out.read_text())
    names = [e["resource"].get("name") for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert [{"text": "Müller^Jürgen", "family": "Müller", "given": ["Jürgen"]}] in names


def test_cli_usage_errors() -> None:
    from kaapana_fhir.cli.main import main

    assert main(["dicom-to-fhir", "--files", "x", "--dicomweb", "http://p", "--out", "o"]) == 1
    assert main(["dicom-to-fhir", "--dicomweb", "http://p", "--out", "o"]) == 1
    assert main(["dicom-to-fhir", "--files", "x"]) == 1
    assert main(["dicom-to-fhir", "--files", "/nonexistent/dir", "--out", "/tmp/x.json"]) == 1


def test_options_reject_unknown_zone() -> None:
    from kaapana_fhir.exceptions import ConfigError

    with pytest.raises(ConfigError):
        MappingOptions(timezone="Nowhere/Town")


def test_resolve_batches_large_backfills_for_task_mapping() -> None:
    from kaapana_fhir.operators.dicom_to_fhir import _as_list, batch_for_mapping

    small = [f"1.2.{i}" for i in range(10)]
    assert batch_for_mapping(small, 256) == small
    big = [f"1.2.{i}" for i in range(3000)]
    batches = batch_for_mapping(big, 256)
    assert len(batches) <= 256 and all(len(b) <= 12 for b in batches)
    assert [u for b in batches for u in _as_list(b)] == big


class SrPacs(FakePacs):
    """FakePacs that records its WADO-RS series metadata reads (dose report content)."""

    def __init__(self, *records: dict[str, Any], instance_class: str | None = None) -> None:
        super().__init__(*records)
        self.metadata_reads: list[str] = []
        self.instance_searches: list[str] = []
        self.instance_class = instance_class

    def search_instances(self, study: str, series: str, **_kw: Any) -> list[dict[str, Any]]:
        self.instance_searches.append(series)
        out = super().search_instances(study, series)
        if self.instance_class:
            out[0]["00080016"] = {"vr": "UI", "Value": [self.instance_class]}
        return out

    def series_metadata(self, study: str, series: str) -> list[dict[str, Any]]:
        self.metadata_reads.append(series)
        return []


DOSE_SR, COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.33"


def test_dose_report_is_found_by_sop_class_not_by_series_description() -> None:
    """A dose SR described "Patient Protocol" (as some CT scanners name it) is read; a measurement report
    described "Dose Report" is not."""
    protocol = series_json(series=STUDY + ".7", SeriesNumber="7", Modality="SR", SeriesDescription="Patient Protocol",
                           SOPClassUID=DOSE_SR)
    measurements = series_json(series=STUDY + ".8", SeriesNumber="8", Modality="SR",
                               SeriesDescription="Dose Report", SOPClassUID=COMPREHENSIVE_SR)
    pacs = SrPacs(S1, protocol, measurements)
    flow.sync_studies(pacs, None, study_uids=[STUDY], options=MappingOptions(profile=Profile.CORE))
    assert pacs.metadata_reads == [STUDY + ".7"] and pacs.instance_searches == []


@pytest.mark.parametrize(("instance_class", "reads"), [(DOSE_SR, [STUDY + ".7"]), (COMPREHENSIVE_SR, [])])
def test_without_sop_class_at_series_level_the_instance_level_tells(instance_class: str,
                                                                    reads: list[str]) -> None:
    """A PACS that gives no (0008,0016) at series level: one instance-level QIDO per SR series decides."""
    sr = series_json(series=STUDY + ".7", SeriesNumber="7", Modality="SR", SeriesDescription="Dose Report")
    pacs = SrPacs(S1, sr, instance_class=instance_class)
    flow.sync_studies(pacs, None, study_uids=[STUDY], options=MappingOptions(profile=Profile.CORE))
    assert pacs.instance_searches == [STUDY + ".7"] and pacs.metadata_reads == reads
