"""Join view tables into a cohort (pandas; no network, no Airflow).

Inputs are the rows of the shipped views (``data/views``): ``patient``, ``clinical_observation``,
``observation_component``, ``condition``, ``imaging_study``, ``imaging_series``, ``radiomics_feature``,
``segment`` (lists of dicts, DataFrames or :class:`kaapana_fhir.core.sof.table.ViewTable`). Joins use
``getResourceKey()`` / ``getReferenceKey()`` columns (``patient_key``, ``study_key``, ``segment_key``).

Outputs (:class:`Cohort`):

* ``patients``: one row per patient: Patient columns, ``age_at_study`` (whole years from ``birthDate`` to the
  first ``ImagingStudy.started``), one column per clinical variable (see :mod:`.variables`: columns named by
  code or by the project's short ``code.text``; component values as own columns; UCUM-converted units),
  ``conditions`` / ``condition_codes`` (every Condition of the patient), imaging counts;
* ``radiomics_long``: one row per (patient, segment, image type, feature);
* ``radiomics_wide``: one row per (patient, segment), one column per feature (``<imageType>_<feature>``,
  ``original_`` dropped like Kaapana's PyRadiomicsOperator does);
* ``series``: one row per ImagingStudy.series with the patient identifier;
* ``table``: ``patients`` left-joined with ``radiomics_wide`` (key: patient, segment);
* ``dictionary``: one row per column of ``table`` (label, source, code, unit, units seen, conversions);
* ``dropped``: resources whose rows could not be joined to a patient, by reason
  (``Observation: subject is a Group``, ``Condition: contained subject``, ...).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kaapana_fhir.core import limits
from kaapana_fhir.core.cohort import variables as V
from kaapana_fhir.core.cohort.views import coalesce_tables
from kaapana_fhir.exceptions import ConfigError

log = logging.getLogger(__name__)

VIEW_NAMES = ("patient", "clinical_observation", "observation_component", "condition", "imaging_study",
              "imaging_series", "radiomics_feature", "segment", "radiomics_feature_set")
_PATIENT_COLS = ["patient_key", "identifier_system", "patient_id", "gender", "birth_date", "deceased"]


@dataclass
class Cohort:
    """The cohort tables (see module doc). ``labels``/``units`` map column → display text / UCUM unit."""
    patients: pd.DataFrame
    radiomics_long: pd.DataFrame
    radiomics_wide: pd.DataFrame
    series: pd.DataFrame
    studies: pd.DataFrame
    clinical_variables: list[str] = field(default_factory=list)
    feature_columns: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    variables: list[V.Variable] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """Patients left-joined with the wide radiomics table (one row per patient and segment)."""
        if self.radiomics_wide.empty:
            return self.patients.copy()
        rad = self.radiomics_wide.drop(columns=[c for c in ("patient_id",) if c in self.radiomics_wide])
        return self.patients.merge(rad, on="patient_key", how="left")

    @property
    def dictionary(self) -> pd.DataFrame:
        """One row per column of :attr:`table`: column, label, source, code_system, code, unit, units_seen,
        converted (values converted to ``unit``), n_present (patients/rows with a value)."""
        return data_dictionary(self)


_DICT_COLUMNS = ["column", "label", "source", "code_system", "code", "unit", "units_seen", "converted", "n_present"]
_PATIENT_LABELS = {
    "patient_key": "Patient resource id (getResourceKey)", "identifier_system": "Patient.identifier[0].system",
    "patient_id": "Patient.identifier[0].value", "gender": "Patient.gender", "birth_date": "Patient.birthDate",
    "deceased": "Patient.deceased", "deceased_date": "Patient.deceasedDateTime", "source": "meta.tag source",
    "age_at_study": "Age at the first imaging study (whole years, birthDate → ImagingStudy.started)",
    "conditions": "Every Condition of the patient (display text, else code text, else code; by onset)",
    "condition_codes": "Codes of the patient's Conditions (system|code)",
    "n_studies": "Number of ImagingStudy resources", "n_series": "Number of ImagingStudy.series",
    "modalities": "Series modalities", "n_segments": "Number of segments with radiomics features",
    "segment_key": "BodyStructure id (segment)", "segment_label": "Segment label",
}


def data_dictionary(cohort: Cohort) -> pd.DataFrame:
    """The data dictionary of ``cohort.table`` (see :attr:`Cohort.dictionary`)."""
    table = cohort.table
    by_name = {v.name: v for v in cohort.variables}
    feats = set(cohort.feature_columns)
    rows = []
    for c in table.columns:
        n = int(table[c].notna().sum())
        v = by_name.get(c)
        if v is not None:
            rows.append([c, v.label, v.source, v.code_system, v.code, v.unit, ",".join(v.units_seen), v.converted, n])
        elif c in feats:
            rows.append([c, cohort.labels.get(c, c), "radiomics", None, None, cohort.units.get(c), None, 0, n])
        else:
            rows.append([c, _PATIENT_LABELS.get(c, cohort.labels.get(c, c)), "patient", None, None,
                         "a" if c == "age_at_study" else None, None, 0, n])
    return pd.DataFrame(rows, columns=_DICT_COLUMNS)


def _frame(rows: Any, cols: list[str] | None = None) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        df = rows.copy()
    elif hasattr(rows, "frame"):
        df = rows.frame()
    else:
        df = pd.DataFrame(list(rows or []))
    for c in cols or []:
        if c not in df:
            df[c] = None
    return df


def strip_oid(uid: Any) -> Any:
    """``urn:oid:1.2.3`` → ``1.2.3`` (DICOM UIDs in FHIR identifiers)."""
    if isinstance(uid, str) and uid.startswith("urn:oid:"):
        return uid[len("urn:oid:"):]
    return uid


def _typed(s: pd.Series) -> pd.Series:
    """Numeric when every present value is a number, else strings (Parquet needs one type per column)."""
    present = s.dropna()
    if len(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(s, errors="coerce").astype("float64")
    return s.map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)).astype("object")


def _subject_reason(ref: Any) -> str:
    if not isinstance(ref, str) or not ref:
        return "no subject reference (missing or by identifier only)"
    if ref.startswith("#"):
        return "contained subject"
    if ref.startswith("urn:"):
        return "subject referenced by urn (not resolvable)"
    parts = [p for p in ref.split("?")[0].split("/") if p]
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] != "Patient":
        return f"subject is a {parts[-2]}"
    return "subject reference not understood"


def count_dropped(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Resources whose rows have no ``patient_key`` (they cannot join a patient), by type and reason."""
    what = {"clinical_observation": ("Observation", "observation_key"),
            "observation_component": ("Observation", "observation_key"),
            "condition": ("Condition", "condition_key"), "imaging_study": ("ImagingStudy", "study_key"),
            "radiomics_feature": ("Observation", "feature_key"), "segment": ("BodyStructure", "segment_key")}
    seen: set[tuple[str, Any]] = set()
    out: Counter[str] = Counter()
    for view, (rtype, key) in what.items():
        df = frames.get(view)
        if df is None or df.empty or "patient_key" not in df:
            continue
        lost = df[df["patient_key"].isna()]
        for k, ref in zip(lost[key] if key in lost else [None] * len(lost),
                          lost["subject_reference"] if "subject_reference" in lost else [None] * len(lost),
                          strict=True):
            if (rtype, k) in seen and k is not None:
                continue
            seen.add((rtype, k))
            reason = _subject_reason(ref) if "subject_reference" in lost else "no Patient reference"
            out[f"{rtype}: {reason}"] += 1
    return dict(sorted(out.items()))


