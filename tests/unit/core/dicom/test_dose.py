"""CT radiation dose SR (TID 10011) → Observations linked to the ImagingStudy; test data built with highdicom."""

from __future__ import annotations

from typing import Any

from pydicom.uid import generate_uid

from kaapana_fhir.core.dicom.dose import dose_observations, is_dose_report
from kaapana_fhir.core.dicom.files import dataset_to_json, group_instances
from kaapana_fhir.core.dicom.mapping import MappingOptions, map_study
from kaapana_fhir.core.validate import validate_resource
from tests.support.dicom_json import ct_series
from tests.unit.core.dicom.dose_sr import dose_sr


def _components(obs: dict[str, Any]) -> dict[str, Any]:
    return {c["code"]["coding"][0]["code"]: c.get("valueQuantity", c.get("dataAbsentReason")) for c in obs["component"]}


def _study(events: list[dict[str, Any]], dlp_total: float | None) -> tuple[list[Any], Any]:
    ct = ct_series(generate_uid(), generate_uid(), "DOSE-1", n=2)
    return ct, dose_sr(ct, events, dlp_total=dlp_total)


def test_dose_report_maps_to_summary_and_event_observations_of_the_study() -> None:
    e1, e2 = generate_uid(), generate_uid()
    ct, sr = _study([{"uid": e1, "ctdivol": 4.5, "dlp": 120.0}, {"uid": e2, "ctdivol": 9.0, "dlp": 30.0}], 150.0)
    records = [(f"f{i}", dataset_to_json(ds)[0]) for i, ds in enumerate([*ct, sr])]
    grouped, failures = group_instances(records)
    assert not failures
    (study_uid, series), = grouped.items()
    m = map_study(series, MappingOptions())
    summary, *events = m.observations
    for r in m.resources():
        validate_resource(r)
    study_ref = f"ImagingStudy/{m.imaging_study['id']}"
    assert summary["code"]["coding"][0]["code"] == "113701"
    assert _components(summary)["113813"]["value"] == 150.0
    assert _components(summary)["113813"]["code"] == "mGy.cm"
    assert summary["hasMember"] == [{"reference": f"Observation/{e['id']}"} for e in events]
    assert [e["identifier"][0]["value"] for e in events] == [f"urn:oid:{e1}", f"urn:oid:{e2}"]
    assert [_components(e)["113830"]["value"] for e in events] == [4.5, 9.0]
    assert [_components(e)["113838"]["value"] for e in events] == [120.0, 30.0]
    assert all(o["partOf"] == [{"reference": study_ref}] for o in m.observations)
    assert all(o["subject"]["reference"] == f"Patient/{m.patient['id']}" for o in m.observations)
    # SR series is still an ImagingStudy series
    assert "SR" in {s["modality"]["code"] for s in m.imaging_study["series"]}


def test_dose_report_without_ctdivol_marks_it_absent_with_an_issue() -> None:
    ct, sr = _study([{"uid": generate_uid(), "ctdivol": None, "dlp": 55.0}], None)
    issues: list[tuple[str, Any, str]] = []
    obs = dose_observations(dataset_to_json(sr)[0], patient_ref="Patient/p", study_ref="ImagingStudy/s",
                            effective=None, issue=lambda *a: issues.append(a))
    for o in obs:
        validate_resource(o)
    comps = _components(obs[1])
    assert comps["113830"]["coding"][0]["code"] == "unknown"
    assert comps["113838"]["value"] == 55.0
    assert any("Mean CTDIvol" in rule for _, _, rule in issues)
    assert any("CT Dose Length Product Total" in rule for _, _, rule in issues)


def test_other_srs_are_not_dose_reports_and_the_option_turns_it_off() -> None:
    ct, sr = _study([{"uid": generate_uid(), "ctdivol": 1.0, "dlp": 2.0}], 2.0)
    j = dataset_to_json(sr)[0]
    assert is_dose_report(j)
    j["00080016"]["Value"] = ["1.2.840.10008.5.1.4.1.1.88.33"]
    assert not is_dose_report(j)
    grouped, _ = group_instances([(f"f{i}", dataset_to_json(ds)[0]) for i, ds in enumerate([*ct, sr])])
    (_, series), = grouped.items()
    assert map_study(series, MappingOptions(dose_reports=False)).observations == []
