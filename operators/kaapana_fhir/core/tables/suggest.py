"""``kaapana-fhir mapping init``: profile a table and suggest a mapping (pure).

**Profile** (:func:`profile_table`): per column the value type (integer, decimal, date, boolean, categorical,
text, empty), the share of missing cells, the number of distinct values and a few examples, over the first
:data:`MAX_PROFILE_ROWS` rows.

**Patient key**: only a column that is *unique and never empty* can be the key; among several, one whose name
looks like an id (``id``, ``patient``, ``pid``, ``record``, ``pseudonym``...) wins. When there is none, the
mapping offers a generated key explicitly (``key_generated: row-number``: one Patient per row, identifier system
scoped to this file) with a ``review`` marker that names the alternatives: a pair of columns that is unique
together (``key_columns``), or an id-like column that repeats (a long table with several rows per patient:
``key`` + ``instance_columns``).

**Codes** come from the shipped catalogue (``data/catalog/clinical_variables.yaml``: LOINC, UCUM, package codes),
matched by column name (English and German), unit in the header or cells, and values. Every suggestion carries a
``review`` marker; columns without a catalogue match get ``TODO`` codes. The import refuses the mapping until every
``TODO`` and ``review`` is gone (:func:`kaapana_fhir.core.tables.engine.check_ready`), so a generated mapping is
never silently final.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from itertools import combinations
from typing import Any

import yaml

from kaapana_fhir.core.limits import loads_yaml
from kaapana_fhir.core.tables import values as V
from kaapana_fhir.core.tables.mapping import slug
from kaapana_fhir.core.tables.reader import Table
from kaapana_fhir.core.tables.units import COMMON_UNITS, guess_ucum, unit_from_label

MAX_PROFILE_ROWS = 100_000
MAX_DISTINCT = 10_000
MAX_CATEGORIES = 12
_ID_NAME = re.compile(r"(^|[^a-z])(id|pid|patient|patientid|record|subject|pseudonym|case|fall|mrn|pat)([^a-z]|$)|id$",
                      re.I)


@dataclass
class ColumnProfile:
    name: str
    rows: int = 0
    missing: int = 0
    distinct: set[str] = field(default_factory=set)
    overflow: bool = False
    examples: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    unit_suffixes: dict[str, int] = field(default_factory=dict)

    @property
    def missing_share(self) -> float:
        return self.missing / self.rows if self.rows else 1.0

    @property
    def n_distinct(self) -> int:
        return len(self.distinct)

    @property
    def unique(self) -> bool:
        return not self.overflow and self.missing == 0 and self.rows > 0 and len(self.distinct) == self.rows

    @property
    def kind(self) -> str:
        """empty, boolean, integer, decimal, date, categorical (few distinct values) or text."""
        filled = self.rows - self.missing
        if filled == 0:
            return "empty"
        k = self.kinds
        few = not self.overflow and len(self.distinct) <= MAX_CATEGORIES
        if k.get("boolean", 0) == filled:
            return "boolean"
        if k.get("integer", 0) == filled:
            small = few and len(self.distinct) <= 6 and all(d.lstrip("-").isdigit() and abs(int(d)) <= 10
                                                           for d in self.distinct)
            return "categorical" if small else "integer"
        if k.get("integer", 0) + k.get("decimal", 0) == filled:
            return "decimal"
        if k.get("date", 0) == filled:
            return "date"
        return "categorical" if few else "text"

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.name, "type": self.kind, "missing_share": round(self.missing_share, 3),
                "distinct": f">{MAX_DISTINCT}" if self.overflow else len(self.distinct),
                "examples": self.examples[:3], "unique": self.unique}


_NUM_SUFFIX = re.compile(r"^\s*([+-]?[0-9][0-9.,]*)\s*([^\d\s.,+-][^\d]{0,15})$")


def _classify(v: str) -> list[str]:
    out = []
    m = _NUM_SUFFIX.match(v)
    try:
        d = V.parse_decimal(m.group(1) if m else v)
        out.append("integer" if d == d.to_integral_value() else "decimal")
    except V.CellError:
        pass
    if not out:
        try:
            V.parse_date(v)
            out.append("date")
        except V.CellError:
            pass
    if v.strip().lower() in ("yes", "no", "true", "false", "ja", "nein", "y", "n"):
        out.append("boolean")
    return out


def profile_table(table: Table, *, max_rows: int = MAX_PROFILE_ROWS) -> tuple[list[ColumnProfile], int]:
    """Column profiles of the first ``max_rows`` data rows (and the number of rows profiled)."""
    na = frozenset(V.DEFAULT_NA_VALUES)
    cols = [h for h in table.header if h]
    prof = {h: ColumnProfile(h) for h in cols}
    n = 0
    for _, row in table.rows():
        if n >= max_rows:
            break
        if all(V.is_na(row.get(h), na) for h in cols):
            continue
        n += 1
        for h in cols:
            p = prof[h]
            p.rows += 1
            raw = row.get(h)
            if V.is_na(raw, na):
                p.missing += 1
                continue
            iso = getattr(raw, "isoformat", None)
            v = str(iso()) if callable(iso) else str(raw).strip()
            if not p.overflow:
                if v not in p.distinct and len(p.examples) < 3:
                    p.examples.append(v[:40])
                p.distinct.add(v)
                if len(p.distinct) > MAX_DISTINCT:
                    p.overflow = True
            for k in (["date"] if hasattr(raw, "isoformat") else _classify(v)):
                p.kinds[k] = p.kinds.get(k, 0) + 1
            m = _NUM_SUFFIX.match(v)
            if m:
                p.unit_suffixes[m.group(2).strip()] = p.unit_suffixes.get(m.group(2).strip(), 0) + 1
    return [prof[h] for h in cols], n


@lru_cache(maxsize=1)
def catalogue() -> list[dict[str, Any]]:
    """The shipped code catalogue (``data/catalog/clinical_variables.yaml``)."""
    text = resources.files("kaapana_fhir").joinpath("data", "catalog", "clinical_variables.yaml").read_text("utf-8")
    return list(loads_yaml(text, source="catalogue clinical_variables.yaml")["variables"])


def norm_name(name: str) -> str:
    """``Alter (Jahre)`` → ``alter``; ``clinical.T.Stage`` → ``clinical t stage``."""
    t = re.sub(r"[\(\[][^()\[\]]*[\)\]]\s*$", "", str(name)).strip().lower()
    t = re.sub(r"([a-z])([A-Z])", r"\1 \2", t)
    return re.sub(r"[^0-9a-zäöüß]+", " ", t).strip()


#: answers that say nothing about what a column means: a column holding only these (``yes``/``no``) is matched by
#: its name, never by its values alone (a hormone-therapy yes/no column is not a vital status)
_GENERIC_ANSWERS = frozenset({"yes", "no", "y", "n", "true", "false", "t", "f", "ja", "nein", "j", "oui", "non",
                              "si", "unknown", "unk", "na", "n/a"})


def match_catalogue(profile: ColumnProfile) -> dict[str, Any] | None:
    """The catalogue entry for a column (by name; ties broken by unit and values), or None."""
    name = norm_name(profile.name)
    compact = name.replace(" ", "")
    best: tuple[int, dict[str, Any]] | None = None
    for entry in catalogue():
        score = 0
        for alias in entry["names"]:
            a = norm_name(alias)
            if name == a or compact == a.replace(" ", ""):
                score = max(score, 100 + len(a))
            elif len(a) >= 4 and re.search(rf"(^| ){re.escape(a)}( |$)", name):
                score = max(score, 50 + len(a))
        vals = {v.lower() for v in profile.distinct} if not profile.overflow else set()
        if not score and entry.get("values") and len(vals) >= 2 and not any(v.isdigit() for v in vals) \
                and vals - _GENERIC_ANSWERS and vals <= {str(k).lower() for k in entry["values"]}:
            score = 40  # matched by its values alone (e.g. a 'Status' column holding alive/dead)
        if not score:
            continue
        if entry.get("values") and vals and vals <= {str(k).lower() for k in entry["values"]}:
            score += 20
        if entry.get("answers") and vals:
            known = {str(x).lower() for a in entry["answers"].values() for x in a.get("values", [])}
            if vals <= known:
                score += 20
        if (entry["value"]["type"] if "value" in entry else "") in ("Quantity", "integer") \
                and profile.kind not in ("integer", "decimal", "empty"):
            score -= 60
        if best is None or score > best[0]:
            best = (score, entry)
    return best[1] if best and best[0] > 0 else None


def _unit_of(p: ColumnProfile) -> str | None:
    u = unit_from_label(p.name)
    if u:
        return u
    if p.unit_suffixes:
        common = max(p.unit_suffixes, key=lambda k: p.unit_suffixes[k])
        return guess_ucum(common)
    return None


def _observation(p: ColumnProfile, entry: dict[str, Any] | None) -> dict[str, Any]:
    distinct = sorted(p.distinct)
    unit = _unit_of(p)
    if entry is None:
        code: Any = {"system": "TODO", "code": "TODO", "display": p.name}
        if p.kind in ("integer", "decimal"):
            value: dict[str, Any] = {"type": "Quantity", "unit": unit} if unit else {"type": p.kind}
        elif p.kind == "date":
            value = {"type": "dateTime"}
        elif p.kind == "boolean":
            value = {"type": "boolean"}
        elif p.kind == "categorical":
            value = {"type": "CodeableConcept", "system": "TODO",
                     "map": {d: {"code": "TODO", "display": d} for d in distinct}}
        else:
            value = {"type": "string"}
        return {"column": p.name, "code": code, "value": value}
    value = dict(entry["value"])
    code = dict(entry["code"])
    review = f"catalogue suggestion {entry['id']!r} (matched by column name)"
    if value["type"] == "Quantity":
        cat_unit = value["unit"]
        if unit and unit != cat_unit:
            value["unit"] = unit
            review += f"; unit {unit!r} from the header/cells instead of the usual {cat_unit!r}"
        elif not unit:
            review += f"; no unit in the header or cells: unit {cat_unit!r} assumed"
        value.pop("min", None) if value.get("unit") != cat_unit else None
        value.pop("max", None) if value.get("unit") != cat_unit else None
        aliases = sorted({s for s in p.unit_suffixes if s != value["unit"]})
        if aliases:
            value["unit_aliases"] = aliases
    if entry.get("answers"):
        amap: dict[str, Any] = {}
        for d in distinct:
            hit = next((c for c, a in entry["answers"].items()
                        if d.lower() in {str(x).lower() for x in a.get("values", [])}), None)
            amap[d] = {"code": hit, "display": entry["answers"][hit]["display"]} if hit else \
                {"code": "TODO", "display": d}
        value["map"] = amap
    elif value["type"] == "CodeableConcept" and value.get("unmapped") == "text":
        review += "; values are kept as text (no free code set shipped): add a map with codes if you have them"
    return {"column": p.name, "code": code, "value": value, "review": review}


def _key(profiles: list[ColumnProfile], table: Table, nrows: int) -> tuple[dict[str, Any], list[str]]:
    # a key is unique and never empty; numbers, dates and known clinical variables only if the name says "id"
    unique = [p for p in profiles if p.unique and (_ID_NAME.search(p.name) or (
        p.kind in ("text", "categorical") and match_catalogue(p) is None))]
    notes: list[str] = []
    idlike_unique = [p for p in unique if _ID_NAME.search(p.name)]
    if unique:
        chosen = (idlike_unique or unique)[0]
        others = [p.name for p in unique if p is not chosen]
        pat: dict[str, Any] = {"key": chosen.name}
        if not idlike_unique or others:
            pat["review"] = (f"key {chosen.name!r} is unique and never empty in {nrows} rows"
                             + (f"; other candidates: {others}" if others else "")
                             + ("; its name does not look like an identifier" if not idlike_unique else ""))
        return pat, notes
    # no unique column: offer a generated key explicitly
    alts = []
    idlike = [p for p in profiles if _ID_NAME.search(p.name) and p.missing == 0 and not p.unique]
    for p in idlike:
        alts.append(f"key: {p.name} with instance_columns (it repeats: {p.n_distinct} values in {nrows} rows, "
                    "several rows per patient?)")
    cands = [p.name for p in profiles if p.missing == 0 and p.n_distinct > 1 and (
        _ID_NAME.search(p.name) or (p.kind in ("text", "categorical", "integer") and match_catalogue(p) is None))][:8]
    seen: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for pair in combinations(cands, 2):
        seen[pair] = set()
    if seen:
        na = frozenset(V.DEFAULT_NA_VALUES)
        count = 0
        for _, row in table.rows():
            if count >= nrows:
                break
            if all(V.is_na(row.get(h), na) for h in table.header if h):
                continue
            count += 1
            for pair, vals in seen.items():
                vals.add(tuple(str(row.get(c)).strip() for c in pair))
        for pair, vals in seen.items():
            if len(vals) == count:
                alts.append(f"key_columns: [{pair[0]}, {pair[1]}] (unique together)")
                break
    pat = {"key_generated": "row-number",
           "review": "no column is unique and non-empty, so each row becomes its own Patient numbered by row in a "
                     "file-scoped identifier system (re-importing a re-sorted file changes the patients!)"
                     + (f"; alternatives: {'; '.join(alts)}" if alts else "")}
    notes.append("no unique non-empty column: generated key offered")
    return pat, notes


LOCAL_SYSTEM = "urn:kaapana-fhir:CodeSystem:local:"
_FHIR_CODE = re.compile(r"[^\s]+( [^\s]+)*")


def local_system(mapping_name: str, column: str | None = None) -> str:
    """The project-local code system of a mapping (``column``: of that column's answers)."""
    return LOCAL_SYSTEM + mapping_name + (f":{slug(column)}" if column is not None else "")


def _local_codes(observations: list[dict[str, Any]], name: str) -> None:
    """Fill the ``TODO`` codes of columns without a catalogue match with codes of a local code system: the column
    (its slug, unique in the mapping) and, for coded answers, the cell value itself (a valid FHIR code) or its slug."""
    used: set[str] = set()
    for o in observations:
        if o["code"].get("system") != "TODO":
            continue
        base = slug(o["column"])
        code, n = base, 2
        while code in used:
            code, n = f"{base}-{n}", n + 1
        used.add(code)
        o["code"] = {"system": local_system(name), "code": code, "display": o["column"]}
        value = o["value"]
        if value.get("type") == "CodeableConcept" and value.get("system") == "TODO":
            value["system"] = local_system(name, code)
            value["map"] = {k: {"code": k if _FHIR_CODE.fullmatch(k) else slug(k), "display": v.get("display", k)}
                            for k, v in value["map"].items()}


def suggest_mapping(table: Table, *, profiles: list[ColumnProfile] | None = None,
                    nrows: int | None = None, local_codes: bool = False) -> dict[str, Any]:
    """A mapping dict for ``table`` with catalogue suggestions (``review``) and ``TODO`` codes (schema-valid).
    ``local_codes``: columns the catalogue does not know get codes of a project-local code system
    (:func:`local_system`) instead of ``TODO``, so only the catalogue's suggestions remain to review."""
    if profiles is None or nrows is None:
        profiles, nrows = profile_table(table)
    patient, _ = _key(profiles, table, nrows)
    key_cols = {patient.get("key")}
    observations = []
    for p in profiles:
        if p.name in key_cols or p.kind == "empty":
            continue
        entry = match_catalogue(p)
        target = (entry or {}).get("target")
        if target == "patient.gender" and "gender" not in patient:
            gmap = {d: entry["values"].get(d.lower(), "TODO") for d in sorted(p.distinct)}  # type: ignore[index]
            patient["gender"] = {"column": p.name, "map": gmap,
                                 "review": f"sex/gender from column {p.name!r}: check the value map"}
            continue
        if target == "patient.birth_date" and "birth_date" not in patient and p.kind == "date":
            patient["birth_date"] = {"column": p.name, "review": f"birth date from column {p.name!r}"}
            continue
        if target == "patient.deceased" and "deceased" not in patient:
            dmap = {d: entry["values"].get(d.lower(), "TODO") for d in sorted(p.distinct)}  # type: ignore[index]
            patient["deceased"] = {"column": p.name, "map": dmap,
                                   "review": f"vital status from column {p.name!r}: true = died; null = alive or "
                                             "censored (false would assert 'alive')"}
            continue
        if target:
            entry = None
        observations.append(_observation(p, entry))
    name = slug(table.name.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    if local_codes:
        _local_codes(observations, name)
    return {"version": 1, "name": name, "source": {"format": "auto"}, "patient": patient,
            "observations": observations, "conditions": []}


def profile_report(profiles: list[ColumnProfile], nrows: int) -> str:
    """The profile as a short text table (also written as comments at the top of the YAML)."""
    lines = [f"profile of {nrows} data rows:",
             f"{'column':<28} {'type':<12} {'missing':>8} {'distinct':>9}  examples"]
    for p in profiles:
        d = p.as_dict()
        lines.append(f"{p.name[:28]:<28} {d['type']:<12} {d['missing_share']:>8.1%} {str(d['distinct']):>9}  "
                     f"{', '.join(d['examples'])[:50]}{'  (unique)' if p.unique else ''}")
    return "\n".join(lines)


def to_yaml(mapping: dict[str, Any], *, report: str = "", notes: list[str] | None = None) -> str:
    head = ("# kaapana-fhir table mapping, generated by `kaapana-fhir mapping init`.\n"
            "# Fill in every TODO and check every `review:` suggestion, then delete that `review:` line;\n"
            "# `import-table` refuses the mapping until none is left. Reference: docs/mapping-reference.md\n")
    for line in (report.splitlines() if report else []):
        head += f"#   {line}\n"
    for n in notes or []:
        head += f"# note: {n}\n"
    return head + yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True, width=120)


__all__ = ["COMMON_UNITS", "LOCAL_SYSTEM", "ColumnProfile", "catalogue", "local_system", "match_catalogue",
           "profile_report", "profile_table", "suggest_mapping", "to_yaml"]
