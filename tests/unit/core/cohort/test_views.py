"""SQL-on-FHIR v2 semantics of the ViewDefinition runner (core/sof via core/cohort/views.py) and the shipped views."""

from __future__ import annotations

import pytest

from kaapana_fhir.core import codes
from kaapana_fhir.core.cohort.views import ViewError, compile_view, load_view, reference_key, run_view, shipped_views
from tests.support.cohort_data import patient_resources

PATIENTS = [
    {"resourceType": "Patient", "id": "pt1", "gender": "female", "active": True,
     "name": [{"family": "F1", "given": ["A", "B"]}, {"family": "F2"}],
     "telecom": [{"system": "phone", "value": "1"}]},
    {"resourceType": "Patient", "id": "pt2", "gender": "male", "active": False, "name": [{"family": "F3"}]},
    {"resourceType": "Patient", "id": "pt3"},
]


def view(select, **kw):
    return {"resourceType": "ViewDefinition", "name": "t", "resource": kw.pop("resource", "Patient"),
            "select": select, **kw}


def test_columns_and_missing_values_are_none() -> None:
    rows = run_view(view([{"column": [{"name": "id", "path": "id"}, {"name": "gender", "path": "gender"}]}]),
                    PATIENTS)
    assert rows == [{"id": "pt1", "gender": "female"}, {"id": "pt2", "gender": "male"}, {"id": "pt3", "gender": None}]


def test_several_values_without_collection_raise_and_collection_returns_list() -> None:
    with pytest.raises(ViewError, match="collection"):
        run_view(view([{"column": [{"name": "fam", "path": "name.family"}]}]), PATIENTS[:1])
    rows = run_view(view([{"column": [{"name": "fam", "path": "name.family", "collection": True}]}]), PATIENTS)
    assert [r["fam"] for r in rows] == [["F1", "F2"], ["F3"], []]


def test_for_each_unnests_and_drops_resources_without_items() -> None:
    v = view([{"column": [{"name": "id", "path": "getResourceKey()"}]},
              {"forEach": "name", "column": [{"name": "family", "path": "family"}]}])
    rows = run_view(v, PATIENTS)
    assert rows == [{"id": "pt1", "family": "F1"}, {"id": "pt1", "family": "F2"}, {"id": "pt2", "family": "F3"}]


def test_for_each_or_null_keeps_one_null_row() -> None:
    v = view([{"column": [{"name": "id", "path": "id"}]},
              {"forEachOrNull": "telecom", "column": [{"name": "tel", "path": "value"}]}])
    assert run_view(v, PATIENTS) == [{"id": "pt1", "tel": "1"}, {"id": "pt2", "tel": None}, {"id": "pt3", "tel": None}]


def test_nested_for_each_is_a_cross_product() -> None:
    v = view([{"column": [{"name": "id", "path": "id"}]},
              {"forEach": "name", "select": [{"forEach": "given", "column": [{"name": "g", "path": "$this"}]}]}])
    assert run_view(v, PATIENTS[:1]) == [{"id": "pt1", "g": "A"}, {"id": "pt1", "g": "B"}]


def test_union_all_concatenates_branches() -> None:
    v = view([{"column": [{"name": "id", "path": "id"}],
               "unionAll": [{"forEach": "name", "column": [{"name": "v", "path": "family"}]},
                            {"forEach": "telecom", "column": [{"name": "v", "path": "value"}]}]}])
    assert run_view(v, PATIENTS[:1]) == [{"id": "pt1", "v": "F1"}, {"id": "pt1", "v": "F2"}, {"id": "pt1", "v": "1"}]


def test_union_all_branches_must_have_the_same_columns() -> None:
    v = view([{"unionAll": [{"column": [{"name": "a", "path": "id"}]}, {"column": [{"name": "b", "path": "id"}]}]}])
    with pytest.raises(ViewError, match="unionAll"):
        compile_view(v)


def test_where_keeps_only_true_and_rejects_non_boolean() -> None:
    v = view([{"column": [{"name": "id", "path": "id"}]}], where=[{"path": "active = true"}])
    assert run_view(v, PATIENTS) == [{"id": "pt1"}]
    bad = view([{"column": [{"name": "id", "path": "id"}]}], where=[{"path": "gender"}])
    with pytest.raises(ViewError, match="boolean"):
        run_view(bad, PATIENTS[:1])


