"""Lossless demographics: Patient attributes from every series (and every study of the patient in one run);
conflicts become issues, never a silent pick; PatientID rules shared by PACS and files."""

from __future__ import annotations

from typing import Any

import pytest

from kaapana_fhir.core.dicom.mapping import MappingOptions, SeriesInput, map_study, reconcile_patients
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import MappingError
from tests.support.dicom_json import series_json

STUDY = "1.2.826.0.1.3680043.8.498.500"


def _s(n: int, study: str = STUDY, **attrs: Any) -> SeriesInput:
    return SeriesInput(series_json(study=study, series=f"{study}.{n}", SeriesNumber=str(n), **attrs))


def test_rtstruct_and_sr_first_with_empty_sex_keep_the_sex_of_the_ct() -> None:
    series = [_s(1, Modality="RTSTRUCT", PatientSex=None, PatientBirthDate=None),
              _s(2, Modality="SR", PatientSex="", PatientBirthDate=""),
              _s(3, Modality="CT", PatientSex="M", PatientBirthDate="19500101")]
    m = map_study(series)
    assert m.patient["gender"] == "male"
    assert m.patient["birthDate"] == "1950-01-01"
    assert not [i for i in m.issues if i["tag"] in ("(0010,0040)", "(0010,0030)")]
    validate_resource(m.patient)


def test_conflicting_sex_is_an_issue_and_no_gender_is_claimed() -> None:
    m = map_study([_s(1, PatientSex="M"), _s(2, PatientSex="F"), _s(3, PatientSex="M")])
    assert "gender" not in m.patient
    issue = next(i for i in m.issues if i["tag"] == "(0010,0040)")
    assert "conflicting" in issue["rule"] and "male" in issue["value"] and "female" in issue["value"]
    assert f"{STUDY}.2" in issue["rule"]  # names where each value came from


def test_conflicting_birth_dates_are_an_issue() -> None:
    m = map_study([_s(1, PatientBirthDate="19500101"), _s(2, PatientBirthDate="19510101")])
    assert "birthDate" not in m.patient
    assert any(i["tag"] == "(0010,0030)" and "conflicting" in i["rule"] for i in m.issues)


def test_conflicting_names_keep_the_majority_with_an_issue() -> None:
    m = map_study([_s(1, PatientName="Doe^Jane"), _s(2, PatientName="Doe^Jane"), _s(3, PatientName="Roe^Jane")])
    assert m.patient["name"][0]["family"] == "Doe"
    assert any(i["tag"] == "(0010,0010)" for i in m.issues)


def test_demographics_across_studies_of_one_patient_in_one_run() -> None:
    a = map_study([_s(1, study=STUDY + "1", Modality="RTSTRUCT", PatientSex=None)])
    b = map_study([_s(1, study=STUDY + "2", PatientSex="F")])
    assert "gender" not in a.patient
    reconcile_patients([a, b])
    assert a.patient["gender"] == b.patient["gender"] == "female"
    c = map_study([_s(1, study=STUDY + "3", PatientSex="M")])
    reconcile_patients([a, b, c])
    assert "gender" not in a.patient and "gender" not in c.patient
    assert any(i["tag"] == "(0010,0040)" and "studies of the patient" in i["rule"] for i in c.issues)


def test_different_patient_ids_in_one_study_are_reported() -> None:
    m = map_study([_s(1, PatientID="A"), _s(2, PatientID="A"), _s(3, PatientID="B")])
    assert m.patient["identifier"][0]["value"] == "A"
    assert any(i["tag"] == "(0010,0020)" and "different PatientID" in i["rule"] for i in m.issues)


@pytest.mark.parametrize("pid", ["AB\x00CD", "A\tB"])
def test_patient_id_with_control_characters_is_refused(pid: str) -> None:
    with pytest.raises(MappingError, match=r"PatientID \(0010,0020\).*control characters"):
        map_study([_s(1, PatientID=pid)])


def test_patient_id_padding_is_removed_and_long_ids_are_kept_with_an_issue() -> None:
    m = map_study([_s(1, PatientID="P-1\x00")])
    assert m.patient["identifier"][0]["value"] == "P-1"
    long = "X" * 70
    m = map_study([_s(1, PatientID=long)])
    assert m.patient["identifier"][0]["value"] == long
    assert any(i["tag"] == "(0010,0020)" and "64" in i["rule"] for i in m.issues)


def test_series_order_does_not_change_the_patient() -> None:
    series = [_s(1, Modality="SR", PatientSex=None), _s(2, PatientSex="F", PatientName="Doe^Jane")]
    assert map_study(series).patient == map_study(series[::-1]).patient


def test_invalid_series_uid_is_omitted_with_an_issue_on_both_paths() -> None:
    bad = SeriesInput(series_json(study=STUDY, series="1.2.03.4"))
    m = map_study([bad, _s(2)], MappingOptions())
    assert [s["uid"] for s in m.imaging_study["series"]] == [f"{STUDY}.2"]
    assert any(i["tag"] == "(0020,000E)" for i in m.issues)