def _year_fraction(birth: Any, at: Any) -> float | None:
    if not isinstance(birth, str) or not isinstance(at, str) or len(birth) < 4 or len(at) < 4:
        return None
    try:
        b = [int(x) for x in birth[:10].split("-")]
        a = [int(x) for x in at[:10].split("-")]
    except ValueError:
        return None
    b += [1] * (3 - len(b))
    a += [1] * (3 - len(a))
    years = a[0] - b[0] - (1 if (a[1], a[2]) < (b[1], b[2]) else 0)
    return float(years) if years >= 0 else None


def build_cohort(tables: dict[str, Any]) -> Cohort:
    """Join the view tables (dict view name → rows) into a :class:`Cohort` (see module doc). Columns written
    as parts (``variable__1``, ``variable__2``, ...) are coalesced first (:func:`..views.coalesce_tables`)."""
    tables = coalesce_tables(tables)
    pat = _frame(tables.get("patient"), _PATIENT_COLS)
    clin = _frame(tables.get("clinical_observation"), ["patient_key", "variable", "value_number", "value_text",
                                                        "value_code", "data_absent_reason", "effective"])
    comp = _frame(tables.get("observation_component"), ["patient_key", "code_system", "code", "value_number",
                                                         "value_unit", "value_text", "effective"])
    cond = _frame(tables.get("condition"), ["patient_key", "variable", "value_text", "onset"])
    studies = _frame(tables.get("imaging_study"), ["study_key", "patient_key", "study_uid", "modalities"])
    series = _frame(tables.get("imaging_series"), ["study_key", "patient_key", "study_uid", "series_uid", "modality",
                                                   "body_site_code", "body_site_display", "series_description"])
    feats = _frame(tables.get("radiomics_feature"), ["patient_key", "study_key", "segment_key", "feature",
                                                     "image_type", "value", "unit"])
    segs = _frame(tables.get("segment"), ["segment_key", "segment_label"])
    sets = tables.get("radiomics_feature_set")
    if sets is not None and not feats.empty and "feature_key" in feats:
        # the radiomics flow writes each group Observation last: a feature no group lists is from an unfinished run
        members = set(_frame(sets, ["member_key"])["member_key"].dropna())
        unfinished = ~feats["feature_key"].isin(members)
        if unfinished.any():
            log.warning("cohort: %d radiomics features belong to no feature set yet (run not finished); left out",
                        int(unfinished.sum()))
            feats = feats[~unfinished]
    dropped = count_dropped({"clinical_observation": clin, "observation_component": comp, "condition": cond,
                             "imaging_study": studies, "radiomics_feature": feats, "segment": segs})
    if dropped:
        log.warning("cohort: %d resources cannot be joined to a patient: %s", sum(dropped.values()),
                    "; ".join(f"{k} ({v})" for k, v in dropped.items()))

    patients = pat[list(pat.columns)].drop_duplicates("patient_key") if not pat.empty else \
        pd.DataFrame(columns=_PATIENT_COLS)
    # patients referenced by data but without a Patient resource in the fetch still get a row
    known = set(patients["patient_key"].dropna())
    extra = set()
    for df in (clin, comp, cond, studies, feats):
        if not df.empty:
            extra |= set(df["patient_key"].dropna()) - known
    if extra:
        patients = pd.concat([patients, pd.DataFrame({"patient_key": sorted(extra)})], ignore_index=True)

    for df, key in ((studies, "study_uid"), (series, "study_uid")):
        if not df.empty:
            df[key] = df[key].map(strip_oid)
    # age at the first imaging study
    first_study: dict[Any, Any] = {}
    if not studies.empty and "started" in studies:
        st = studies[studies["patient_key"].notna() & studies["started"].notna()]
        first_study = st.groupby("patient_key")["started"].min().to_dict()
    births = dict(zip(patients["patient_key"], patients.get("birth_date", pd.Series([None] * len(patients))),
                      strict=True))
    patients["age_at_study"] = [_year_fraction(births.get(k), first_study.get(k)) for k in patients["patient_key"]]
    patients["age_at_study"] = pd.to_numeric(patients["age_at_study"], errors="coerce").astype("float64")

    reserved = set(patients.columns) | {"n_studies", "n_series", "modalities", "n_segments", "segment_key",
                                        "segment_label", "conditions", "condition_codes"}
    var = V.build_variables(clin, comp, cond, reserved)
    variables = var.names
    if variables:
        patients = patients.merge(var.wide, on="patient_key", how="left")
    if not var.conditions.empty:
        patients = patients.merge(var.conditions, on="patient_key", how="left")
    else:
        patients["conditions"] = None
        patients["condition_codes"] = None
    for c in ("conditions", "condition_codes"):
        patients[c] = patients[c].map(lambda v: v if isinstance(v, list) else [])

    pid_map = dict(zip(patients["patient_key"], patients.get("patient_id", pd.Series(dtype=object)), strict=False))
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
    feature_units: dict[str, str] = {}
    if not feats.empty:
        f = feats[feats["patient_key"].notna()].copy()
        f["image_type"] = f["image_type"].fillna("original")
        f["column"] = [str(ft) if it == "original" else f"{it}_{ft}" for it, ft in
                       zip(f["image_type"], f["feature"], strict=True)]
        labels = dict(zip(segs["segment_key"], segs["segment_label"], strict=True)) if not segs.empty else {}
        f["segment_label"] = f["segment_key"].map(labels)
        f["patient_id"] = f["patient_key"].map(pid_map)
        f["value"] = pd.to_numeric(f["value"], errors="coerce")
        rad_long = f[list(rad_long.columns)].reset_index(drop=True)
        for col, unit in zip(f["column"], f["unit"], strict=True):
            if isinstance(unit, str) and unit and col not in feature_units:
                feature_units[col] = unit
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
            feature_units.update({f"{c}_radiomics": feature_units[c] for c in clash if c in feature_units})
            feature_cols = [f"{c}_radiomics" if c in clash else c for c in feature_cols]
        rad_wide = w
        nseg = rad_long.groupby("patient_key")["segment_key"].nunique()
        counts["n_segments"] = counts["patient_key"].map(nseg).fillna(0).astype("int64")
    else:
        counts["n_segments"] = 0
    patients = patients.merge(counts, on="patient_key", how="left")
    units = {**{c: u for c, u in feature_units.items() if c in feature_cols}, **var.units, "age_at_study": "a"}
    labels_out = {**{c: c for c in feature_cols}, **var.labels}
    return Cohort(patients.reset_index(drop=True), rad_long, rad_wide.reset_index(drop=True), series, studies,
                  variables, feature_cols, labels_out, units, dropped, var.variables)


