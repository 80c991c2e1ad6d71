"""Join view tables into a cohort (pandas; no network, no Airflow).

Inputs are the row lists of the shipped views (``data/views``): ``patient``, ``clinical_observation``,
``condition``, ``imaging_study``, ``imaging_series``, ``radiomics_feature``, ``segment``. Joins use
``getResourceKey()`` / ``getReferenceKey()`` columns (``patient_key``, ``study_key``, ``segment_key``).

Outputs (:class:`Cohort`):

* ``patients``: one row per patient: Patient columns, one column per clinical variable
  (``Observation.code.text`` / ``Condition.code.text``; numeric when all values are numbers), imaging counts;
* ``radiomics_long``: one row per (patient, segment, image type, feature);
* ``radiomics_wide``: one row per (patient, segment), one column per feature (``<imageType>_<feature>``,
  ``original_`` dropped like Kaapana's PyRadiomicsOperator does);
* ``series``: one row per ImagingStudy.series with the patient identifier;
* ``table``: ``patients`` left-joined with ``radiomics_wide`` (key: patient, segment).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kaapana_fhir.exceptions import ConfigError

log = logging.getLogger(__name__)

VIEW_NAMES = ("patient", "clinical_observation", "condition", "imaging_study", "imaging_series",
              "radiomics_feature", "segment")
_PATIENT_COLS = ["patient_key", "identifier_system", "patient_id", "gender", "birth_date", "deceased"]


@dataclass
class Cohort:
    patients: pd.DataFrame
    radiomics_long: pd.DataFrame
    radiomics_wide: pd.DataFrame
    series: pd.DataFrame
    studies: pd.DataFrame
    clinical_variables: list[str] = field(default_factory=list)
    feature_columns: list[str] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """Patients left-joined with the wide radiomics table (one row per patient and segment)."""
        if self.radiomics_wide.empty:
            return self.patients.copy()
        rad = self.radiomics_wide.drop(columns=[c for c in ("patient_id",) if c in self.radiomics_wide])
        return self.patients.merge(rad, on="patient_key", how="left")


def _frame(rows: list[dict[str, Any]] | pd.DataFrame | None, cols: list[str] | None = None) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows.copy()
    df = pd.DataFrame(rows or [])
    for c in cols or []:
        if c not in df:
            df[c] = None
    return df


def strip_oid(uid: Any) -> Any:
    """``urn:oid:1.2.3`` → ``1.2.3`` (DICOM UIDs in FHIR identifiers)."""
    if isinstance(uid, str) and uid.startswith("urn:oid:"):
        return uid[len("urn:oid:"):]
    return uid


def _value(row: pd.Series) -> Any:
    v = row.get("value_number")
    if v is not None and not (isinstance(v, float) and pd.isna(v)):
        return v
    for c in ("value_text", "value_code", "data_absent_reason"):
        t = row.get(c)
        if isinstance(t, str) and t:
            return t if c != "data_absent_reason" else None
    return None


def _typed(s: pd.Series) -> pd.Series:
    """Numeric when every present value is a number, else strings (Parquet needs one type per column)."""
    present = s.dropna()
    if len(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(s, errors="coerce").astype("float64")
    return s.map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)).astype("object")


def clinical_long(clinical: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """(patient_key, variable, value, effective, kind) from clinical Observations and Conditions."""
    parts = []
    if not clinical.empty:
        c = clinical[clinical["patient_key"].notna()].copy()
        c["value"] = c.apply(_value, axis=1) if len(c) else None
        c["kind"] = "observation"
        parts.append(c[["patient_key", "variable", "value", "effective", "kind"]])
    if not conditions.empty:
        d = conditions[conditions["patient_key"].notna()].copy()
        d["value"] = d["value_text"]
        d["effective"] = d.get("onset")
        d["kind"] = "condition"
        parts.append(d[["patient_key", "variable", "value", "effective", "kind"]])
    if not parts:
        return pd.DataFrame(columns=["patient_key", "variable", "value", "effective", "kind"])
    out = pd.concat(parts, ignore_index=True)
    return out[out["variable"].notna()]


def build_cohort(tables: dict[str, list[dict[str, Any]] | pd.DataFrame]) -> Cohort:
    """Join the view tables (dict view name → rows) into a :class:`Cohort`."""
    pat = _frame(tables.get("patient"), _PATIENT_COLS)
    clin = _frame(tables.get("clinical_observation"), ["patient_key", "variable", "value_number", "value_text",
                                                        "value_code", "data_absent_reason", "effective"])
    cond = _frame(tables.get("condition"), ["patient_key", "variable", "value_text", "onset"])
    studies = _frame(tables.get("imaging_study"), ["study_key", "patient_key", "study_uid", "modalities"])
    series = _frame(tables.get("imaging_series"), ["study_key", "patient_key", "study_uid", "series_uid", "modality",
                                                   "body_site_code", "body_site_display", "series_description"])
    feats = _frame(tables.get("radiomics_feature"), ["patient_key", "study_key", "segment_key", "feature",
                                                     "image_type", "value", "unit"])
    segs = _frame(tables.get("segment"), ["segment_key", "segment_label"])

    patients = pat[[c for c in pat.columns]].drop_duplicates("patient_key") if not pat.empty else \
        pd.DataFrame(columns=_PATIENT_COLS)
    # patients referenced by data but without a Patient resource in the fetch still get a row
    known = set(patients["patient_key"].dropna())
    extra = set()
    for df in (clin, cond, studies, feats):
        if not df.empty:
            extra |= set(df["patient_key"].dropna()) - known
    if extra:
        patients = pd.concat([patients, pd.DataFrame({"patient_key": sorted(extra)})], ignore_index=True)

    long_clin = clinical_long(clin, cond)
    variables: list[str] = []
    if not long_clin.empty:
        lc = long_clin.sort_values(["patient_key", "variable", "effective"], na_position="first")
        wide = lc.groupby(["patient_key", "variable"], sort=False)["value"].last().unstack("variable")
        variables = [str(v) for v in wide.columns]
        wide = wide.reset_index()
        clash = [v for v in variables if v in patients.columns and v != "patient_key"]
        if clash:
            wide = wide.rename(columns={v: f"{v}_clinical" for v in clash})
            variables = [f"{v}_clinical" if v in clash else v for v in variables]
        for v in variables:
            wide[v] = _typed(wide[v])
        patients = patients.merge(wide, on="patient_key", how="left")

    for df, key in ((studies, "study_uid"), (series, "study_uid")):
        if not df.empty:
            df[key] = df[key].map(strip_oid)
    pid_map = dict(zip(patients["patient_key"], patients.get("patient_id", pd.Series(dtype=object))))
    if not series.empty:
        series.insert(0, "patient_id", series["patient_key"].map(pid_map))
    counts = pd.DataFrame({"patient_key": patients["patient_key"]})
    counts["n_studies"] = counts["patient_key"].map(studies.groupby("patient_key").size() if not studies.empty else {})
    counts["n_series"] = counts["patient_key"].map(series.groupby("patient_key").size() if not series.empty else {})
    if not series.empty:
        mods = series.groupby("patient_key")["modality"].agg(lambda m: ",".join(sorted({str(x) for x in m if x})))
        counts["modalities"] = counts["patient_key"].map(mods)
    else:
        counts["modalities"] = None
    counts[["n_studies", "n_series"]] = counts[["n_studies", "n_series"]].fillna(0).astype("int64")

    rad_long = pd.DataFrame(columns=["patient_key", "patient_id", "segment_key", "segment_label", "study_key",
                                     "image_type", "feature", "column", "value", "unit"])
    rad_wide = pd.DataFrame(columns=["patient_key", "segment_key", "segment_label"])
    feature_cols: list[str] = []
    if not feats.empty:
        f = feats[feats["patient_key"].notna()].copy()
        f["image_type"] = f["image_type"].fillna("original")
        f["column"] = [str(ft) if it == "original" else f"{it}_{ft}" for it, ft in zip(f["image_type"], f["feature"])]
        labels = dict(zip(segs["segment_key"], segs["segment_label"])) if not segs.empty else {}
        f["segment_label"] = f["segment_key"].map(labels)
        f["patient_id"] = f["patient_key"].map(pid_map)
        f["value"] = pd.to_numeric(f["value"], errors="coerce")
        rad_long = f[list(rad_long.columns)].reset_index(drop=True)
        key = f["segment_key"].fillna("")
        f = f.assign(segment_key=key)
        w = f.pivot_table(index=["patient_key", "segment_key"], columns="column", values="value", aggfunc="first")
        feature_cols = [str(c) for c in w.columns]
        w = w.reset_index()
        w["segment_key"] = w["segment_key"].replace("", None)
        w.insert(2, "segment_label", w["segment_key"].map(labels))
        w.columns.name = None
        clash = [c for c in feature_cols if c in patients.columns or c in counts.columns]
        if clash:
            w = w.rename(columns={c: f"{c}_radiomics" for c in clash})
            feature_cols = [f"{c}_radiomics" if c in clash else c for c in feature_cols]
        rad_wide = w
        nseg = rad_long.groupby("patient_key")["segment_key"].nunique()
        counts["n_segments"] = counts["patient_key"].map(nseg).fillna(0).astype("int64")
    else:
        counts["n_segments"] = 0
    patients = patients.merge(counts, on="patient_key", how="left")
    return Cohort(patients.reset_index(drop=True), rad_long, rad_wide.reset_index(drop=True), series, studies,
                  variables, feature_cols)


# ---------------------------------------------------------------------- filters
_FILTER_RE = re.compile(r"^\s*(?P<col>.+?)\s*(?P<op>!=|>=|<=|==|=|>|<|~| in )\s*(?P<val>.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: str

    def mask(self, df: pd.DataFrame) -> pd.Series:
        col = _find_column(df, self.column)
        s = df[col]
        if self.op in (">", "<", ">=", "<="):
            try:
                ref = float(self.value)
            except ValueError:
                raise ConfigError(f"filter {self}: {self.value!r} is not a number (rule: <, >, <=, >= compare numbers)") from None
            num = pd.to_numeric(s, errors="coerce")
            return {">": num > ref, "<": num < ref, ">=": num >= ref, "<=": num <= ref}[self.op].fillna(False)
        text = s.map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else _norm(v))
        if self.op == "~":
            return text.str.contains(self.value.strip().lower(), regex=False)
        if self.op == " in ":
            options = {_norm(v) for v in self.value.split(",")}
            return text.isin(options)
        eq = text == _norm(self.value)
        return ~eq if self.op == "!=" else eq

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value}"


def _norm(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip().lower()


def _find_column(df: pd.DataFrame, name: str) -> str:
    if name in df.columns:
        return name
    lower = {str(c).lower(): c for c in df.columns}
    if name.lower() in lower:
        return lower[name.lower()]
    raise ConfigError(f"filter column {name!r} is not in the cohort table (columns: {', '.join(map(str, df.columns))})")


def parse_filter(expr: str) -> Condition:
    """``Histology=adenocarcinoma``, ``Overall.Stage in IIIa,IIIb``, ``age>=60``, ``Histology~adeno``."""
    m = _FILTER_RE.match(expr or "")
    if not m or not m.group("col"):
        raise ConfigError(f"filter {expr!r} is not '<column><op><value>' (ops: = != > < >= <= ~ ' in ')")
    op = "=" if m.group("op") == "==" else m.group("op")
    return Condition(m.group("col"), op, m.group("val"))


def filter_patients(df: pd.DataFrame, filters: list[str] | tuple[str, ...] | None) -> pd.DataFrame:
    """Rows matching every filter (AND); case-insensitive text comparison."""
    if not filters or df.empty:
        return df
    mask = pd.Series(True, index=df.index)
    for f in filters:
        mask &= parse_filter(f).mask(df)
    return df[mask]


def apply_filters(cohort: Cohort, filters: list[str] | tuple[str, ...] | None) -> Cohort:
    """Keep the patients (and their series and radiomics rows) matching ``filters`` on ``cohort.patients``."""
    if not filters:
        return cohort
    keep = set(filter_patients(cohort.patients, filters)["patient_key"])

    def sub(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["patient_key"].isin(keep)].reset_index(drop=True) if "patient_key" in df else df

    return Cohort(sub(cohort.patients), sub(cohort.radiomics_long), sub(cohort.radiomics_wide), sub(cohort.series),
                  sub(cohort.studies), cohort.clinical_variables, cohort.feature_columns)


# ---------------------------------------------------------------------- Kaapana dataset
def series_dataset(cohort: Cohort, *, modality: str | None = "CT", dataset_name: str = "fhir-cohort",
                   ) -> dict[str, Any]:
    """The cohort's SeriesInstanceUIDs in Kaapana's ``dag_run.conf`` shape: ``{"data_form": {dataset_name,
    identifiers}}`` (Kaapana workflows take ``data_form.identifiers`` as input series). ``modality`` filters
    ``ImagingStudy.series.modality`` (None/"" = all)."""
    s = cohort.series
    if not s.empty and modality:
        s = s[s["modality"].astype(str).str.upper() == modality.upper()]
    uids = [] if s.empty else sorted({str(u) for u in s["series_uid"].dropna()})
    return {"data_form": {"dataset_name": dataset_name, "identifiers": uids}}


# ---------------------------------------------------------------------- writing
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def spreadsheet_safe(value: Any) -> Any:
    """Prefix text that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR) with ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    out = df.copy()
    for c in out.columns:
        if not pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c]):
            out[c] = out[c].map(lambda v: spreadsheet_safe(json.dumps(v) if isinstance(v, (list, dict)) else v),
                                na_action="ignore").astype(object)
    out.columns = [spreadsheet_safe(str(c)) for c in out.columns]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(p, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return p


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and out[c].map(lambda v: isinstance(v, (list, dict))).any():
            out[c] = out[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
        elif out[c].dtype == object:
            out[c] = _typed(out[c])
    out.to_parquet(p, index=False)
    return p


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """By suffix: ``.parquet`` or ``.csv`` (spreadsheet-safe)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return write_parquet(df, path)
    if suffix == ".csv":
        return write_csv(df, path)
    raise ConfigError(f"output {str(path)!r}: use a .parquet or .csv file name")


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cohort table {str(p)!r} does not exist")
    if p.suffix.lower() == ".parquet":
        return pd.read_parquet(p)
    if p.suffix.lower() == ".csv":
        return pd.read_csv(p)
    raise ConfigError(f"cohort table {str(p)!r}: expected .parquet or .csv")
