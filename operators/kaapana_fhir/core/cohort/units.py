"""UCUM unit conversion for cohort columns (``ucumvert``: the UCUM grammar on pint; pinned in pyproject).

:func:`converter` answers "can values in unit A be expressed in unit B, and how": a function for compatible
units (``[lb_av]`` → ``kg``, ``mm`` → ``cm``, ``Cel`` → ``K``), ``None`` for incompatible or unknown units.
The registry is built once, on first use (a few seconds), so cohorts without mixed units never pay for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=4096)
def _unit(code: str) -> Any:
    """The pint unit of a UCUM code, or None when it does not parse."""
    try:
        q = _registry().from_ucum(code)
    except Exception as exc:  # noqa: BLE001 - ucumvert raises lark and pint errors of many types
        log.debug("not a UCUM unit %r: %s", code, exc)
        return None
    return q


#: units on an offset scale: never converted (values stay in a column of their own unit)
OFFSET_UNITS = frozenset({"Cel", "[degF]", "[degRe]", "[degR]"})


@lru_cache(maxsize=4096)
def converter(source: str, target: str) -> Callable[[float], float] | None:
    """``f(value_in_source) -> value_in_target`` for compatible multiplicative UCUM units (``[lb_av]`` → ``kg``);
    ``None`` for incompatible, unknown or offset units (``Cel``)."""
    if source == target:
        return lambda v: v
    if source in OFFSET_UNITS or target in OFFSET_UNITS:
        return None
    a, b = _unit(source), _unit(target)
    if a is None or b is None:
        return None
    try:
        if a.dimensionality != b.dimensionality:
            return None
        factor = float((a / b).to("dimensionless").magnitude)
    except Exception as exc:  # noqa: BLE001 - pint raises several error types for odd units
        log.debug("cannot convert %s → %s: %s", source, target, exc)
        return None
    return lambda v: v * factor


_SLUG = re.compile(r"[^a-z0-9]+")
_UNIT_WORDS = {"%": "pct", "/": "per", "[": "_", "]": "", "{": "", "}": "", ".": "_", "*": "x"}


def unit_slug(unit: str) -> str:
    """A column-name friendly form of a UCUM code: ``mm[Hg]`` → ``mm_hg``, ``kg/m2`` → ``kg_per_m2``,
    ``%`` → ``pct``, ``/min`` → ``per_min``, ``1`` → ``''``."""
    u = unit.strip()
    if u in ("", "1"):
        return ""
    out = []
    for ch in u:
        out.append(f"_{_UNIT_WORDS[ch]}_" if ch in _UNIT_WORDS and _UNIT_WORDS[ch] else
                   ("" if ch in _UNIT_WORDS else ch))
    return _SLUG.sub("_", "".join(out).lower()).strip("_")