def test_constant_is_available_as_percent_variable() -> None:
    v = view([{"column": [{"name": "id", "path": "id"}]}], where=[{"path": "gender = %g"}],
             constant=[{"name": "g", "valueCode": "male"}])
    assert run_view(v, PATIENTS) == [{"id": "pt2"}]


def test_resource_and_reference_keys_match_and_honour_the_type() -> None:
    obs = [{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/pt1"}},
           {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "http://other/fhir/Patient/pt2/_history/3"}},
           {"resourceType": "Observation", "id": "o3", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Group/g1"}},
           {"resourceType": "Observation", "id": "o4", "status": "final", "code": {"text": "x"},
            "subject": {"identifier": {"system": "urn:x", "value": "1"}}}]
    v = view([{"column": [{"name": "k", "path": "getResourceKey()"},
                          {"name": "p", "path": "subject.getReferenceKey(Patient)"},
                          {"name": "any", "path": "subject.getReferenceKey()"}]}], resource="Observation")
    rows = run_view(v, obs)
    assert [r["p"] for r in rows] == ["pt1", "pt2", None, None]
    assert [r["any"] for r in rows] == ["pt1", "pt2", "g1", None]
    keys = {r["k"] for r in run_view(view([{"column": [{"name": "k", "path": "getResourceKey()"}]}]), PATIENTS)}
    assert {"pt1", "pt2"} <= keys


@pytest.mark.parametrize("ref,typ,expected", [("Patient/1", None, "1"), ("#c1", None, None),
                                              ("urn:uuid:abc", None, None), ("Patient/1", "Group", None),
                                              ("https://h/fhir/Patient/x-1/_history/2", "Patient", "x-1"),
                                              ("", None, None)])
def test_reference_key_forms(ref: str, typ: str | None, expected: str | None) -> None:
    assert reference_key(ref, typ) == expected


def test_other_resource_types_are_ignored_and_bad_paths_fail_at_compile() -> None:
    v = view([{"column": [{"name": "id", "path": "id"}]}])
    assert run_view(v, [{"resourceType": "Observation", "id": "x"}]) == []
    with pytest.raises(ViewError, match="invalid FHIRPath"):
        compile_view(view([{"column": [{"name": "id", "path": "id.where("}]}]))
    with pytest.raises(ViewError, match="resource"):
        compile_view({"resourceType": "ViewDefinition", "name": "x", "select": []})


def test_shipped_views_flatten_convention_resources() -> None:
    assert set(shipped_views()) >= {"patient", "clinical_observation", "condition", "imaging_study",
                                    "imaging_series", "radiomics_feature"}
    res = patient_resources("urn:test:views", "V1", n_clinical=5, n_features=4, n_segments=2)
    out = {n: run_view(load_view(n), res) for n in shipped_views()}
    assert len(out["patient"]) == 1
    assert len(out["clinical_observation"]) == 5, "radiomics features and sets are not clinical observations"
    assert {r["variable"] for r in out["clinical_observation"]} >= {"Overall.Stage", "Survival.time"}
    assert len(out["radiomics_feature"]) == 8
    pk = out["patient"][0]["patient_key"]
    assert all(r["patient_key"] == pk for n in ("clinical_observation", "condition", "imaging_study",
                                                 "radiomics_feature") for r in out[n])
    series = out["imaging_series"]
    assert [s["modality"] for s in series] == ["CT", "SEG"]
    assert out["imaging_study"][0]["modalities"] == ["CT", "SEG"]
    assert {r["segment_key"] for r in out["radiomics_feature"]} == {r["segment_key"] for r in out["segment"]}
    assert {r["image_type"] for r in out["radiomics_feature"]} == {"original"}
    stage = next(r for r in out["clinical_observation"] if r["variable"] == "Overall.Stage")
    assert stage["value_text"] and stage["value_number"] is None
    cond = out["condition"][0]
    assert cond["variable"] == "Histology" and cond["diagnosis"] == "Non-small cell lung cancer"
    assert cond["value_text"] in {"adenocarcinoma", "squamous cell carcinoma", "large cell"}
    feat = out["radiomics_feature"][0]
    assert isinstance(feat["value"], float) and feat["feature"].split("_")[0] in {"firstorder", "shape", "glcm"}
    assert codes.CS_PYRADIOMICS in load_view("radiomics_feature")["constant"][0]["valueUri"]


def test_load_view_unknown_name_lists_shipped_views() -> None:
    with pytest.raises(ViewError, match="patient"):
        load_view("no_such_view")
