"""dicom-to-fhir against the real stack: Orthanc (STOW/QIDO/WADO) → HAPI FHIR, the flow and the real DAG."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.codes import SYSTEM_DICOM_UID
from kaapana_fhir.core.dicom.mapping import MappingOptions
from kaapana_fhir.core.ids import stable_id
from kaapana_fhir.exceptions import DicomWebError, ResourceNotFound
from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
from tests.support.dicom_json import ct_series

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _versions(fhir: FhirClient, ids: dict[str, list[str]]) -> dict[str, str]:
    return {f"{t}/{i}": fhir.read(t, i)["meta"]["versionId"] for t, lst in ids.items() for i in lst}


def _no_errors(fhir: FhirClient, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Errors of the server's $validate against FHIR R4 core: the MII profiles the resources claim are left out
    (tests/integration/test_mii_validate.py validates against them)."""
    core = json.loads(json.dumps(resource))
    (core.get("meta") or {}).pop("profile", None)
    outcome = fhir.validate(core)
    return [i for i in outcome.get("issue", []) if i.get("severity") in ("error", "fatal")]


@pytest.fixture()
def two_studies(dicomweb: DicomWeb) -> dict[str, Any]:
    """Study A (2 series) and study B (1 series) of one new patient, stored via STOW-RS."""
    pid = f"KF-DICOM-{uuid.uuid4().hex[:10]}"
    a, b = generate_uid(), generate_uid()
    a1, a2, b1 = generate_uid(), generate_uid(), generate_uid()
    dicomweb.store(ct_series(a, a1, pid, series_number=1) + ct_series(a, a2, pid, series_number=2, n=2,
                                                                         body_part="ABDOMEN")
                   + ct_series(b, b1, pid, series_number=1, tz=None, body_part="Thorax"))
    return {"patient": pid, "studies": [a, b], "series": {a: [a1, a2], b: [b1]}}


def test_flow_writes_patient_study_endpoint_idempotently(dicomweb: DicomWeb, fhir: FhirClient,
                                                         two_studies: dict[str, Any]) -> None:
    a, b = two_studies["studies"]
    # triggered by one series of A and the series of B: A must still hold both its series
    r1 = sync_studies(dicomweb, fhir, series_uids=[two_studies["series"][a][1], two_studies["series"][b][0]])
    assert r1.studies == 2 and r1.series == 3 and not r1.failed, r1
    study_a = fhir.read("ImagingStudy", stable_id("ImagingStudy", a))
    assert [s["uid"] for s in study_a["series"]] == two_studies["series"][a]
    assert study_a["numberOfSeries"] == 2 and study_a["numberOfInstances"] == 5
    assert study_a["started"] == "2024-03-05T10:15:00+01:00"
    assert study_a["series"][0]["bodySite"]["code"] == "816094009"
    assert study_a["series"][1]["bodySite"]["code"] == "818981001"
    patient = fhir.read("Patient", study_a["subject"]["reference"].split("/")[1])
    assert patient["identifier"][0]["value"] == two_studies["patient"]
    endpoint = fhir.read("Endpoint", study_a["endpoint"][0]["reference"].split("/")[1])
    assert endpoint["address"] == dicomweb.wado_rs_base and endpoint["connectionType"]["code"] == "dicom-wado-rs"
    study_b = fhir.read("ImagingStudy", stable_id("ImagingStudy", b))
    assert study_b["started"] == "2024-03-05"  # no offset, no zone → date only, with an issue
    assert study_b["series"][0]["bodySite"]["code"] == "816094009"  # "Thorax" via alias
    assert any(i["tag"] == "(0008,0030)" and i["study"] == b for i in r1.issues)
    assert patient["id"] == study_b["subject"]["reference"].split("/")[1]  # one Patient for both studies

    ids = {"ImagingStudy": r1.imaging_study_ids, "Patient": r1.patient_ids,
           "Endpoint": [endpoint["id"]], "Device": [study_a["series"][0]["performer"][0]["actor"]["reference"][7:]]}
    before = _versions(fhir, ids)
    r2 = sync_studies(dicomweb, fhir, study_uids=[a, b])
    assert r2.resources.created == 0 and r2.resources.updated == 0
    assert _versions(fhir, ids) == before, "a re-run must not create new versions"
    assert fhir.count("ImagingStudy", {"identifier": f"{SYSTEM_DICOM_UID}|urn:oid:{a}"}) == 1
    assert fhir.count("Patient", {"identifier": f"{patient['identifier'][0]['system']}|{two_studies['patient']}"}) == 1

    for res in (study_a, study_b, patient, endpoint, fhir.read("Device", ids["Device"][0])):
        assert _no_errors(fhir, res) == [], f"$validate of {res['resourceType']}/{res['id']}"


