"""Numbers behind the cohort dashboard (pandas only; rendering is in :mod:`kaapana_fhir.core.cohort.report`).

DICOM data completeness (:func:`completeness`) is judged on what the DICOM flow wrote into FHIR:

=====================  ================================================  ==========================================
attribute              FHIR element                                      present / unmapped / absent
=====================  ================================================  ==========================================
BodyPartExamined       ``ImagingStudy.series.bodySite``                  code / display only / none
Laterality             ``ImagingStudy.series.laterality``                code / display only / none
StudyDescription       ``ImagingStudy.description``                      text / - / none
SeriesDescription      ``ImagingStudy.series.description``               text / - / none
Manufacturer           ``series`` extension or ``performer.actor``       text / - / none
PatientSex             ``Patient.gender``                                male,female,other / unknown / none
PatientBirthDate       ``Patient.birthDate``                             date / - / none
StudyDate              ``ImagingStudy.started``                          date / - / none
TimezoneOffset         ``ImagingStudy.started``                          time with offset / date only / none
=====================  ================================================  ==========================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

FEATURE_RE = re.compile(r"^(?:[A-Za-z0-9.-]+_)?(firstorder|shape|shape2D|glcm|glrlm|glszm|gldm|ngtdm)_\w+$")
BASE_COLUMNS = {"patient_key", "identifier_system", "patient_id", "gender", "birth_date", "deceased",
                "conditions", "condition_codes",
                "deceased_date", "source", "n_studies", "n_series", "modalities", "n_segments", "segment_key",
                "segment_label"}
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG"}


@dataclass
class ReportData:
    patients: pd.DataFrame
    radiomics_long: pd.DataFrame = field(default_factory=pd.DataFrame)
    series: pd.DataFrame = field(default_factory=pd.DataFrame)
    studies: pd.DataFrame = field(default_factory=pd.DataFrame)
    clinical_variables: list[str] = field(default_factory=list)
    title: str = "Cohort overview"
    source: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # column → display text (code display / code.text)
    units: dict[str, str] = field(default_factory=dict)  # column → UCUM unit


def from_cohort(cohort: Any, *, title: str = "Cohort overview", source: str = "") -> ReportData:
    """From a :class:`kaapana_fhir.core.cohort.tables.Cohort`."""
    return ReportData(cohort.patients, cohort.radiomics_long, cohort.series, cohort.studies,
                      list(cohort.clinical_variables), title, source, dict(getattr(cohort, "labels", {}) or {}),
                      dict(getattr(cohort, "units", {}) or {}))


def from_table(table: pd.DataFrame, *, series: pd.DataFrame | None = None, studies: pd.DataFrame | None = None,
               meta: dict[str, Any] | None = None, title: str = "Cohort overview", source: str = "") -> ReportData:
    """From a joined cohort table (one row per patient and segment), e.g. a ``cohort.parquet`` file.

    Feature columns are those in ``meta['feature_columns']`` or, without it, names like pyradiomics keys
    (``firstorder_Mean``, ``wavelet-LLH_glcm_Idm``); clinical variables are the remaining data columns.
    """
    meta = meta or {}
    feats = list(meta.get("feature_columns") or [c for c in table.columns if FEATURE_RE.match(str(c))])
    clinical = list(meta.get("clinical_variables") or
                    [c for c in table.columns if c not in BASE_COLUMNS and c not in feats])
    pcols = [c for c in table.columns if c not in feats and c not in ("segment_key", "segment_label")]
    patients = table[pcols].drop_duplicates("patient_key") if "patient_key" in table else table[pcols]
    rl = pd.DataFrame()
    if feats and "patient_key" in table:
        idc = [c for c in ("patient_key", "patient_id", "segment_key", "segment_label") if c in table]
        rl = table[idc + feats].melt(id_vars=idc, var_name="column", value_name="value").dropna(subset=["value"])
        rl = rl.rename(columns={"column": "feature"})
    return ReportData(patients.reset_index(drop=True), rl, series if series is not None else pd.DataFrame(),
                      studies if studies is not None else pd.DataFrame(), [c for c in clinical if c in patients],
                      title, source, dict(meta.get("labels") or {}), dict(meta.get("units") or {}))


def feature_column(rl: pd.DataFrame) -> str:
    return "column" if "column" in rl else "feature"


def counts(d: ReportData) -> dict[str, Any]:
    p, s, rl = d.patients, d.series, d.radiomics_long
    by_mod: dict[str, int] = {}
    if not s.empty and "modality" in s:
        by_mod = {str(k): int(v) for k, v in s["modality"].fillna("(none)").value_counts().items()}
    n_studies = int(d.studies["study_key"].nunique()) if not d.studies.empty and "study_key" in d.studies else (
        int(s["study_key"].nunique()) if not s.empty and "study_key" in s
        else int(p.get("n_studies", pd.Series([0])).sum()))
    n_seg = int(rl["segment_key"].nunique()) if not rl.empty and "segment_key" in rl else 0
    n_feat = int(rl[feature_column(rl)].nunique()) if not rl.empty else 0
    return {"patients": len(p), "studies": n_studies, "series": len(s), "series_by_modality": by_mod,
            "segments": n_seg, "features": n_feat, "clinical_variables": len(d.clinical_variables)}


def is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def summary(s: pd.Series) -> dict[str, Any]:
    x = pd.to_numeric(s, errors="coerce")
    present = x.dropna()
    out: dict[str, Any] = {"n": len(present), "missing": int(len(s) - len(present))}
    if len(present):
        out.update(mean=float(present.mean()), sd=float(present.std()) if len(present) > 1 else 0.0,
                   min=float(present.min()), median=float(present.median()), max=float(present.max()))
    return out


def categories(s: pd.Series, *, top: int = 15, ordinal_max: int = 8) -> list[tuple[str, int]]:
    """(value, count) pairs: in label order when there are at most ``ordinal_max`` values (stages read
    I, II, IIIa, ...), else by count; ``(missing)`` last; the tail beyond ``top`` summed up."""
    vc = s.map(lambda v: "(missing)" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)).value_counts()
    items = [(str(k), int(v)) for k, v in vc.items()]
    if len(items) <= ordinal_max:
        items.sort(key=lambda kv: (kv[0] == "(missing)", kv[0]))
    if len(items) > top:
        rest = sum(v for _, v in items[top:])
        items = items[:top] + [(f"({len(items) - top} other values)", rest)]
    return items


def group_variable(d: ReportData, preferred: str | None = None) -> str | None:
    """The clinical variable to group radiomics by: ``preferred``, else one named like a stage, else the
    first categorical variable with 2-12 levels."""
    p = d.patients
    cands = [v for v in d.clinical_variables if v in p and not is_numeric(p[v]) and 2 <= p[v].nunique() <= 12]
    if preferred and preferred in p:
        return preferred
    for v in cands:
        if "stage" in v.lower() and "overall" in v.lower():
            return v
    for v in cands:
        if "stage" in v.lower() or "histolog" in v.lower():
            return v
    return cands[0] if cands else None


def survival_variable(d: ReportData) -> str | None:
    for v in d.clinical_variables:
        if v in d.patients and is_numeric(d.patients[v]) and ("surviv" in v.lower() or v.lower() in ("os", "os_days")):
            return v
    return None


def top_features(d: ReportData, limit: int = 40) -> list[str]:
    rl = d.radiomics_long
    if rl.empty:
        return []
    col = feature_column(rl)
    stats = rl.groupby(col)["value"].agg(lambda v: pd.to_numeric(v, errors="coerce").std() /
                                         (abs(pd.to_numeric(v, errors="coerce").mean()) or 1.0))
    ordered = list(stats.fillna(-1).sort_values(ascending=False).index)
    return [str(f) for f in ordered[:limit]]


def feature_matrix(d: ReportData, features: list[str]) -> pd.DataFrame:
    """Rows = (patient, segment); columns = features."""
    rl = d.radiomics_long
    if rl.empty or not features:
        return pd.DataFrame()
    col = feature_column(rl)
    sub = rl[rl[col].isin(features)].copy()
    sub["segment_key"] = sub.get("segment_key", pd.Series(index=sub.index, dtype=object)).fillna("")
    sub["value"] = pd.to_numeric(sub["value"], errors="coerce")
    return sub.pivot_table(index=["patient_key", "segment_key"], columns=col, values="value", aggfunc="first")


_TZ_RE = re.compile(r"T\d{2}:\d{2}.*(Z|[+-]\d{2}:\d{2})$")


def _state(v: Any, *, code: Any = None, kind: str = "text") -> str:
    missing = v is None or (isinstance(v, float) and pd.isna(v)) or (isinstance(v, str) and not v.strip())
    if kind == "coded":
        has_code = not (code is None or (isinstance(code, float) and pd.isna(code)) or code == "")
        if has_code:
            return "present"
        return "absent" if missing else "unmapped"
    if kind == "sex":
        if missing:
            return "absent"
        return "unmapped" if str(v) == "unknown" else "present"
    if kind == "tz":
        if missing:
            return "absent"
        return "present" if _TZ_RE.search(str(v)) else "unmapped"
    return "absent" if missing else "present"


def _values(vals: list[Any], top: int = 8) -> list[tuple[str, int]]:
    s = pd.Series([str(v) for v in vals if not (v is None or (isinstance(v, float) and pd.isna(v)) or v == "")],
                  dtype=object)
    return [(str(k), int(c)) for k, c in s.value_counts().head(top).items()] if len(s) else []


def completeness(d: ReportData) -> list[dict[str, Any]]:
    """Per DICOM attribute: counts present / unmapped / absent over its unit (series, study or patient)
    and the most frequent values seen."""
    rows: list[dict[str, Any]] = []
    s = d.series
    if not s.empty and "modality" in s:
        s = s[~s["modality"].astype(str).str.upper().isin(NON_IMAGE_MODALITIES)]
    st = d.studies
    if st.empty and not d.series.empty and "study_key" in d.series:
        st = d.series.drop_duplicates("study_key").rename(columns={"study_started": "started",
                                                                   "study_description": "description"})

    def add(attr: str, tag: str, unit: str, df: pd.DataFrame, col: str, kind: str = "text",
            code_col: str | None = None, shown: str | None = None) -> None:
        if df.empty or col not in df:
            return
        codes = df[code_col] if code_col and code_col in df else pd.Series([None] * len(df), index=df.index)
        states = [_state(v, code=c, kind=kind) for v, c in zip(df[col], codes, strict=True)]
        shown_vals = list(df[shown] if shown and shown in df else df[col])
        if kind == "coded":
            shown_vals = [f"{c} ({v})" if isinstance(v, str) and v and c is not None and not pd.isna(c)
                          else (v if isinstance(v, str) and v else c) for v, c in zip(df[col], codes, strict=True)]
        if kind == "tz":
            shown_vals = [("offset " + m.group(1)) if isinstance(v, str) and (m := _TZ_RE.search(v)) else
                          ("date only" if isinstance(v, str) and v else None) for v in df[col]]
        rows.append({"attribute": attr, "tag": tag, "unit": unit, "total": len(states),
                     "present": states.count("present"), "unmapped": states.count("unmapped"),
                     "absent": states.count("absent"), "values": _values(shown_vals)})

    add("BodyPartExamined", "(0018,0015)", "image series", s, "body_site_display", "coded", "body_site_code")
    add("Laterality", "(0020,0060)", "image series", s, "laterality_display", "coded", "laterality_code")
    add("SeriesDescription", "(0008,103E)", "image series", s, "series_description")
    add("Manufacturer", "(0008,0070)", "image series", s, "manufacturer")
    add("StudyDescription", "(0008,1030)", "study", st, "description")
    add("StudyDate", "(0008,0020)", "study", st, "started", shown="started")
    add("TimezoneOffsetFromUTC", "(0008,0201)", "study", st, "started", "tz")
    add("PatientSex", "(0010,0040)", "patient", d.patients, "gender", "sex")
    add("PatientBirthDate / age", "(0010,0030)", "patient", d.patients, "birth_date")
    for r in rows:
        if r["attribute"] == "StudyDate":
            r["values"] = _values([str(v)[:4] for v in st["started"] if isinstance(v, str) and v])
        if r["attribute"] == "PatientBirthDate / age":
            r["values"] = _values([str(v)[:3] + "0s" for v in d.patients["birth_date"] if isinstance(v, str) and v])
    return rows
