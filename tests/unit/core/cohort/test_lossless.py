"""Lossless cohort semantics: every diagnosis, component values, units, code-based names, dropped resources,
age at study, ';'-separated filters and unit-aware numeric filters (no servers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.cohort.views import load_view, run_view, shipped_views
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.cohort.flow import write_outputs
from tests.support.cohort_data import patient_resources

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _q(value: float, code: str, system: str | None = UCUM) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value, "code": code, "unit": code}
    if system:
        q["system"] = system
    return q


def _obs(oid: str, subject: str, code: str, display: str, **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "effectiveDateTime": "2021-03-01", **value}


def _cond(cid: str, subject: str, code: str, display: str, *, text: str | None = None,
          onset: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"resourceType": "Condition", "id": cid, "subject": {"reference": subject},
                         "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}}
    if text:
        c["code"]["text"] = text
    if onset:
        c["onsetDateTime"] = onset
    return c


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "a", "birthDate": "1960-06-15", "gender": "female"},
        {"resourceType": "Patient", "id": "b", "birthDate": "1980-01-01", "gender": "male"},
        {"resourceType": "ImagingStudy", "id": "s1", "status": "available", "subject": {"reference": "Patient/a"},
         "started": "2021-06-14T09:00:00+02:00"},
        {"resourceType": "ImagingStudy", "id": "s2", "status": "available", "subject": {"reference": "Patient/a"},
         "started": "2022-01-01"},
        # five diagnoses of patient a (one without code text, one without display)
        _cond("c1", "Patient/a", "254637007", "Non-small cell lung cancer", text="NSCLC", onset="2020-01-01"),
        _cond("c2", "Patient/a", "38341003", "Hypertension", onset="2015-01-01"),
        _cond("c3", "Patient/a", "44054006", "Diabetes mellitus type 2", onset="2016-01-01"),
        _cond("c4", "Patient/a", "195967001", "Asthma"),
        {"resourceType": "Condition", "id": "c5", "subject": {"reference": "Patient/a"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "73211009"}]}},
        _cond("c6", "Patient/b", "38341003", "Hypertension"),
        # blood pressure: values only in components
        {"resourceType": "Observation", "id": "bp", "status": "final", "subject": {"reference": "Patient/a"},
         "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
         "effectiveDateTime": "2021-03-01",
         "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6",
                                             "display": "Systolic blood pressure"}]},
                        "valueQuantity": _q(107, "mm[Hg]")},
                       {"code": {"coding": [{"system": LOINC, "code": "8462-4",
                                             "display": "Diastolic blood pressure"}]},
                        "valueQuantity": _q(60, "mm[Hg]")}]},
        # weights in kg and [lb_av]: one column in kg; a weight in an unknown unit gets its own column
        _obs("w1", "Patient/a", "29463-7", "Body weight", valueQuantity=_q(70, "kg")),
        _obs("w2", "Patient/b", "29463-7", "Body weight", valueQuantity=_q(176.37, "[lb_av]")),
        _obs("w3", "Patient/c", "29463-7", "Body weight", valueQuantity=_q(5, "stone", None)),
        _obs("w4", "Patient/d", "29463-7", "Body weight", valueQuantity=_q(60, "kg")),
        # a very long display text must not become the column name
        _obs("g", "Patient/a", "33914-3", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in "
             "Serum or Plasma by Creatinine-based formula (MDRD) " * 2, valueQuantity=_q(61, "mL/min/{1.73_m2}")),
        # resources that cannot be joined to a patient
        _obs("grp", "Group/g1", "29463-7", "Body weight", valueQuantity=_q(80, "kg")),
        _obs("cont", "#p1", "29463-7", "Body weight", valueQuantity=_q(81, "kg")),
        {"resourceType": "Observation", "id": "nosub", "status": "final", "code": {"text": "x"},
         "valueString": "y"},
    ]
    return res


@pytest.fixture(scope="module")
def cohort(resources: list[dict[str, Any]]) -> C.Cohort:
    return C.build_cohort({n: run_view(load_view(n), resources) for n in shipped_views()})


def _row(cohort: C.Cohort, key: str) -> dict[str, Any]:
    p = cohort.patients
    return p[p["patient_key"] == key].iloc[0].to_dict()


def test_every_condition_is_kept(cohort: C.Cohort) -> None:
    a = _row(cohort, "a")
    assert len(a["conditions"]) == 5
    assert a["conditions"][:3] == ["Hypertension", "Diabetes mellitus type 2", "Non-small cell lung cancer"]
    assert "73211009" in a["conditions"], "a Condition without text or display is labelled by its code"
    assert "http://snomed.info/sct|254637007" in a["condition_codes"]
    assert _row(cohort, "b")["conditions"] == ["Hypertension"]
    sel = C.filter_patients(cohort.patients, ["Condition~lung cancer"])
    assert list(sel["patient_key"]) == ["a"]
    assert list(C.filter_patients(cohort.patients, ["conditions=hypertension"])["patient_key"]) == ["a", "b"]


def test_components_are_own_columns_with_unit_in_name(cohort: C.Cohort) -> None:
    a = _row(cohort, "a")
    sys_col = "loinc_8480_6_systolic_blood_pressure_mm_hg"
    dia_col = "loinc_8462_4_diastolic_blood_pressure_mm_hg"
    assert a[sys_col] == 107 and a[dia_col] == 60
    assert cohort.units[sys_col] == "mm[Hg]"
    assert not any("85354" in c for c in cohort.clinical_variables), "a panel without own value adds no column"


def test_units_are_converted_and_incompatible_units_kept_apart(cohort: C.Cohort) -> None:
    p = cohort.patients.set_index("patient_key")
    col = "loinc_29463_7_body_weight_kg"
    assert cohort.units[col] == "kg"
    assert p.loc["a", col] == 70 and p.loc["b", col] == pytest.approx(80.0, abs=0.01)
    other = [c for c in cohort.clinical_variables if c.startswith("loinc_29463_7") and c != col]
    assert other == ["loinc_29463_7_body_weight_kg_stone"] and p.loc["c", other[0]] == 5
    d = cohort.dictionary.set_index("column")
    assert d.loc[col, "converted"] == 1 and d.loc[col, "units_seen"] == "[lb_av],kg"


def test_names_are_short_unique_and_labelled(cohort: C.Cohort) -> None:
    names = cohort.clinical_variables
    assert len(names) == len({n.lower() for n in names})
    assert all(len(n) <= 60 for n in names)
    gfr = next(n for n in names if n.startswith("loinc_33914_3"))
    assert gfr.endswith("_ml_per_min_per_1_73_m2")
    assert cohort.labels[gfr].startswith("Glomerular filtration rate/1.73 sq M.predicted")


def test_dropped_resources_are_counted(cohort: C.Cohort) -> None:
    assert cohort.dropped == {"Observation: contained subject": 1,
                              "Observation: no subject reference (missing or by identifier only)": 1,
                              "Observation: subject is a Group": 1}


def test_age_at_first_study(cohort: C.Cohort) -> None:
    assert _row(cohort, "a")["age_at_study"] == 60  # 1960-06-15 → 2021-06-14: one day short of 61
    assert _row(cohort, "b")["age_at_study"] != _row(cohort, "b")["age_at_study"]  # NaN: no study


def test_semicolon_filters_and_units_in_numeric_filters(cohort: C.Cohort) -> None:
    p = cohort.patients
    both = C.filter_patients(p, ["gender=female; conditions=asthma"], units=cohort.units)
    assert list(both["patient_key"]) == ["a"]
    heavy = C.filter_patients(p, ["loinc_29463_7_body_weight_kg>=165 [lb_av]"], units=cohort.units)
    assert set(heavy["patient_key"]) == {"b"}, "165 lb = 74.8 kg: only b (80 kg) is heavier"
    assert set(C.filter_patients(p, ["Body weight>=65"], units=cohort.units, labels=cohort.labels)["patient_key"]) \
        == {"a", "b"}
    with pytest.raises(ConfigError, match="cannot be converted"):
        C.filter_patients(p, ["loinc_29463_7_body_weight_kg>=3 m"], units=cohort.units)
    sel = C.apply_filters(cohort, ["age_at_study>=50; Condition~lung"])
    assert list(sel.patients["patient_key"]) == ["a"]


def test_outputs_carry_labels_dictionary_and_dropped(cohort: C.Cohort, tmp_path: Path) -> None:
    paths = write_outputs(cohort, tmp_path, formats=("parquet", "csv"))
    names = {p.name for p in paths}
    assert {"cohort.parquet", "data_dictionary.csv", "cohort_meta.json"} <= names
    schema = pq.read_schema(tmp_path / "cohort.parquet")
    field = schema.field("loinc_8480_6_systolic_blood_pressure_mm_hg")
    assert field.metadata[b"label"] == b"Systolic blood pressure"
    meta = json.loads(schema.metadata[b"kaapana_fhir"])
    assert meta["dropped"]["Observation: subject is a Group"] == 1
    assert any(r["column"] == "conditions" for r in meta["dictionary"])
    back = C.read_table(tmp_path / "cohort.parquet")
    assert len(C.filter_patients(back, ["conditions=asthma"])) == 1, "list cells survive Parquet as JSON text"


def test_project_convention_names_stay(tmp_path: Path) -> None:
    res = patient_resources("urn:test:lossless", "P1", n_clinical=5, n_features=2)
    c = C.build_cohort({n: run_view(load_view(n), res) for n in shipped_views()})
    assert {"Overall.Stage", "Histology", "Survival.time", "age"} <= set(c.clinical_variables)
    assert c.patients.iloc[0]["conditions"] == ["Non-small cell lung cancer"]
