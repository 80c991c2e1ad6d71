"""Bad-header corpus of the DICOM → FHIR mapping: each case with its expected outcome.

Rule under test: a bad field is degraded (dropped / reduced / kept as text), an issue ``{tag, value, rule}`` is
recorded and the resources are still produced and valid FHIR R4; only a missing StudyInstanceUID fails
(that study only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kaapana_fhir.core.codes import SNOMED
from kaapana_fhir.core.dicom.files import group_instances
from kaapana_fhir.core.dicom.mapping import MappingOptions, SeriesInput, map_study
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import MappingError
from tests.support.dicom_json import el, series_json


def _map(options: MappingOptions | None = None, **attrs: Any):
    m = map_study([SeriesInput(series_json(**attrs))], options or MappingOptions())
    for r in m.resources():
        validate_resource(r)
    return m


def _issue_tags(m) -> set[str]:
    return {i["tag"] for i in m.issues}


def _series(m) -> dict[str, Any]:
    return m.imaging_study["series"][0]


BERLIN = MappingOptions(timezone="Europe/Berlin")

# (case id, mapping options, header overrides, check(mapping), expected issue tags)
CASES: list[tuple[str, MappingOptions | None, dict[str, Any], Callable[[Any], bool], set[str]]] = [
    ("studytime-10034+", None, {"StudyTime": "10034+"},
     lambda m: m.imaging_study["started"] == "2020-01-02", {"(0008,0030)"}),
    ("studydate-00000000", None, {"StudyDate": "00000000"},
     lambda m: "started" not in m.imaging_study, {"(0008,0020)"}),
    ("studydate-dotted", None, {"StudyDate": "2003.02.01"},
     lambda m: m.imaging_study["started"] == "2003-02-01T10:00:00+01:00", set()),
    ("studydate-trailing-spaces", None, {"StudyDate": "20030201  ", "StudyTime": "101010 "},
     lambda m: m.imaging_study["started"] == "2003-02-01T10:10:10+01:00", set()),
    ("studytime-missing", None, {"StudyTime": None},
     lambda m: m.imaging_study["started"] == "2020-01-02", set()),
    ("tz-present", None, {"TimezoneOffsetFromUTC": "-0500", "StudyTime": "235959.5"},
     lambda m: m.imaging_study["started"] == "2020-01-02T23:59:59.5-05:00", set()),
    ("tz-absent-zone-winter", BERLIN, {"TimezoneOffsetFromUTC": None},
     lambda m: m.imaging_study["started"] == "2020-01-02T10:00:00+01:00", set()),
    ("tz-absent-zone-summer", BERLIN, {"TimezoneOffsetFromUTC": None, "StudyDate": "20200702"},
     lambda m: m.imaging_study["started"] == "2020-07-02T10:00:00+02:00", set()),
    ("tz-absent-no-zone", None, {"TimezoneOffsetFromUTC": None},
     lambda m: m.imaging_study["started"] == "2020-01-02", {"(0008,0030)"}),
    ("tz-invalid", None, {"TimezoneOffsetFromUTC": "+2500"},
     lambda m: m.imaging_study["started"] == "2020-01-02", {"(0008,0201)", "(0008,0030)"}),
    ("tm-legacy-colons", None, {"StudyTime": "10:11:12"},
     lambda m: m.imaging_study["started"] == "2020-01-02T10:11:12+01:00", set()),
    ("seriesnumber-scientific", None, {"SeriesNumber": "1.0E+00"}, lambda m: _series(m)["number"] == 1, set()),
    ("seriesnumber-leading-space", None, {"SeriesNumber": " 3"}, lambda m: _series(m)["number"] == 3, set()),
    ("seriesnumber-zero", None, {"SeriesNumber": "0"}, lambda m: _series(m)["number"] == 0, set()),
    ("seriesnumber-out-of-range", None, {"SeriesNumber": "99999999999"},
     lambda m: "number" not in _series(m), {"(0020,0011)"}),
    ("seriesnumber-fraction", None, {"SeriesNumber": "2.5"}, lambda m: "number" not in _series(m), {"(0020,0011)"}),
    ("bodypart-Chest-lowercase", None, {"BodyPartExamined": "Chest"},
     lambda m: _series(m)["bodySite"] == {"system": SNOMED, "code": "816094009", "display": "Chest"}, set()),
    ("bodypart-THORAX-alias", None, {"BodyPartExamined": "THORAX"},
     lambda m: _series(m)["bodySite"]["code"] == "816094009", set()),
    ("bodypart-unknown-text", None, {"BodyPartExamined": "Bauchraum links"},
     lambda m: _series(m)["bodySite"] == {"display": "Bauchraum links"}, {"(0018,0015)"}),
    ("anatomic-region-sequence-first", None,
     {"AnatomicRegionSequence": [{"00080100": {"vr": "SH", "Value": ["39607008"]},
                                  "00080102": {"vr": "SH", "Value": ["SCT"]},
                                  "00080104": {"vr": "LO", "Value": ["Lung"]}}]},
     lambda m: _series(m)["bodySite"] == {"system": SNOMED, "code": "39607008", "display": "Lung"}, set()),
    ("anatomic-region-legacy-SRT", None,
     {"AnatomicRegionSequence": [{"00080100": {"vr": "SH", "Value": ["T-28000"]},
                                  "00080102": {"vr": "SH", "Value": ["SRT"]},
                                  "00080104": {"vr": "LO", "Value": ["Lung"]}}]},
     lambda m: _series(m)["bodySite"]["system"] == SNOMED and _series(m)["bodySite"]["code"] == "39607008", set()),
    ("laterality-U", None, {"Laterality": "U"}, lambda m: "laterality" not in _series(m), set()),
    ("laterality-L", None, {"Laterality": "L"}, lambda m: _series(m)["laterality"]["code"] == "7771000", set()),
    ("laterality-invalid", None, {"Laterality": "X"}, lambda m: "laterality" not in _series(m), {"(0020,0060)"}),
    ("pn-caret-groups", None, {"PatientName": "Doe^John^Q^Dr^Jr"},
     lambda m: m.patient["name"][0] == {"text": "Doe^John^Q^Dr^Jr", "family": "Doe", "given": ["John", "Q"],
                                        "prefix": ["Dr"], "suffix": ["Jr"]}, set()),
    ("pn-empty-components", None, {"PatientName": "^John^^^"},
     lambda m: m.patient["name"][0] == {"text": "John", "given": ["John"]}, set()),
    ("pn-ideographic-raw-string", None, {"PatientName": {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}},
     lambda m: m.patient["name"][0]["family"] == "Yamada", set()),
    ("pn-ideographic-only", None, {"PatientName": {"Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}},
     lambda m: m.patient["name"][0]["family"] == "山田" and m.patient["name"][0]["given"] == ["太郎"], set()),
    ("pn-empty", None, {"PatientName": ""}, lambda m: "name" not in m.patient, set()),
    ("elements-without-value", None, {"StudyDate": None, "SeriesNumber": None, "PatientName": None,
                                      "BodyPartExamined": None, "Modality": "MR"},
     lambda m: "started" not in m.imaging_study and "number" not in _series(m) and "name" not in m.patient
     and "bodySite" not in _series(m), set()),
    ("patientsex-invalid", None, {"PatientSex": "X"}, lambda m: m.patient["gender"] == "unknown", {"(0010,0040)"}),
    ("birthdate-invalid", None, {"PatientBirthDate": "19701301"},
     lambda m: "birthDate" not in m.patient, {"(0010,0030)"}),
    ("modality-missing", None, {"Modality": None},
     lambda m: _series(m)["modality"]["code"] == "OT", {"(0008,0060)"}),
    ("seriesdate-bad-keeps-study", None, {"SeriesDate": "2020-13-45", "SeriesTime": "120000"},
     lambda m: "started" not in _series(m) and m.imaging_study["started"].startswith("2020-01-02T"), {"(0008,0021)"}),
    ("accession-empty", None, {"AccessionNumber": "  "}, lambda m: len(m.imaging_study["identifier"]) == 1, set()),
    ("procedure-code-unknown-designator", None,
     {"ProcedureCodeSequence": [{"00080100": {"vr": "SH", "Value": ["X1"]},
                                 "00080102": {"vr": "SH", "Value": ["LOCAL"]},
                                 "00080104": {"vr": "LO", "Value": ["CT Thorax"]}}]},
     lambda m: m.imaging_study["procedureCode"] == [{"text": "CT Thorax"}], {"(0008,1032)"}),
]


@pytest.mark.parametrize("case,options,attrs,check,issue_tags", CASES, ids=[c[0] for c in CASES])
def test_bad_header_case(case: str, options: MappingOptions | None, attrs: dict[str, Any],
                         check: Callable[[Any], bool], issue_tags: set[str]) -> None:
    m = _map(options, **attrs)
    assert check(m), f"{case}: unexpected mapping {m.imaging_study} / {m.patient}"
    assert _issue_tags(m) == issue_tags, f"{case}: issues {m.issues}"
    for issue in m.issues:
        assert set(issue) >= {"tag", "value", "rule", "study"} and issue["rule"]


def test_corpus_has_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


def test_no_time_without_offset_anywhere() -> None:
    import re

    for _, options, attrs, _, _ in CASES:
        m = _map(options, **attrs)
        for value in [m.imaging_study.get("started")] + [s.get("started") for s in m.imaging_study["series"]]:
            if value and "T" in value:
                assert re.search(r"[+-]\d{2}:\d{2}$|Z$", value), value


def test_several_studies_and_one_without_study_uid() -> None:
    good1 = series_json(study="1.2.3.1", series="1.2.3.1.1")
    good2 = series_json(study="1.2.3.2", series="1.2.3.2.1", PatientID="PAT-2")
    bad = series_json(study=None, series="1.2.3.9.1")
    grouped, failures = group_instances([("a.dcm", good1), ("b.dcm", bad), ("c.dcm", good2)])
    assert list(grouped) == ["1.2.3.1", "1.2.3.2"]
    assert len(failures) == 1 and "(0020,000D)" in failures[0]["error"] and failures[0]["source"] == "b.dcm"
    mapped = [map_study(series) for series in grouped.values()]
    assert {m.study_uid for m in mapped} == {"1.2.3.1", "1.2.3.2"}
    assert mapped[0].patient["id"] != mapped[1].patient["id"]


def test_missing_study_uid_fails_that_study_with_the_tag() -> None:
    with pytest.raises(MappingError, match=r"\(0020,000D\)"):
        map_study([SeriesInput(series_json(study=None))])


def test_invalid_study_uid_names_the_tag() -> None:
    with pytest.raises(MappingError, match=r"\(0020,000D\)"):
        map_study([SeriesInput(series_json(study="1.02.abc"))])


def test_missing_patient_id_names_the_tag() -> None:
    with pytest.raises(MappingError, match=r"\(0010,0020\)"):
        map_study([SeriesInput(series_json(PatientID=None))])


def test_element_helper_builds_value_less_elements() -> None:
    assert el("StudyDate", None) == ("00080020", {"vr": "DA"})
