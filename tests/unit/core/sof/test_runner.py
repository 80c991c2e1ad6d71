"""SQL-on-FHIR runner: structure validation errors, compiled paths against fhirpathpy on the shipped views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.core.sof import ViewDefinitionError, compile_view, view_problems
from tests.support.cohort_data import cohort_resources

VIEWS = Path(__file__).resolve().parents[4] / "operators" / "kaapana_fhir" / "data" / "views"


EXTRA: list[dict[str, Any]] = [
    {"resourceType": "Observation", "id": "bp", "status": "final", "subject": {"reference": "Patient/x"},
     "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
     "effectiveDateTime": "2020-01-01T10:00:00Z",
     "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 80, "unit": "mmHg"}}]},
    {"resourceType": "Observation", "id": "w", "status": "final", "subject": {"reference": "Group/g"},
     "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
     "valueQuantity": {"value": 150, "system": "http://unitsofmeasure.org", "code": "[lb_av]"}},
    {"resourceType": "Condition", "id": "c", "subject": {"reference": "#p"}, "code": {"coding": [{"code": "x"}]}},
]


def _view(**over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {"resourceType": "ViewDefinition", "name": "obs", "resource": "Observation",
                         "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]}]}
    v.update(over)
    return v


def test_unknown_key_names_view_and_path() -> None:
    v = _view(select=[{"colum": [{"name": "id", "path": "id"}]}])
    with pytest.raises(ViewDefinitionError) as e:
        compile_view(v)
    assert e.value.view == "obs"
    assert e.value.where == "select[0].colum"
    assert "did you mean 'column'" in str(e.value)


def test_wrong_types_and_names_are_listed() -> None:
    v = _view(select=[{"column": [{"name": "1bad", "path": "id", "collection": "yes"}]}], where=[{"path": 3}])
    problems = dict(view_problems(v))
    assert "select[0].column[0].name" in problems
    assert "select[0].column[0].collection" in problems
    assert "where[0].path" in problems


def test_invalid_fhirpath_names_the_path() -> None:
    with pytest.raises(ViewDefinitionError) as e:
        compile_view(_view(select=[{"column": [{"name": "x", "path": "code.coding.where(system = )"}]}]))
    assert e.value.where == "select[0].column[0].path"
    assert "invalid FHIRPath" in str(e.value)


def test_several_values_without_collection() -> None:
    v = compile_view(_view(select=[{"column": [{"name": "code", "path": "code.coding.code"}]}]))
    obs = {"resourceType": "Observation", "id": "o1", "code": {"coding": [{"code": "a"}, {"code": "b"}]}}
    with pytest.raises(ViewDefinitionError) as e:
        v.rows(obs)
    assert "Observation/o1" in str(e.value) and "collection" in str(e.value)
    v2 = compile_view(_view(select=[{"column": [{"name": "code", "path": "code.coding.code", "collection": True}]}]))
    assert v2.rows(obs) == [{"code": ["a", "b"]}]


def test_components_compile_with_choice_types() -> None:
    view = _view(select=[{"column": [{"name": "id", "path": "getResourceKey()"}]},
                         {"forEach": "component",
                          "column": [{"name": "code", "path": "code.coding.where(system = 'http://loinc.org').code"},
                                     {"name": "value", "path": "value.ofType(Quantity).value"},
                                     {"name": "unit", "path": "value.ofType(Quantity).code"}]}])
    bp = {"resourceType": "Observation", "id": "bp", "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 107, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 60, "code": "mm[Hg]"}}]}
    for engine in ("auto", "fhirpathpy"):
        cv = compile_view(view, engine=engine)  # type: ignore[arg-type]
        assert cv.rows(bp) == [{"id": "bp", "code": "8480-6", "value": 107, "unit": "mm[Hg]"},
                               {"id": "bp", "code": "8462-4", "value": 60, "unit": "mm[Hg]"}]
    assert compile_view(view).compiled_share == (5, 5)  # forEach + 4 columns


@pytest.mark.parametrize("name", sorted(p.stem for p in VIEWS.glob("*.json")))
def test_shipped_views_compiled_equal_fhirpathpy(name: str) -> None:
    view = json.loads((VIEWS / f"{name}.json").read_text(encoding="utf-8"))
    fast = compile_view(view)
    ref = compile_view(view, engine="fhirpathpy")
    assert fast.fallback_paths() == [], "shipped views should compile completely"
    resources = cohort_resources("urn:test:sof", 3, n_clinical=6, n_features=5, n_segments=2) + EXTRA
    rows_fast = [r for res in resources for r in fast.rows(res)]
    rows_ref = [r for res in resources for r in ref.rows(res)]
    assert rows_fast
    assert rows_fast == rows_ref