def test_pydicom_test_files(dicomweb: DicomWeb, fhir: FhirClient) -> None:
    files = [dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]
    dicomweb.store(files)
    r = sync_studies(dicomweb, fhir, series_uids=[f.SeriesInstanceUID for f in files],
                     options=MappingOptions(timezone="Europe/Berlin"))
    assert r.studies == 2 and not r.failed
    for f in files:
        study = fhir.read("ImagingStudy", stable_id("ImagingStudy", f.StudyInstanceUID))
        assert study["series"][0]["modality"]["code"] == f.Modality
        assert _no_errors(fhir, study) == []


class _PartialPacs(DicomWeb):
    """A PACS view that (like a run triggered before the second series arrived) sees only some series."""

    def __init__(self, url: str, visible: set[str]) -> None:
        super().__init__(url)
        self.visible = visible

    def search_series(self, study_uid: str | None = None, filters: dict | None = None, **kw: Any) -> list[dict]:
        res = super().search_series(study_uid, filters, **kw)
        return [r for r in res if r["0020000E"]["Value"][0] in self.visible]


def test_two_series_concurrently_end_in_one_study(dicomweb: DicomWeb, dicomweb_url: str, fhir_url: str) -> None:
    for _ in range(3):  # repeat: the interleaving differs per round
        pid = f"KF-CONC-{uuid.uuid4().hex[:10]}"
        study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
        dicomweb.store(ct_series(study, s1, pid, series_number=1, n=1)
                       + ct_series(study, s2, pid, series_number=2, n=1))
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(series_uid: str, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            try:
                pacs = _PartialPacs(dicomweb_url, {series_uid})
                barrier.wait()
                sync_studies(pacs, FhirClient(fhir_url), series_uids=[series_uid])
            except BaseException as exc:  # collected and re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in (s1, s2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        fhir = FhirClient(fhir_url)
        found = list(fhir.search("ImagingStudy", {"identifier": f"{SYSTEM_DICOM_UID}|urn:oid:{study}"}))
        assert len(found) == 1
        assert {s["uid"] for s in found[0]["series"]} == {s1, s2}
        assert found[0]["numberOfSeries"] == 2


def test_pacs_unreachable_names_url_and_writes_nothing(fhir: FhirClient) -> None:
    from kaapana_fhir.dev.stack import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    study = generate_uid()
    with pytest.raises(DicomWebError) as exc:
        sync_studies(DicomWeb(url, timeout=5), fhir, study_uids=[study])
    assert url in str(exc.value)
    with pytest.raises(ResourceNotFound):
        fhir.read("ImagingStudy", stable_id("ImagingStudy", study))


@pytest.mark.airflow
def test_dag_as_kaapana_triggers_it(airflow_home: Path, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                    dicomweb: DicomWeb, fhir: FhirClient, two_studies: dict[str, Any]) -> None:
    from airflow.models import DagBag

    from kaapana_fhir.kaapana.trigger_rules import build_confs, load_rules

    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAAPANA_FHIR_RUNTIME", "airflow")
    bag = DagBag(dag_folder=str(REPO / "dags" / "dag_dicom_to_fhir.py"), include_examples=False)
    assert bag.import_errors == {}
    dag = bag.get_dag("dicom-to-fhir")
    a, b = two_studies["studies"]
    rules = load_rules(sorted((REPO / "dags").glob("*dicom_to_fhir*trigger_rule.json")))
    incoming = [dicomweb.find_series(s) for s in two_studies["series"][a][:1] + two_studies["series"][b]]
    confs = build_confs(rules, incoming)["dicom-to-fhir"]
    assert confs and all("identifiers" in c["data_form"] for c in confs)

    dr = dag.test(run_conf=confs[0])
    assert str(dr.state).endswith("success"), dr.state
    mapped = [ti for ti in dr.get_task_instances() if ti.task_id == "dicom-to-fhir"]
    assert len(mapped) == 2 and all(str(ti.state).endswith("success") for ti in mapped)  # one task per study
    study_a = fhir.read("ImagingStudy", stable_id("ImagingStudy", a))
    assert {s["uid"] for s in study_a["series"]} == set(two_studies["series"][a])
    version = study_a["meta"]["versionId"]

    # the incoming-DICOM service conf (CTP) for the same study: no new version
    dr2 = dag.test(run_conf={"studyInstanceUID": a, "seriesInstanceUID": two_studies["series"][a][1],
                             "callingAET": "test", "calledAET": "kp-admin", "dicom_path": "x"})
    assert str(dr2.state).endswith("success")
    assert fhir.read("ImagingStudy", stable_id("ImagingStudy", a))["meta"]["versionId"] == version
    summary = next(ti for ti in dr2.get_task_instances() if ti.task_id == "summary")
    value = summary.xcom_pull(task_ids="summary")
    assert value["studies"] == 1 and value["resources"]["created"] == 0
    json.dumps(value)


def test_bad_headers_through_the_pacs_degrade_or_fail_one_study(dicomweb: DicomWeb, fhir: FhirClient) -> None:
    import warnings

    pid = f"KF-BAD-{uuid.uuid4().hex[:10]}"
    good, bad = generate_uid(), generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we store on purpose
        odd = ct_series(good, generate_uid(), pid, n=1, tz=None, body_part="Unknown Region")
        odd[0].StudyTime = "10034+"
        odd[0].SeriesNumber = "1.0E+00"
        odd[0].Laterality = "U"
        no_pid = ct_series(bad, generate_uid(), "", n=1)
    dicomweb.store(odd + no_pid)
    r = sync_studies(dicomweb, fhir, study_uids=[good, bad])
    assert r.study_uids == [good] and len(r.failed) == 1
    assert r.failed[0]["study"] == bad and "(0010,0020)" in r.failed[0]["error"]
    tags = {i["tag"] for i in r.issues if i["study"] == good}
    assert {"(0008,0030)", "(0018,0015)"} <= tags
    study = fhir.read("ImagingStudy", stable_id("ImagingStudy", good))
    assert study["started"] == "2024-03-05"
    # Orthanc answers IS "1.0E+00" as an element without Value (DICOM JSON) → number omitted, no crash
    assert "number" not in study["series"][0] and "laterality" not in study["series"][0]
    assert study["series"][0]["bodySite"] == {"display": "Unknown Region"}
    assert _no_errors(fhir, study) == []
    with pytest.raises(ResourceNotFound):
        fhir.read("ImagingStudy", stable_id("ImagingStudy", bad))


# --------------------------------------------------------------------------- issue 18: demographics, dose, backfill
def _rt_study(pid: str, study_date: str | None = None) -> list[Any]:
    """A radiotherapy-style study (RTSTRUCT and SRs with empty PatientSex listed first, CT, SEGs)."""
    import warnings

    from tests.unit.core.dicom import rt_study

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = getattr(_rt_study, "template", None) or rt_study.template_study(n_seg=2, n_sr=2)
        _rt_study.template = template  # type: ignore[attr-defined]
        return rt_study.clone_study(template, pid, 0, study_date)


def _by_type(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle["entry"]}


def test_pacs_and_files_give_identical_resources_with_lossless_demographics(dicomweb: DicomWeb, fhir: FhirClient,
                                                                           tmp_path: Path) -> None:
    from kaapana_fhir.flows.dicom_to_fhir.flow import sync_files

    pid = f"KF-RT-{uuid.uuid4().hex[:10]}"
    instances = _rt_study(pid)
    for i, ds in enumerate(instances):
        ds.save_as(tmp_path / f"{i:03d}.dcm", enforce_file_format=True)
    dicomweb.store(instances)
    study = instances[0].StudyInstanceUID
    options = MappingOptions(endpoint_address=dicomweb.wado_rs_base, timezone="Europe/Berlin")
    pacs = sync_studies(dicomweb, None, study_uids=[study], options=options)
    files = sync_files([tmp_path], None, options=options)
    assert not pacs.failed and not files.failed
    assert pacs.pacs_requests == 1  # one QIDO series search; no WADO for this study
    a, b = _by_type(pacs.bundle), _by_type(files.bundle)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    patient = next(r for r in a.values() if r["resourceType"] == "Patient")
    assert patient["gender"] == "male" and patient["birthDate"] == "1950-01-01"  # RTSTRUCT/SR listed first
    imaging = next(r for r in a.values() if r["resourceType"] == "ImagingStudy")
    assert [s["modality"]["code"] for s in imaging["series"]][:1] == ["RTSTRUCT"]
    ct = next(s for s in imaging["series"] if s["modality"]["code"] == "CT")
    assert any(e["url"].endswith("mii-ex-bildgebung-modalitaet-ct") for e in ct["extension"])
    r = sync_studies(dicomweb, fhir, study_uids=[study], options=options)
    assert not r.failed
    stored = fhir.read("Patient", patient["id"])
    assert stored["gender"] == "male"
    assert _no_errors(fhir, fhir.read("ImagingStudy", imaging["id"])) == []


def test_conflicting_sex_through_the_pacs_is_an_issue(dicomweb: DicomWeb) -> None:
    pid = f"KF-SEX-{uuid.uuid4().hex[:10]}"
    study = generate_uid()
    one, two = ct_series(study, generate_uid(), pid, n=1), ct_series(study, generate_uid(), pid, n=1, series_number=2)
    for ds in two:
        ds.PatientSex = "M"
    dicomweb.store(one + two)
    r = sync_studies(dicomweb, None, study_uids=[study])
    patient = next(e["resource"] for e in r.bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert "gender" not in patient
    assert any(i["tag"] == "(0010,0040)" and "conflicting" in i["rule"] for i in r.issues)


def test_dose_report_through_the_pacs_becomes_observations(dicomweb: DicomWeb, fhir: FhirClient) -> None:
    from tests.unit.core.dicom.dose_sr import dose_sr

    pid = f"KF-DOSE-{uuid.uuid4().hex[:10]}"
    study = generate_uid()
    ct = ct_series(study, generate_uid(), pid, n=2)
    event = generate_uid()
    dicomweb.store([*ct, dose_sr(ct, [{"uid": event, "ctdivol": 7.5, "dlp": 250.0}], dlp_total=250.0)])
    r = sync_studies(dicomweb, fhir, study_uids=[study])
    assert r.observations == 2 and not r.failed, r
    study_id = stable_id("ImagingStudy", study)
    found = list(fhir.search("Observation", {"part-of": f"ImagingStudy/{study_id}"}))
    codes = sorted(o["code"]["coding"][0]["code"] for o in found)
    assert codes == ["113701", "113852"]
    ev = next(o for o in found if o["code"]["coding"][0]["code"] == "113852")
    assert ev["identifier"][0]["value"] == f"urn:oid:{event}"
    assert {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in ev["component"]} == \
        {"113830": 7.5, "113838": 250.0}
    for o in found:
        assert _no_errors(fhir, o) == []


def test_backfill_pages_through_orthanc_and_resumes(dicomweb: DicomWeb, fhir: FhirClient, tmp_path: Path) -> None:
    from kaapana_fhir.flows.dicom_to_fhir.flow import backfill

    year = 1800 + uuid.uuid4().int % 150  # a StudyDate window no other test uses
    uids = []
    for day in range(1, 6):
        pid = f"KF-BF-{uuid.uuid4().hex[:8]}"
        study = generate_uid()
        uids.append(study)
        dicomweb.store(ct_series(study, generate_uid(), pid, n=1, study_date=f"{year}01{day:02d}"))
    cursor = tmp_path / "bf.cursor"
    first = backfill(dicomweb, fhir, since=f"{year}-01-01", until=f"{year}-01-03", cursor=tmp_path / "other.cursor",
                     page_size=2)
    assert sorted(first.study_uids) == sorted(uids[:3]) and first.listed == 3
    calls: list[dict[str, Any]] = []

    def stop(info: dict[str, Any]) -> None:
        calls.append(info)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill(dicomweb, fhir, since=f"{year}-01-01", until=f"{year}-12-31", modalities=["CT"], cursor=cursor,
                 page_size=2, batch_size=2, progress=stop)
    rest = backfill(dicomweb, fhir, since=f"{year}-01-01", until=f"{year}-12-31", modalities=["CT"], cursor=cursor,
                    page_size=2, batch_size=2)
    assert rest.already_done == 2 and rest.studies == 3
    assert sorted(calls[0]["done"] for _ in [0]) == [2] and calls[0]["total"] == 5
    for study in uids:
        assert fhir.read("ImagingStudy", stable_id("ImagingStudy", study))["status"] == "available"


@pytest.mark.airflow
def test_backfill_dag_fans_out_by_date_window(airflow_home: Path, stack_env: dict[str, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, dicomweb: DicomWeb,
                                             fhir: FhirClient) -> None:
    from airflow.models import DagBag

    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    year = 1600 + uuid.uuid4().int % 150  # a StudyDate range no other test uses
    uids = []
    for month in (1, 2, 3):
        study = generate_uid()
        uids.append(study)
        dicomweb.store(ct_series(study, generate_uid(), f"KF-BFD-{uuid.uuid4().hex[:8]}", n=1,
                                 study_date=f"{year}{month:02d}10"))
    bag = DagBag(dag_folder=str(REPO / "dags" / "dag_dicom_backfill.py"), include_examples=False)
    assert bag.import_errors == {}
    dag = bag.get_dag("dicom-backfill")
    conf = {"since": f"{year}-01-01", "until": f"{year}-03-31", "window_days": 31, "cursor_dir": str(tmp_path)}
    dr = dag.test(run_conf=conf)
    assert str(dr.state).endswith("success"), dr.state
    mapped = [ti for ti in dr.get_task_instances() if ti.task_id == "backfill-window"]
    assert len(mapped) == 3 and all(str(ti.state).endswith("success") for ti in mapped)
    for study in uids:
        fhir.read("ImagingStudy", stable_id("ImagingStudy", study))
    assert len(list(tmp_path.glob("backfill-*.cursor"))) == 3
    summary = next(ti for ti in dr.get_task_instances() if ti.task_id == "summary").xcom_pull(task_ids="summary")
    assert summary["studies"] == 3 and summary["windows"] == 3
    again = dag.test(run_conf=conf)  # re-triggered: every window continues from its cursor, nothing twice
    value = next(ti for ti in again.get_task_instances() if ti.task_id == "summary").xcom_pull(task_ids="summary")
    assert value["studies"] == 0 and value["listed"] == 3


@pytest.mark.parametrize("mode", ["window", "groups"])
def test_backfill_series_listing_equals_per_study_reads_and_finds_dose_by_sop_class(
        dicomweb: DicomWeb, fhir: FhirClient, mode: str) -> None:
    """Orthanc answers series-level QIDO without a study: over the StudyDate window (``window``: 4 studies' 9
    series in pages of 4, a short last page) and with UID list matching (``groups``: StudyInstanceUID=a,b,c,d).
    Neither searches per study; both write what per-study reads give, and find a dose SR described "Patient
    Protocol" by its SOP Class UID (0008,0016)."""
    from kaapana_fhir.core.dicom.mapping import Profile
    from kaapana_fhir.core.dicom.merge import comparable
    from kaapana_fhir.flows.dicom_to_fhir.flow import backfill
    from tests.unit.core.dicom.dose_sr import dose_sr

    year = 1650 + uuid.uuid4().int % 100
    day = f"{year}0707"
    uids = []
    for i in range(4):
        study, pid = generate_uid(), f"KF-SL-{uuid.uuid4().hex[:8]}"
        uids.append(study)
        ct = ct_series(study, generate_uid(), pid, n=1, study_date=day)
        more = ct_series(study, generate_uid(), pid, n=1, series_number=2, study_date=day)
        extra = []
        if i == 0:
            sr = dose_sr(ct, [{"uid": generate_uid(), "ctdivol": 5.5, "dlp": 120.0}], dlp_total=120.0)
            sr.SeriesDescription, sr.StudyDate = "Patient Protocol", day
            extra = [sr]
        dicomweb.store(ct + more + extra)
    core = MappingOptions(profile=Profile.CORE)  # MII would read WADO metadata for CT series lacking KVP etc.
    res = backfill(dicomweb, fhir, since=day, until=day, series_page_size=4, listing_concurrency=1, options=core,
                   series_listing=mode == "window")
    assert res.studies == 4 and not res.failed and res.read_per_study == 0, res
    assert res.observations == 2  # the dose report: total + one irradiation event
    # study listing (1 page + the empty one) + the dose SR's content + series: window (4 + 4 + 1 + the empty one),
    # groups (one request: the 4 studies' 9 series, complete by NumberOfStudyRelatedSeries of the study listing)
    assert res.pacs_requests == 2 + 1 + (4 if mode == "window" else 1), res.pacs_requests
    per_study = sync_studies(dicomweb, None, study_uids=uids, options=core).bundle
    for e in per_study["entry"]:
        r = e["resource"]
        if r["resourceType"] in ("ImagingStudy", "Patient", "Observation"):
            assert comparable(fhir.read(r["resourceType"], r["id"])) == comparable(r), r["resourceType"]