# ---------------------------------------------------------------------- filters
_FILTER_RE = re.compile(r"^\s*(?P<col>.+?)\s*(?P<op>!=|>=|<=|==|=|>|<|~| in )\s*(?P<val>.*?)\s*$")
_NUMBER_UNIT = re.compile(r"^\s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>\S.*)?$")
_ALIASES = {"condition": "conditions", "diagnosis": "conditions", "diagnoses": "conditions",
            "age": "age_at_study"}


@dataclass(frozen=True)
class Condition:
    """One filter condition: ``column op value`` (value may carry a UCUM unit for numeric comparisons)."""
    column: str
    op: str
    value: str

    def mask(self, df: pd.DataFrame, units: dict[str, str] | None = None,
             labels: dict[str, str] | None = None) -> pd.Series:
        col = _find_column(df, self.column, labels)
        s = df[col]
        if self.op in (">", "<", ">=", "<="):
            ref = self._number(col, units or {})
            num = pd.to_numeric(s, errors="coerce")
            return {">": num > ref, "<": num < ref, ">=": num >= ref, "<=": num <= ref}[self.op].fillna(False)
        items = s.map(_items)
        needle = self.value.strip().lower()
        if self.op == "~":
            return items.map(lambda xs: any(needle in x for x in xs))
        if self.op == " in ":
            options = {_norm(v) for v in self.value.split(",")}
            return items.map(lambda xs: any(x in options for x in xs))
        want = _norm(self.value)
        eq = items.map(lambda xs: want in xs)
        return ~eq if self.op == "!=" else eq

    def _number(self, col: str, units: dict[str, str]) -> float:
        m = _NUMBER_UNIT.match(self.value)
        if not m:
            raise ConfigError(f"filter {self}: {self.value!r} is not a number (rule: <, >, <=, >= compare numbers, "
                              "optionally with a UCUM unit: 'weight>=70 kg')")
        ref = float(m.group("num"))
        unit = (m.group("unit") or "").strip()
        col_unit = units.get(col)
        if not unit or unit == col_unit:
            return ref
        if not col_unit:
            raise ConfigError(f"filter {self}: column {col!r} has no unit to convert {unit!r} to "
                              "(rule: give the number without a unit)")
        from kaapana_fhir.core.cohort.units import converter

        f = converter(unit, col_unit)
        if f is None:
            raise ConfigError(f"filter {self}: {unit!r} cannot be converted to the column's unit {col_unit!r} "
                              "(rule: UCUM units of the same kind)")
        return float(f(ref))

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value}"


