"""UCUM unit codes: validated with the maintained ``ucumvert`` parser (the UCUM grammar, pinned in pyproject).

:func:`ucum_problem` returns ``None`` for a valid UCUM code (``kg``, ``mm[Hg]``, ``10*9/L``, ``{score}``) and
a short rule text otherwise (``kcals``, ``Kg``, ``years``). :func:`guess_ucum` turns common spellings found
in table headers and REDCap field notes (``years``, ``Jahre``, ``kg/m²``) into a UCUM code to *suggest*; a
suggestion is always marked for review by the caller.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

#: spellings seen in clinical tables → UCUM code (only suggestions; the mapping holds the final code)
COMMON_UNITS: dict[str, str] = {
    "years": "a", "year": "a", "yrs": "a", "yr": "a", "y": "a", "jahre": "a", "jahr": "a", "j": "a",
    "months": "mo", "month": "mo", "monate": "mo", "monat": "mo",
    "weeks": "wk", "week": "wk", "wochen": "wk", "days": "d", "day": "d", "tage": "d", "tag": "d",
    "hours": "h", "stunden": "h", "kg": "kg", "g": "g", "cm": "cm", "m": "m", "mm": "mm",
    "kg/m2": "kg/m2", "kg/m²": "kg/m2", "mmhg": "mm[Hg]", "bpm": "/min", "/min": "/min", "%": "%",
    "mg/dl": "mg/dL", "g/dl": "g/dL", "mmol/l": "mmol/L", "µmol/l": "umol/L", "umol/l": "umol/L",
    "u/l": "U/L", "ng/ml": "ng/mL", "g/l": "g/L", "mg/l": "mg/L", "10^9/l": "10*9/L", "gpt/l": "10*9/L",
    "/nl": "10*3/uL", "10^3/µl": "10*3/uL", "10^3/ul": "10*3/uL", "kcal": "kcal", "ml": "mL", "l": "L",
    "ml/min": "mL/min", "ml/min/1.73m2": "mL/min/{1.73_m2}", "hu": "[hnsf'U]", "gy": "Gy", "mgy": "mGy",
    "pack years": "{pack-years}", "pack-years": "{pack-years}", "py": "{pack-years}", "packungsjahre": "{pack-years}",
}


@lru_cache(maxsize=1)
def _parser() -> Any:
    from ucumvert import get_ucum_parser

    return get_ucum_parser()


@lru_cache(maxsize=4096)
def ucum_problem(code: str) -> str | None:
    """``None`` if ``code`` is a valid UCUM expression, else the rule it breaks (for error messages)."""
    from lark.exceptions import LarkError

    text = str(code)
    if not text or text != text.strip():
        return "a UCUM code has no surrounding spaces and is not empty (rule: UCUM syntax)"
    try:
        _parser().parse(text)
    except LarkError:
        hint = COMMON_UNITS.get(text.lower())
        return (f"{text!r} is not a valid UCUM code" + (f" (did you mean {hint!r}?)" if hint and hint != text else "")
                + " (rule: UCUM syntax, unitsofmeasure.org)")
    return None


def guess_ucum(text: str) -> str | None:
    """A UCUM code for a unit spelling from a header, a field note or a label (``None`` if unknown)."""
    t = re.sub(r"\s+", " ", str(text).strip())
    if not t:
        return None
    hit = COMMON_UNITS.get(t.lower())
    if hit:
        return hit
    if len(t) <= 20 and ucum_problem(t) is None and not t.isdigit():
        return t
    return None


_UNIT_IN_LABEL = re.compile(r"[\(\[]\s*([^()\[\]]{1,20}?)\s*[\)\]]\s*$")


def unit_from_label(label: str) -> str | None:
    """The UCUM code of a trailing ``(kg)`` / ``[mg/dL]`` in a column header or field label."""
    m = _UNIT_IN_LABEL.search(str(label))
    return guess_ucum(m.group(1)) if m else None
