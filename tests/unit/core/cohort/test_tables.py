"""Cohort joins, filters, dataset shape, spreadsheet-safe CSV and the dashboard HTML (no servers)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from kaapana_fhir.core.cohort import report as R
from kaapana_fhir.core.cohort import report_data as RD
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.cohort.views import load_view, run_view, shipped_views
from kaapana_fhir.exceptions import ConfigError
from tests.support.cohort_data import cohort_resources, patient_resources


def _cohort(resources: list[dict]) -> C.Cohort:
    return C.build_cohort({n: run_view(load_view(n), resources) for n in shipped_views()})


@pytest.fixture(scope="module")
def cohort() -> C.Cohort:
    return _cohort(cohort_resources("urn:test:unit", 12, n_segments=2, n_features=6))


def test_patients_table_has_one_row_per_patient_and_typed_variables(cohort: C.Cohort) -> None:
    p = cohort.patients
    assert len(p) == 12 and p["patient_key"].is_unique
    assert {"Overall.Stage", "Histology", "Survival.time", "age"} <= set(cohort.clinical_variables)
    assert pd.api.types.is_float_dtype(p["Survival.time"]) and p["Overall.Stage"].dtype == object
    assert (p["n_series"] == 2).all() and (p["n_segments"] == 2).all()
    assert set(p["modalities"]) == {"CT,SEG"}


def test_radiomics_long_and_wide_are_keyed_by_patient_and_segment(cohort: C.Cohort) -> None:
    assert len(cohort.radiomics_long) == 12 * 2 * 6
    w = cohort.radiomics_wide
    assert len(w) == 24 and not w.duplicated(["patient_key", "segment_key"]).any()
    assert len(cohort.feature_columns) == 6 and set(cohort.feature_columns) <= set(w.columns)
    assert set(w["segment_label"]) == {"GTV-1", "Lung-Left"}
    t = cohort.table
    assert len(t) == 24 and {"Overall.Stage", "firstorder_Mean"} <= set(t.columns)


def test_filter_and_series_dataset_shape(cohort: C.Cohort) -> None:
    sel = C.apply_filters(cohort, ["Histology=ADENOCARCINOMA", "Overall.Stage in IIIa,IIIb"])
    p = sel.patients
    assert (p["Histology"] == "adenocarcinoma").all() and p["Overall.Stage"].isin(["IIIa", "IIIb"]).all()
    expected = set(cohort.patients[(cohort.patients["Histology"] == "adenocarcinoma")
                                   & cohort.patients["Overall.Stage"].isin(["IIIa", "IIIb"])]["patient_key"])
    assert set(p["patient_key"]) == expected
    ds = C.series_dataset(sel, modality="CT", dataset_name="lung-adeno")
    assert set(ds) == {"data_form"} and ds["data_form"]["dataset_name"] == "lung-adeno"
    ct = cohort.series[(cohort.series["modality"] == "CT") & cohort.series["patient_key"].isin(expected)]
    assert ds["data_form"]["identifiers"] == sorted(ct["series_uid"])
    assert all(re.fullmatch(r"[0-9.]+", u) for u in ds["data_form"]["identifiers"])
    assert len(C.filter_patients(cohort.patients, ["age>=60"])) == int((cohort.patients["age"] >= 60).sum())
    assert len(C.filter_patients(cohort.patients, ["Histology~carcinoma"])) == \
        int(cohort.patients["Histology"].str.contains("carcinoma").sum())


@pytest.mark.parametrize("bad", ["nocondition", "age>old", "missing_col=1"])
def test_bad_filters_name_the_rule(cohort: C.Cohort, bad: str) -> None:
    with pytest.raises(ConfigError):
        C.filter_patients(cohort.patients, [bad])


def test_csv_is_spreadsheet_safe_and_parquet_roundtrips(tmp_path: Path, cohort: C.Cohort) -> None:
    df = pd.DataFrame({"patient_id": ["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "ok", None],
                       "n": [1, 2, 3, 4, 5, 6], "=bad header": ["a"] * 6})
    C.write_table(df, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][2].startswith("'=")
    assert [r[0] for r in rows[1:5]] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)"]
    assert rows[5][0] == "ok" and rows[1][1] == "1"
    C.write_table(cohort.table, tmp_path / "c.parquet")
    back = C.read_table(tmp_path / "c.parquet")
    assert back.shape == cohort.table.shape and list(back.columns) == list(cohort.table.columns)
    with pytest.raises(ConfigError):
        C.write_table(df, tmp_path / "t.xlsx")


def test_foreign_and_partial_data_do_not_break_the_join() -> None:
    res = patient_resources("urn:test:unit", "X1", with_imaging=False)
    res.append({"resourceType": "Observation", "id": "foreign", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                "subject": {"identifier": {"system": "urn:x", "value": "1"}}, "valueQuantity": {"value": 60}})
    c = _cohort(res)
    assert len(c.patients) == 1 and c.radiomics_long.empty and c.series.empty
    assert C.series_dataset(c)["data_form"]["identifiers"] == []
    empty = C.build_cohort({})
    assert empty.patients.empty and empty.table.empty


def _figs(html: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r'<script type="application/json" id="fig-\d+">(.*?)</script>', html)]


def test_report_escapes_data_text_everywhere() -> None:
    evil = '"><img src=x onerror=alert(1)>'
    res = patient_resources("urn:test:unit", "<script>alert(1)</script>", n_features=3,
                            text_overrides={"histology": evil, "stage": "<script>alert(2)</script>",
                                            "study_description": evil})
    res += patient_resources("urn:test:unit", "P2", n_features=3)
    html = R.render_cohort(_cohort(res), title="<b>t</b>")
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.DOTALL)  # the page without script blocks
    assert "<img" not in markup and "&lt;img src=x onerror=alert(1)&gt;" in markup
    assert "<script>alert" not in html
    assert "<b>t</b>" not in html
    data_blocks = re.findall(r'<script type="application/json" id="fig-\d+">(.*?)</script>', html, re.DOTALL)
    assert data_blocks and all("<" not in b and ">" not in b for b in data_blocks)
    labels = json.dumps(_figs(html))
    assert "&lt;img src=x onerror=alert(1)&gt;" in labels and "<img" not in labels
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in labels and "&lt;script&gt;alert(1)&lt;/script&gt;" in labels


def test_report_sections_say_no_data() -> None:
    only_clinical = _cohort(patient_resources("urn:test:unit", "C1", with_imaging=False))
    html = R.render_cohort(only_clinical)
    assert "No data: no radiomics feature Observations" in html
    assert "No data: no ImagingStudy series" in html
    imaging_only = [r for r in patient_resources("urn:test:unit", "I1", n_features=3)
                    if r["resourceType"] in ("Patient", "ImagingStudy", "BodyStructure")
                    or "radiomics" in json.dumps(r.get("meta", {}))]
    html2 = R.render_cohort(_cohort(imaging_only))
    assert "No data: no clinical variables" in html2
    assert html2.count("<script>") == 2, "plotly.js is inlined exactly once (+ the boot script)"
    assert "http://" not in re.sub(r"<script>.*?</script>", "", html2, flags=re.DOTALL).replace("http://www.w3.org", "")


def test_completeness_counts_present_unmapped_absent() -> None:
    series = pd.DataFrame({"study_key": ["s1", "s1", "s2", "s3"], "modality": ["CT", "SEG", "CT", "MR"],
                           "body_site_code": ["39607008", None, None, None],
                           "body_site_display": ["Lung", None, "CHEST", None],
                           "laterality_code": [None] * 4, "laterality_display": [None] * 4,
                           "series_description": ["a", None, "", "b"], "manufacturer": [None] * 4})
    studies = pd.DataFrame({"study_key": ["s1", "s2", "s3"], "description": ["CT", None, "MR"],
                            "started": ["2020-01-01T10:00:00+01:00", "2020-01-02", None]})
    patients = pd.DataFrame({"patient_key": ["p"], "gender": ["unknown"], "birth_date": [None]})
    rows = {r["attribute"]: r for r in RD.completeness(RD.ReportData(patients, series=series, studies=studies))}
    bp = rows["BodyPartExamined"]
    assert (bp["total"], bp["present"], bp["unmapped"], bp["absent"]) == (3, 1, 1, 1), "SEG series are excluded"
    tz = rows["TimezoneOffsetFromUTC"]
    assert (tz["present"], tz["unmapped"], tz["absent"]) == (1, 1, 1)
    assert rows["PatientSex"]["unmapped"] == 1 and rows["PatientBirthDate / age"]["absent"] == 1
    assert ("CHEST", 1) in bp["values"]


def test_a_filter_on_a_column_empty_for_everyone_says_why_nobody_matches(caplog: pytest.LogCaptureFixture) -> None:
    df = pd.DataFrame({"patient_key": ["a", "b"], "age_at_study": [None, None], "tumour": [1.0, 2.0]})
    with caplog.at_level("WARNING", logger="kaapana_fhir.core.cohort.tables"):
        assert C.filter_patients(df, ["age_at_study>=60"]).empty
    assert "column age_at_study has no value for any of the 2 patients" in caplog.text
    assert "ImagingStudy date" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kaapana_fhir.core.cohort.tables"):
        assert len(C.filter_patients(df, ["tumour>=2"])) == 1
    assert caplog.text == ""