def _items(v: Any) -> list[str]:
    """A cell as normalised text items (list cells — also JSON text from CSV/Parquet — give one per element)."""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return []
    if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
        try:  # bounded: a FHIR string that merely looks like a deep JSON list stays text
            parsed = limits.loads_json(v, source="cohort cell", max_bytes=len(v.encode()) + 1)
        except (limits.LimitError, ValueError):
            parsed = None
        if isinstance(parsed, list):
            v = parsed
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ndarray":
        return [_norm(x) for x in v]
    return [_norm(v)]


def _norm(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip().lower()


def _find_column(df: pd.DataFrame, name: str, labels: dict[str, str] | None = None) -> str:
    """A column by name, case-insensitive name, label (display text) or alias (``Condition`` → ``conditions``)."""
    if name in df.columns:
        return name
    lower = {str(c).lower(): c for c in df.columns}
    key = name.strip().lower()
    if key in lower:
        return str(lower[key])
    by_label = {str(lab).lower(): c for c, lab in (labels or {}).items() if c in df.columns}
    if key in by_label:
        return str(by_label[key])
    alias = _ALIASES.get(key)
    if alias and alias in df.columns:
        return alias
    raise ConfigError(f"filter column {name!r} is not in the cohort table (columns: {', '.join(map(str, df.columns))})")


def parse_filter(expr: str) -> Condition:
    """``Histology=adenocarcinoma``, ``Overall.Stage in IIIa,IIIb``, ``age>=60``, ``Histology~adeno``,
    ``loinc_29463_7_body_weight_kg>=154 [lb_av]`` (numbers may carry a UCUM unit)."""
    m = _FILTER_RE.match(expr or "")
    if not m or not m.group("col"):
        raise ConfigError(f"filter {expr!r} is not '<column><op><value>' (ops: = != > < >= <= ~ ' in ')")
    op = "=" if m.group("op") == "==" else m.group("op")
    return Condition(m.group("col"), op, m.group("val"))


def split_filters(filters: list[str] | tuple[str, ...] | None) -> list[str]:
    """Filters as given on the command line or in a form: each may hold several ``;``-separated conditions."""
    out: list[str] = []
    for f in filters or []:
        out.extend(p.strip() for p in str(f).split(";") if p.strip())
    return out


def filter_patients(df: pd.DataFrame, filters: list[str] | tuple[str, ...] | None, *,
                    units: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows matching every condition (AND; ``;`` separates conditions inside one filter string);
    case-insensitive text comparison; list cells (``conditions``) match when any element matches; numbers
    with a unit are converted to the column's unit (``units``, default ``df.attrs['units']``)."""
    conds = split_filters(filters)
    if not conds or df.empty:
        return df
    units = units if units is not None else dict(df.attrs.get("units") or {})
    labels = labels if labels is not None else dict(df.attrs.get("labels") or {})
    mask = pd.Series(True, index=df.index)
    for f in conds:
        cond = parse_filter(f)
        mask &= cond.mask(df, units, labels).astype(bool)
        col = _find_column(df, cond.column, labels)
        if df[col].isna().all():
            hint = _EMPTY_HINTS.get(col, "")
            log.warning("filter %r: column %s has no value for any of the %d patients, so no patient matches%s",
                        f, col, len(df), f" ({hint})" if hint else "")
    return df[mask]


#: why a derived column can be empty (said when a filter on it matches nobody for that reason)
_EMPTY_HINTS = {
    "age_at_study": "it needs a birth date and an ImagingStudy date; an age column of an imported table is "
                    "filtered by its own column name",
}


def apply_filters(cohort: Cohort, filters: list[str] | tuple[str, ...] | None) -> Cohort:
    """Keep the patients (and their series and radiomics rows) matching ``filters`` on ``cohort.patients``."""
    if not split_filters(filters):
        return cohort
    keep = set(filter_patients(cohort.patients, filters, units=cohort.units, labels=cohort.labels)["patient_key"])

    def sub(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["patient_key"].isin(keep)].reset_index(drop=True) if "patient_key" in df else df

    return Cohort(sub(cohort.patients), sub(cohort.radiomics_long), sub(cohort.radiomics_wide), sub(cohort.series),
                  sub(cohort.studies), cohort.clinical_variables, cohort.feature_columns, cohort.labels, cohort.units,
                  cohort.dropped, cohort.variables)


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


def spreadsheet_safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy for CSV: text cells and column names :func:`spreadsheet_safe`, lists/dicts as JSON text (used by
    :func:`write_csv` and the retrieval API's CSV answers)."""
    out = df.copy()
    for c in out.columns:
        if not pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c]):
            out[c] = out[c].map(lambda v: spreadsheet_safe(json.dumps(v) if isinstance(v, (list, dict)) else v),
                                na_action="ignore").astype(object)
    out.columns = [spreadsheet_safe(str(c)) for c in out.columns]
    return out


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    out = spreadsheet_safe_frame(df)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(p, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return p


def write_parquet(df: pd.DataFrame, path: str | Path, *, labels: dict[str, str] | None = None,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Parquet; list/dict cells as JSON text; ``labels`` (column → display text) become the fields' ``label``
    metadata, ``metadata`` (JSON-able) the schema's ``kaapana_fhir`` metadata (e.g. the data dictionary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.attrs = {}
    for c in out.columns:
        if out[c].dtype == object and out[c].map(lambda v: isinstance(v, (list, dict))).any():
            out[c] = out[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
        elif out[c].dtype == object:
            out[c] = _typed(out[c])
    table = pa.Table.from_pandas(out, preserve_index=False)
    if labels:
        fields = [f.with_metadata({**(f.metadata or {}), b"label": str(labels[f.name]).encode()})
                  if f.name in labels else f for f in table.schema]
        table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"kaapana_fhir": json.dumps(metadata, default=str).encode()})
    pq.write_table(table, p)
    return p


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """By suffix: ``.parquet`` or ``.csv`` (spreadsheet-safe)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return write_parquet(df, path, labels=df.attrs.get("labels"), metadata=df.attrs.get("kaapana_fhir"))
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
