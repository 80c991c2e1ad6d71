"""Cell value parsing for clinical tables (pure functions, no I/O).

Every parser takes the raw cell text and returns a typed value or raises :class:`CellError` naming the
rule that failed; the caller adds the row and column. Rules:

* NA: cells equal (case-insensitive, stripped) to one of the mapping's ``na_values`` are missing.
* Numbers: ``1.5`` and ``1,5`` (comma decimal) and ``1.234,5`` / ``1,234.5`` (the last separator is the
  decimal one); a trailing unit (``72 kg``) is accepted only if it equals the mapping's unit or an alias.
* Dates: ISO 8601 (``2019-10-01``, ``2019-10``, ``2019``, ``2019-10-01T08:30:00``), ``DD.MM.YYYY``, and
  ``DD/MM/YYYY`` or ``MM/DD/YYYY`` (``date_order``); impossible dates (``2019-02-30``) are errors.
  Results are FHIR ``date`` / ``dateTime`` strings (no invented time zone: date precision only).
* Formula-like cells (``=``, ``+``, ``-``, ``@`` first): never evaluated; kept verbatim as text where the
  type is string, rejected where a number is expected (``-3`` is still a number).
"""

from __future__ import annotations

import datetime as _dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any

DEFAULT_NA_VALUES = ("", "na", "n/a", "nan", "null", "none", "#n/a", ".")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

_NUM_UNIT_RE = re.compile(r"^\s*([+-]?[0-9][0-9.,'\s]*|[+-]?[.,][0-9]+)\s*([^\d\s].*)?$")
_ISO_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
                     r"(Z|[+-]\d{2}:?\d{2})?)?)?)?$")
_DOT_RE = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})$")
_SLASH_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
TRUE_VALUES = ("1", "true", "yes", "y", "t", "ja", "x", "checked")
FALSE_VALUES = ("0", "false", "no", "n", "f", "nein", "unchecked")


class CellError(ValueError):
    """A cell value breaks a rule; ``rule`` is a short human-readable rule text."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


def is_na(raw: Any, na_values: frozenset[str]) -> bool:
    if raw is None:
        return True
    return str(raw).strip().lower() in na_values


def is_formula_like(text: str) -> bool:
    """True for cells a spreadsheet would evaluate (formula injection, OWASP CSV injection)."""
    return bool(text) and text[0] in FORMULA_PREFIXES


def escape_csv_cell(text: str) -> str:
    """Escape a formula-like cell for any CSV we write (prefix a single quote)."""
    return "'" + text if is_formula_like(text) else text


def parse_decimal(raw: str, *, unit: str | None = None, aliases: tuple[str, ...] = ()) -> Decimal:
    """Parse a number with optional comma decimal and optional trailing unit (rule names the problem)."""
    text = str(raw).strip()
    if text.startswith(("=", "@")):
        raise CellError("formula-like cell where a number is expected (never evaluated)")
    m = _NUM_UNIT_RE.match(text)
    if not m:
        raise CellError("not a number")
    num, found_unit = m.group(1).replace(" ", "").replace("'", ""), (m.group(2) or "").strip()
    if found_unit:
        allowed = {u.lower() for u in (unit, *aliases) if u}
        if found_unit.lower() not in allowed:
            want = unit or "no unit"
            raise CellError(f"unit {found_unit!r} in cell does not match the mapping unit ({want})")
    if "," in num and "." in num:
        dec = "," if num.rfind(",") > num.rfind(".") else "."
        thousands = "." if dec == "," else ","
        num = num.replace(thousands, "").replace(dec, ".")
    elif "," in num:
        if num.count(",") > 1:
            raise CellError("ambiguous number (several commas)")
        num = num.replace(",", ".")
    elif num.count(".") > 1:
        raise CellError("ambiguous number (several dots)")
    try:
        value = Decimal(num)
    except InvalidOperation:
        raise CellError("not a number") from None
    if not value.is_finite():
        raise CellError("not a finite number")
    return value


def parse_integer(raw: str) -> int:
    value = parse_decimal(raw)
    if value != value.to_integral_value():
        raise CellError("not an integer")
    return int(value)


def parse_boolean(raw: str, true_values: tuple[str, ...] = TRUE_VALUES,
                  false_values: tuple[str, ...] = FALSE_VALUES) -> bool:
    t = str(raw).strip().lower()
    if t in {v.lower() for v in true_values}:
        return True
    if t in {v.lower() for v in false_values}:
        return False
    raise CellError(f"not a boolean (allowed: {', '.join(true_values[:3])} / {', '.join(false_values[:3])})")


def parse_date(raw: Any, *, date_order: str = "dmy") -> str:
    """Return a FHIR ``date`` or ``dateTime`` string; raise :class:`CellError` for invalid/impossible dates."""
    if isinstance(raw, _dt.datetime):
        return raw.date().isoformat() if raw.time() == _dt.time() else raw.isoformat(timespec="seconds")
    if isinstance(raw, _dt.date):
        return raw.isoformat()
    text = str(raw).strip()
    try:
        m = _ISO_RE.match(text)
        if m:
            y, mo, d, hh, mi, ss, tz = m.groups()
            if d is None:
                if mo is not None:
                    _dt.date(int(y), int(mo), 1)
                    return f"{y}-{mo}"
                return y
            date = _dt.date(int(y), int(mo), int(d))
            if hh is None:
                return date.isoformat()
            when = _dt.datetime(date.year, date.month, date.day, int(hh), int(mi), int(ss or 0))
            if tz:
                tz = "+00:00" if tz == "Z" else (tz if ":" in tz else f"{tz[:3]}:{tz[3:]}")
                return when.isoformat(timespec="seconds") + tz
            return date.isoformat()  # no time zone in the source: keep date precision (FHIR needs a zone)
        m = _DOT_RE.match(text)
        if m:
            return _dt.date(int(m.group(3)), int(m.group(2)), int(m.group(1))).isoformat()
        m = _SLASH_RE.match(text)
        if m:
            a, b, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
            day, month = (a, b) if date_order == "dmy" else (b, a)
            return _dt.date(y, month, day).isoformat()
    except ValueError:
        raise CellError("impossible date") from None
    raise CellError("not a date (formats: YYYY-MM-DD, YYYY-MM, YYYY, DD.MM.YYYY, DD/MM/YYYY or MM/DD/YYYY)")


def map_key(raw: Any) -> str:
    """Normalised lookup key of a value map: stripped, lower-case; ``3.0`` → ``3``."""
    text = str(raw).strip().lower()
    if re.fullmatch(r"[+-]?\d+\.0+", text):
        text = text.split(".")[0]
    return text
