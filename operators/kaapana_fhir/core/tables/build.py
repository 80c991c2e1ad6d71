"""Mapping table rows to FHIR R4 Patient / Observation / Condition (pure; no I/O).

Ids are deterministic (:mod:`kaapana_fhir.core.ids`):

* ``Patient.id = patient_id(patient.identifier_system, <key cell>)`` (the same function as DICOM);
* ``Observation.id = stable_id("Observation", <Patient.id>, <column>, <effective time>, <instance key>)``;
* ``Condition.id = stable_id("Condition", <Patient.id>, <condition name>, <onset>, <instance key>)``;

so importing the same file twice changes nothing and a corrected file updates the changed resources.
**Rows that disappear from a later version of a file, and cells that become NA, are not deleted**:
resources already written stay on the server until someone deletes them on purpose (an import never
deletes clinical data it cannot see).

Conventions (:mod:`kaapana_fhir.core.codes`): ``code.text`` = the source variable name, ``meta.tag`` =
``{TAG_SOURCE, "clinical-table"}``. Paths written: ``Patient.identifier/gender/birthDate/deceasedBoolean``,
``Observation.status/category/code/subject/effectiveDateTime/value[x]/dataAbsentReason/component``,
``Condition.clinicalStatus/verificationStatus/category/code/subject/onsetDateTime/stage.summary`` and
the mCODE histology-morphology-behavior extension.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kaapana_fhir.core import codes
from kaapana_fhir.core.ids import normalize_patient_value, patient_id, stable_id
from kaapana_fhir.core.patient import with_sources
from kaapana_fhir.core.tables import values as V
from kaapana_fhir.core.tables.units import ucum_problem
from kaapana_fhir.exceptions import MappingError

TAG = {"system": codes.TAG_SOURCE, "code": "clinical-table"}
HISTOLOGY_EXT = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
ABSENT = {"coding": [{"system": codes.DATA_ABSENT_REASON, "code": "unknown", "display": "Unknown"}]}
_MISSING = object()


@dataclass(frozen=True)
class RowIssue:
    """One rejected cell: 1-based row (header = 1), column, raw value and the broken rule."""

    row: int
    column: str
    value: str
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "value": self.value[:200], "rule": self.rule}


@dataclass
class MappedRow:
    patient_key: str
    patient_id: str
    patient_fields: dict[str, Any]
    resources: list[dict[str, Any]]
    instance: str
    digest: bytes
    retractions: list[dict[str, Any]] = field(default_factory=list)


def _coding(spec: dict[str, Any], default_system: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {}
    system = spec.get("system") or default_system
    if system:
        c["system"] = system
    c["code"] = str(spec["code"])
    if spec.get("display"):
        c["display"] = spec["display"]
    return c


def codeable(code: Any, text: str) -> dict[str, Any]:
    items = code if isinstance(code, list) else [code]
    return {"coding": [_coding(c) for c in items], "text": text}


def _num(d: Decimal) -> int | float:
    return int(d) if d == d.to_integral_value() and abs(d) < 2**53 else float(d)


class TableMapper:
    """Binds a validated mapping (:func:`~kaapana_fhir.core.tables.mapping.load_mapping`) to a header."""

    def __init__(self, mapping: dict[str, Any], *, table_name: str = "table") -> None:
        self.m = mapping
        self.name = table_name
        #: recorded on the demographics this table sets (:func:`kaapana_fhir.core.patient.with_sources`)
        self.source = f"table:{table_name}"
        src = mapping.get("source", {})
        self.na = frozenset(v.strip().lower() for v in (src.get("na_values") or V.DEFAULT_NA_VALUES))
        self.date_order = src.get("date_order", "dmy")
        self.system = mapping["patient"]["identifier_system"]
        self.cols: dict[str, str] = {}
        checks = mapping.get("checks") or {}
        self.date_min = _window(checks.get("date_min", "1900-01-01"))
        self.date_max = _window(checks.get("date_max", "today"))
        self.empty_cells = mapping.get("empty_cells", "keep")

    @property
    def key_label(self) -> str:
        """The patient key as named in reports: its column, the joined key columns or ``(row number)``."""
        pm = self.m["patient"]
        return pm.get("key") or "+".join(pm.get("key_columns") or []) or "(row number)"

    # ------------------------------------------------------------------ header
    def wanted_columns(self) -> list[tuple[str, str]]:
        """(mapping key path, column name) of every column the mapping reads."""
        m = self.m
        pm = m["patient"]
        out = [("patient.key", pm["key"])] if pm.get("key") else \
            [(f"patient.key_columns[{i}]", c) for i, c in enumerate(pm.get("key_columns") or [])]
        for k in ("gender", "birth_date", "deceased"):
            if m["patient"].get(k):
                out.append((f"patient.{k}.column", m["patient"][k]["column"]))
        out += [(f"instance_columns[{i}]", c) for i, c in enumerate(m.get("instance_columns", []))]
        if (m.get("effective") or {}).get("column"):
            out.append(("effective.column", m["effective"]["column"]))
        for i, o in enumerate(m["observations"]):
            out.append((f"observations[{i}].column", o["column"]))
            if o.get("code_from"):
                out.append((f"observations[{i}].code_from.column", o["code_from"]["column"]))
            if o["value"].get("unit_column"):
                out.append((f"observations[{i}].value.unit_column", o["value"]["unit_column"]))
            out += [(f"observations[{i}].components[{j}].column", c["column"]) for j, c in enumerate(o.get(
                "components", []))]
            if (o.get("effective") or {}).get("column"):
                out.append((f"observations[{i}].effective.column", o["effective"]["column"]))
        for i, c in enumerate(m["conditions"]):
            for k in ("stage", "histology"):
                if c.get(k):
                    out.append((f"conditions[{i}].{k}.column", c[k]["column"]))
            if c.get("when_column"):
                out.append((f"conditions[{i}].when_column", c["when_column"]))
            if (c.get("onset") or {}).get("column"):
                out.append((f"conditions[{i}].onset.column", c["onset"]["column"]))
        return out

    def bind(self, header: list[str], *, delimiter: str | None = None) -> None:
        """Resolve mapping columns to header names (case-insensitive); a missing column is fatal."""
        by_lower: dict[str, str] = {}
        for h in header:
            by_lower.setdefault(h.strip().lower(), h)
        missing = []
        for key, col in self.wanted_columns():
            real = by_lower.get(col.strip().lower())
            if real is None:
                missing.append(f"column {col!r} ({key})")
            else:
                self.cols[col] = real
        if missing:
            hint = ""
            if len(header) == 1 and any(d in header[0] for d in ",;\t|"):
                hint = (f"; the header is a single column {header[0][:80]!r}: wrong delimiter "
                        f"{delimiter!r}? (rule: source.delimiter)")
            raise MappingError(f"{self.name}: row 1: {', '.join(missing)} not found in header {header[:20]}"
                               f"{hint} (rule: every mapped column must exist)")

    # ------------------------------------------------------------------ cells
    def _raw(self, row: dict[str, Any], col: str) -> Any:
        v = row.get(self.cols[col])
        return None if V.is_na(v, self.na) else v

    def _lookup(self, spec: dict[str, Any], raw: Any) -> Any:
        table = spec.get("map") or {}
        keyed = {V.map_key(k): v for k, v in table.items()}
        hit = keyed.get(V.map_key(raw), _MISSING)
        if hit is not _MISSING:
            return hit
        mode = spec.get("unmapped", "error")
        if mode == "text":
            return {"__text__": str(raw).strip()}
        if mode == "code":
            return {"code": str(raw).strip()}
        if mode == "absent":
            return None
        allowed = ", ".join(list(table)[:12])
        raise V.CellError(f"value not in value map (allowed: {allowed})")

    def _concept(self, spec: dict[str, Any], raw: Any, text_default: str | None = None) -> dict[str, Any] | None:
        hit = self._lookup(spec, raw)
        if hit is None:
            return None
        if isinstance(hit, dict) and "__text__" in hit:
            return {"text": hit["__text__"]}
        coding = _coding(hit if isinstance(hit, dict) else {"code": hit}, spec.get("system"))
        return {"coding": [coding], "text": str(raw).strip()}

    def value(self, spec: dict[str, Any], raw: Any) -> tuple[str, Any]:
        """(FHIR value[x] element name, value) for one cell; ``("dataAbsentReason", ...)`` for mapped absence."""
        t = spec["type"]
        if t in ("Quantity", "decimal", "integer"):
            d = V.parse_decimal(raw, unit=spec.get("unit"), aliases=tuple(spec.get("unit_aliases", ())))
            if t == "integer" and d != d.to_integral_value():
                raise V.CellError("not an integer")
            if "min" in spec and d < Decimal(str(spec["min"])):
                raise V.CellError(f"below minimum {spec['min']}")
            if "max" in spec and d > Decimal(str(spec["max"])):
                raise V.CellError(f"above maximum {spec['max']}")
            if t == "integer":
                return "valueInteger", int(d)
            q: dict[str, Any] = {"value": _num(d)}
            if spec.get("unit"):
                q.update(unit=spec["unit"], system=spec.get("unit_system", codes.UCUM),
                         code=spec.get("unit_code") or spec["unit"])
            return "valueQuantity", q
        if t == "boolean":
            if spec.get("map"):
                hit = self._lookup(spec, raw)
                if hit is None:
                    return "dataAbsentReason", ABSENT
                return "valueBoolean", bool(hit) if isinstance(hit, bool) else V.parse_boolean(str(hit))
            return "valueBoolean", V.parse_boolean(str(raw))
        if t == "dateTime":
            return "valueDateTime", self.date(raw)
        if t == "CodeableConcept":
            cc = self._concept(spec, raw)
            return ("dataAbsentReason", ABSENT) if cc is None else ("valueCodeableConcept", cc)
        text = str(raw)
        if not text.strip():
            raise V.CellError("empty string")
        return "valueString", text  # formula-like text is kept verbatim, never evaluated

    def _when(self, spec: dict[str, Any] | None, row: dict[str, Any]) -> str:
        spec = spec or self.m.get("effective") or {}
        if spec.get("column"):
            raw = self._raw(row, spec["column"])
            return "" if raw is None else self.date(raw)
        return V.parse_date(spec["date"]) if spec.get("date") else ""

    def date(self, raw: Any) -> str:
        """A FHIR date/dateTime from a cell, inside the plausible window (``checks.date_min``/``date_max``)."""
        text = V.parse_date(raw, date_order=self.date_order)
        day = text[:10]
        lo, hi = self.date_min.isoformat(), self.date_max.isoformat()
        # partial dates (YYYY, YYYY-MM) compare on their own precision
        if day < lo[:len(day)]:
            raise V.CellError(f"date {text} is before {lo} (rule: plausible dates, checks.date_min)")
        if day > hi[:len(day)]:
            raise V.CellError(f"date {text} is after {hi} (rule: plausible dates, checks.date_max)")
        return text

    # ------------------------------------------------------------------ rows
    def map_row(self, rownum: int, row: dict[str, Any]) -> tuple[MappedRow | None, list[RowIssue]]:
        """Map one row; returns (mapped row or None, issues). Any issue means the row is invalid."""
        issues: list[RowIssue] = []

        reported: set[str] = set()

        def bad(col: str, raw: Any, rule: str) -> None:
            real = self.cols.get(col, col)
            if real in reported:  # one error per cell, even when several resources read it
                return
            reported.add(real)
            issues.append(RowIssue(rownum, real, "" if raw is None else str(raw), rule))

        if row.get("__extra__"):
            bad("(row)", "|".join(map(str, row["__extra__"]))[:200],
                "more cells than header columns (wrong delimiter or unquoted field?)")
            return None, issues
        pm = self.m["patient"]
        if pm.get("key_generated") == "row-number":
            key_raw: Any = str(rownum)
            key_col = "(row number)"
        elif pm.get("key_columns"):
            parts = [self._raw(row, c) for c in pm["key_columns"]]
            key_col = pm["key_columns"][parts.index(None)] if None in parts else pm["key_columns"][0]
            key_raw = None if None in parts else "|".join(str(p).strip() for p in parts)
        else:
            key_col = pm["key"]
            key_raw = row.get(self.cols[key_col])
        try:
            pkey = normalize_patient_value(key_raw if not V.is_na(key_raw, self.na) else "")
        except MappingError:
            bad(key_col, key_raw, "patient key is missing (rule: the patient key is required in every row)")
            return None, issues
        pid = patient_id(self.system, pkey)
        subject = {"reference": f"Patient/{pid}"}
        pf: dict[str, Any] = {}
        for fld, out in (("gender", "gender"), ("deceased", "deceasedBoolean")):
            spec = pm.get(fld)
            raw = self._raw(row, spec["column"]) if spec else None
            if raw is None:
                continue
            try:
                hit = self._lookup(spec, raw) if spec.get("map") else raw
                if fld == "gender":
                    hit = None if hit is None else str(hit).strip().lower()
                    if hit is not None and hit not in ("male", "female", "other", "unknown"):
                        raise V.CellError("gender must map to male, female, other or unknown")
                elif hit is not None and not isinstance(hit, bool):
                    hit = V.parse_boolean(str(hit))
                if hit is not None:
                    pf[out] = hit
            except V.CellError as exc:
                bad(spec["column"], raw, exc.rule)
        if pm.get("birth_date"):
            raw = self._raw(row, pm["birth_date"]["column"])
            if raw is not None:
                try:
                    pf["birthDate"] = self.date(raw)[:10]
                except V.CellError as exc:
                    bad(pm["birth_date"]["column"], raw, exc.rule)
        instance = "|".join(str(self._raw(row, c) or "") for c in self.m.get("instance_columns", []))
        resources: list[dict[str, Any]] = []
        retractions: list[dict[str, Any]] = []
        for obs in self.m["observations"]:
            res = self._observation(obs, row, pid, subject, instance, bad)
            if res:
                resources.append(res)
            elif obs.get("empty_cells", self.empty_cells) == "retract" and self._raw(row, obs["column"]) is None:
                gone = self._retraction(obs, row, pid, subject, instance)
                if gone:
                    retractions.append(gone)
        for cond in self.m["conditions"]:
            res = self._condition(cond, row, pid, subject, instance, bad)
            if res:
                resources.append(res)
        if issues:
            return None, issues
        h = hashlib.blake2b(digest_size=8)
        for r in resources:
            h.update(repr(sorted((k, repr(v)) for k, v in r.items())).encode())
        return MappedRow(pkey, pid, pf, resources, instance, h.digest(), retractions), []

    def _retraction(self, obs: dict[str, Any], row: dict[str, Any], pid: str, subject: dict[str, str],
                    instance: str) -> dict[str, Any] | None:
        """The Observation an emptied cell would have had, as ``status: entered-in-error`` (``empty_cells:
        retract``); written only if it exists on the server. None when its id cannot be known (the date cell or
        the ``code_from`` cell is empty too)."""
        if obs.get("code_from") or not obs.get("code"):
            return None
        try:
            when = self._when(obs.get("effective"), row)
        except V.CellError:
            return None
        if (obs.get("effective") or self.m.get("effective") or {}).get("column") and not when:
            return None
        return {"resourceType": "Observation", "id": stable_id("Observation", pid, obs["column"], when, instance),
                "meta": {"tag": [dict(TAG)]}, "status": "entered-in-error",
                "code": codeable(obs["code"], obs["column"]), "subject": subject}

    def _unit(self, spec: dict[str, Any], row: dict[str, Any], bad: Any) -> dict[str, Any] | None:
        """The value spec with this row's unit (``value.unit_column`` + ``unit_map``, UCUM-checked)."""
        if not spec.get("unit_column"):
            return spec
        ucol = spec["unit_column"]
        uraw = self._raw(row, ucol)
        if uraw is None:
            if spec.get("unit"):
                return spec
            bad(ucol, None, "unit is missing for a measured value (rule: value.unit_column)")
            return None
        text = str(uraw).strip()
        umap = {k.strip().lower(): v for k, v in (spec.get("unit_map") or {}).items()}
        code = umap.get(text.lower(), text)
        if spec.get("unit_system", codes.UCUM) == codes.UCUM:
            problem = ucum_problem(code)
            if problem:
                bad(ucol, uraw, f"{problem}; add it to value.unit_map")
                return None
        return {**spec, "unit": code, "unit_code": code, "unit_aliases": [*spec.get("unit_aliases", ()), text, code]}

    def _observation(self, obs: dict[str, Any], row: dict[str, Any], pid: str, subject: dict[str, str],
                     instance: str, bad: Any) -> dict[str, Any] | None:
        col = obs["column"]
        raw = self._raw(row, col)
        if raw is None:
            if obs.get("required"):
                bad(col, None, "value is required (rule: observations.required)")
            return None
        code: dict[str, Any] | None = codeable(obs["code"], col) if obs.get("code") else None
        variant = ""
        if obs.get("code_from"):
            cf = obs["code_from"]
            craw = self._raw(row, cf["column"])
            if craw is None:
                bad(cf["column"], None, f"the measurement in {col!r} has no test/assay name "
                                        "(rule: observations.code_from)")
                return None
            try:
                cc = self._concept(cf, craw)
            except V.CellError as exc:
                bad(cf["column"], craw, exc.rule)
                return None
            if cc is None:
                return None
            variant = str(craw).strip()
            shown = next((c["display"] for c in cc.get("coding", []) if c.get("display")), variant)
            code = {"coding": [*cc.get("coding", []), *(code or {}).get("coding", [])], "text": shown}
        spec = self._unit(obs["value"], row, bad)
        if spec is None or code is None:
            return None
        try:
            vkey, val = self.value(spec, raw)
        except V.CellError as exc:
            bad(col, raw, exc.rule)
            return None
        try:
            when = self._when(obs.get("effective"), row)
        except V.CellError as exc:  # the date cell is at fault, reported once for all its Observations
            ecol = (obs.get("effective") or self.m.get("effective") or {}).get("column") or "effective.date"
            bad(ecol, self._raw(row, ecol) if ecol in self.cols else None, exc.rule)
            return None
        parts = (pid, col, when, instance, variant) if variant else (pid, col, when, instance)
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": stable_id("Observation", *parts),
            "meta": {"tag": [dict(TAG)]}, "status": "final"}
        cat = obs.get("category") or self.m.get("category")
        if cat:
            res["category"] = [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": cat}]}]
        res["code"] = code
        res["subject"] = subject
        if when:
            res["effectiveDateTime"] = when
        res[vkey] = val
        comps = []
        for comp in obs.get("components", []):
            craw = self._raw(row, comp["column"])
            if craw is None:
                continue
            try:
                ck, cv = self.value(comp["value"], craw)
            except V.CellError as exc:
                bad(comp["column"], craw, exc.rule)
                continue
            comps.append({"code": codeable(comp["code"], comp["column"]), ck: cv})
        if comps:
            res["component"] = comps
        return res

    def _condition(self, cond: dict[str, Any], row: dict[str, Any], pid: str, subject: dict[str, str],
                   instance: str, bad: Any) -> dict[str, Any] | None:
        if cond.get("when_column") and self._raw(row, cond["when_column"]) is None:
            return None
        try:
            onset = self._when(cond.get("onset") or {"date": None}, row) if cond.get("onset") else ""
        except V.CellError as exc:
            col = cond["onset"].get("column", "onset")
            bad(col, self._raw(row, col) if col in self.cols else None, exc.rule)
            return None
        text = cond.get("when_column") or (cond.get("histology") or {}).get("column") or cond["name"]
        res: dict[str, Any] = {
            "resourceType": "Condition", "id": stable_id("Condition", pid, cond["name"], onset, instance),
            "meta": {"tag": [dict(TAG)]},
            "clinicalStatus": {"coding": [{"system": codes.CONDITION_CLINICAL,
                                           "code": cond.get("clinical_status", "active")}]},
            "verificationStatus": {"coding": [{"system": codes.CONDITION_VER_STATUS, "code": "confirmed"}]},
            "category": [{"coding": [{"system": codes.CONDITION_CATEGORY,
                                      "code": cond.get("category", "problem-list-item")}]}],
            "code": codeable(cond["code"], text), "subject": subject}
        if onset:
            res["onsetDateTime"] = onset
        for part in ("stage", "histology"):
            spec = cond.get(part)
            raw = self._raw(row, spec["column"]) if spec else None
            if spec is None or raw is None:
                continue
            try:
                cc = self._concept(spec, raw)
            except V.CellError as exc:
                bad(spec["column"], raw, exc.rule)
                continue
            if cc is None:
                continue
            if part == "stage":
                res["stage"] = [{"summary": cc}]
            else:
                res["extension"] = [{"url": HISTOLOGY_EXT, "valueCodeableConcept": cc}]
        return res

    def patient(self, pkey: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The Patient resource (``Patient.identifier[0] = {system, value}`` of the key column)."""
        res: dict[str, Any] = {"resourceType": "Patient", "id": patient_id(self.system, pkey),
                               "meta": {"tag": [dict(TAG)]},
                               "identifier": [{"system": self.system, "value": pkey}]}
        res.update({k: fields[k] for k in ("gender", "birthDate", "deceasedBoolean") if k in fields})
        return with_sources(res, self.source)


def _window(value: str) -> _dt.date:
    return _dt.date.today() if value == "today" else _dt.date.fromisoformat(value)


def is_empty_row(row: dict[str, Any]) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for k, v in row.items() if k != "__extra__") \
        and not row.get("__extra__")
