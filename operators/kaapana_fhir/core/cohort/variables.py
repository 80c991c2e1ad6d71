"""Clinical variables of a cohort without losing data (pandas; no network, no Airflow).

From the rows of the ``clinical_observation``, ``observation_component`` and ``condition`` views:

* **one column per variable**, where a variable is an Observation or component *code* (first coding's
  system + code; the text when there is no coding). The column is **named** by the project convention when
  every resource of the code carries the same short ``code.text`` without spaces (``Overall.Stage``,
  ``Survival.time``, ``age`` from the table import); otherwise from the code:
  ``<system>_<code>_<display>_<unit>`` (``loinc_8302_2_body_height_cm``, at most 60 characters, unique;
  display words cut first). The display text (``code.text`` or ``coding.display``) is the column **label**
  (data dictionary, Parquet field metadata);
* **component values are variables of their own** (blood pressure → ``loinc_8480_6_systolic_..._mm_hg`` and
  ``loinc_8462_4_diastolic_..._mm_hg``);
* **units**: numeric values of one code are converted (UCUM, ``ucumvert``) to the code's most frequent unit;
  values in an incompatible or unknown unit go to a column of their own (name suffixed with that unit);
  the unit of every column is in :attr:`Variables.units` and the data dictionary;
* the **last value** per patient and variable (by effective date) is the cell value;
* **every Condition** of a patient is kept: ``conditions`` (list of the diagnoses' display text, else
  code text, else code; by onset, those without onset last) and ``condition_codes`` (``system|code``);
  Conditions following the project convention (short ``code.text`` such as ``Histology``) also give a
  column of that name whose value is the condition's value text (mCODE histology, else display),
  the latest per patient.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kaapana_fhir.core.cohort.units import converter, unit_slug

#: a code.text that is used as the column name as it is (project convention: the table column header)
CLEAN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,39}$")
MAX_NAME = 60
SYSTEM_PREFIX = {"http://loinc.org": "loinc", "http://snomed.info/sct": "snomed", "http://unitsofmeasure.org": "ucum",
                 "http://hl7.org/fhir/sid/icd-10": "icd10", "http://hl7.org/fhir/sid/icd-10-cm": "icd10cm",
                 "http://www.nlm.nih.gov/research/umls/rxnorm": "rxnorm"}
_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: Any, limit: int = 40) -> str:
    s = _SLUG.sub("_", str(text or "").lower()).strip("_")
    return s[:limit].rstrip("_")


def system_prefix(system: Any) -> str:
    if not system:
        return "code"
    s = str(system)
    if s in SYSTEM_PREFIX:
        return SYSTEM_PREFIX[s]
    tail = [p for p in re.split(r"[/:#]", s) if p]
    return slug(tail[-1] if tail else s, 12) or "code"


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and v != v) and v != ""


@dataclass
class Variable:
    """One output column."""
    name: str
    label: str
    source: str  # observation | component | condition
    code_system: str | None
    code: str | None
    unit: str | None = None
    units_seen: list[str] = field(default_factory=list)
    converted: int = 0
    numeric: bool = False


@dataclass
class Variables:
    """Wide per-patient variable columns plus their dictionary."""
    wide: pd.DataFrame  # patient_key + one column per variable
    variables: list[Variable]
    conditions: pd.DataFrame  # patient_key, conditions, condition_codes

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    @property
    def units(self) -> dict[str, str]:
        return {v.name: v.unit for v in self.variables if v.unit}

    @property
    def labels(self) -> dict[str, str]:
        return {v.name: v.label for v in self.variables}


def _observations(clin: pd.DataFrame, comp: pd.DataFrame) -> pd.DataFrame:
    """Long rows: patient_key, ident, source, code_system, code, label, text, value_number, unit, value, effective."""
    parts = []
    for df, source in ((clin, "observation"), (comp, "component")):
        if df is None or df.empty:
            continue
        d = df[df["patient_key"].notna()].copy()
        if source == "observation" and "has_components" in d:
            # the components carry the values (blood pressure); a panel without own value adds no column
            own = d[["value_number", "value_text", "value_code"]].notna().any(axis=1)
            d = d[~(d["has_components"].fillna(False).astype(bool) & ~own)]
        if d.empty:
            continue
        for c in ("code_system", "code", "code_display", "code_text", "variable", "value_number", "value_unit",
                  "value_text", "value_code", "data_absent_reason", "effective"):
            if c not in d:
                d[c] = None
        text = d["code_text"].where(d["code_text"].notna(), None)
        if source == "observation":
            text = text.where(text.notna(), d["variable"].where(d["code"].isna(), None))
        d["text"] = text
        d["source"] = source
        parts.append(d[["patient_key", "source", "code_system", "code", "code_display", "text", "value_number",
                        "value_unit", "value_text", "value_code", "data_absent_reason", "effective"]])
    if not parts:
        return pd.DataFrame(columns=["patient_key", "source", "code_system", "code", "code_display", "text",
                                     "value_number", "value_unit", "value_text", "value_code", "data_absent_reason",
                                     "effective"])
    return pd.concat(parts, ignore_index=True)


def _ident(system: Any, code: Any, text: Any) -> tuple[str, str, str]:
    if _present(code):
        return ("code", str(system or ""), str(code))
    return ("text", "", str(text or ""))


def _code_name(system: str | None, code: str | None, label: str, unit: str | None) -> str:
    base = f"{system_prefix(system)}_{slug(code, 24)}" if code else slug(label, 40) or "variable"
    usuf = unit_slug(unit) if unit else ""
    words = slug(label, 60) if code else ""
    room = MAX_NAME - len(base) - (len(usuf) + 1 if usuf else 0) - 1
    name = base
    if words and room >= 3:
        name += "_" + words[:room].rstrip("_")
    if usuf:
        name += "_" + usuf
    return name[:MAX_NAME]


def build_variables(clin: pd.DataFrame, comp: pd.DataFrame, cond: pd.DataFrame,
                    reserved: set[str] | None = None) -> Variables:
    """The per-patient variable columns (see module doc); ``reserved``: names already used by other columns."""
    reserved_l = {r.lower() for r in (reserved or set())}
    obs = _observations(clin, comp)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, (s, c, t) in enumerate(zip(obs["code_system"], obs["code"], obs["text"], strict=True)):
        ident = _ident(s, c, t)
        if ident[2]:
            groups[ident].append(i)
    variables: list[Variable] = []
    cells: list[tuple[str, str, Any, Any]] = []  # (patient_key, name, value, effective)
    used: set[str] = set()

    def unique(name: str, ident_key: str) -> str:
        n = name
        if n.lower() in used or n.lower() in reserved_l:
            n = f"{name[:MAX_NAME - 9]}_{hashlib.sha256(ident_key.encode()).hexdigest()[:8]}"
        used.add(n.lower())
        return n

    for ident in sorted(groups):
        idx = groups[ident]
        g = obs.iloc[idx]
        texts = {str(t) for t in g["text"] if _present(t)}
        displays = [str(d) for d in g["code_display"] if _present(d)]
        label = (sorted(texts)[0] if len(texts) == 1 else (Counter(displays).most_common(1)[0][0] if displays
                                                               else (sorted(texts)[0] if texts else ident[2])))
        clean = len(texts) == 1 and bool(CLEAN_NAME.match(next(iter(texts))))
        system = ident[1] or None
        code = ident[2] if ident[0] == "code" else None
        source = "component" if (g["source"] == "component").all() else "observation"
        nums = g["value_number"].map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v)
        units = [str(u) for u, isnum in zip(g["value_unit"], nums, strict=True) if isnum and _present(u)]
        unit_counts = Counter(units)
        target = sorted(unit_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if unit_counts else None
        # unit → column (compatible units share the target's column)
        columns: dict[str | None, tuple[str, str | None]] = {}
        main_name = unique(next(iter(texts)) if clean else _code_name(system, code, label, target),
                           "|".join(ident))
        main = Variable(main_name, label, source, system, code, target, sorted(unit_counts), 0, bool(nums.any()))
        variables.append(main)
        columns[target] = (main_name, target)
        extra: dict[str, Variable] = {}
        for u in sorted(unit_counts):
            if u == target:
                continue
            if target is not None and converter(u, target) is not None:
                columns[u] = (main_name, target)
                continue
            nm = unique(f"{main_name}_{unit_slug(u) or 'unit'}"[:MAX_NAME], "|".join(ident) + "|" + u)
            extra[u] = Variable(nm, f"{label} [{u}]", source, system, code, u, [u], 0, True)
            columns[u] = (nm, u)
        main.units_seen = sorted(u for u, (nm, _t) in columns.items() if u is not None and nm == main_name)
        variables.extend(extra.values())
        for pk, num, isnum, unit, vt, vc, eff in zip(g["patient_key"], g["value_number"], nums, g["value_unit"],
                                                     g["value_text"], g["value_code"], g["effective"], strict=True):
            tunit: str | None
            if isnum:
                vu = str(unit) if _present(unit) else None
                col, tunit = columns.get(vu, (main_name, target)) if vu is not None else (main_name, target)
                val = float(num)
                if vu is not None and tunit is not None and vu != tunit:
                    f = converter(vu, tunit)
                    if f is not None:
                        val = f(val)
                        main.converted += 1
                cells.append((pk, col, val, eff))
            else:
                text = vt if _present(vt) else vc if _present(vc) else None
                if text is not None:
                    cells.append((pk, main_name, str(text), eff))
    # condition variables (project convention: a short code.text such as "Histology")
    cond_lists = pd.DataFrame(columns=["patient_key", "conditions", "condition_codes"])
    if cond is not None and not cond.empty:
        c = cond[cond["patient_key"].notna()].copy()
        for col in ("code_text", "code_display", "code", "code_system", "onset", "value_text", "variable"):
            if col not in c:
                c[col] = None
        c["label"] = [d if _present(d) else t if _present(t) else k if _present(k) else "(no code)"
                      for d, t, k in zip(c["code_display"], c["code_text"], c["code"], strict=True)]
        c["code_key"] = [f"{s or ''}|{k}" if _present(k) else None for s, k in zip(c["code_system"], c["code"],
                                                                                   strict=True)]
        c = c.sort_values(["patient_key", "onset"], na_position="last", kind="stable")
        rows = []
        for pk, g in c.groupby("patient_key", sort=True):
            labels = list(dict.fromkeys(str(x) for x in g["label"]))
            codes = list(dict.fromkeys(str(x) for x in g["code_key"] if _present(x)))
            rows.append({"patient_key": pk, "conditions": labels, "condition_codes": codes})
        if rows:
            cond_lists = pd.DataFrame(rows)
        named: dict[str, Variable] = {}
        for t, vt, d, pk, onset in zip(c["code_text"], c["value_text"], c["label"], c["patient_key"], c["onset"],
                                       strict=True):
            if not (_present(t) and CLEAN_NAME.match(str(t))):
                continue
            name = str(t)
            if name not in named:
                if name.lower() in used or name.lower() in reserved_l:
                    continue  # an Observation variable of the same name wins; the condition is in `conditions`
                named[name] = Variable(name, name, "condition", None, None)
            cells.append((pk, name, str(vt) if _present(vt) else str(d), onset))
        for v in named.values():
            used.add(v.name.lower())
            variables.append(v)
    if cells:
        long = pd.DataFrame(cells, columns=["patient_key", "variable", "value", "effective"])
        long = long.sort_values(["patient_key", "variable", "effective"], na_position="first", kind="stable")
        wide = long.groupby(["patient_key", "variable"], sort=False)["value"].last().unstack("variable")
        wide = wide.reset_index()
        wide.columns.name = None
    else:
        wide = pd.DataFrame(columns=["patient_key"])
    variables = [v for v in variables if v.name in wide.columns]
    for v in variables:
        present = wide[v.name].dropna()
        v.numeric = bool(len(present)) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                               for x in present)
        if v.numeric:
            wide[v.name] = pd.to_numeric(wide[v.name], errors="coerce").astype("float64")
        else:
            wide[v.name] = wide[v.name].map(lambda x: None if x is None or (isinstance(x, float) and x != x)
                                            else str(x)).astype("object")
    variables.sort(key=lambda v: v.name.lower())
    return Variables(wide[["patient_key"] + [v.name for v in variables]], variables, cond_lists)
