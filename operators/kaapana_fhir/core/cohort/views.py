"""The cohort's ViewDefinitions: the shipped views in ``data/views`` run by the SQL-on-FHIR runner.

The runner itself lives in :mod:`kaapana_fhir.core.sof` (validated, compiled ViewDefinitions; the official
SQL-on-FHIR v2 test suite passes). This module only finds and loads views by name and keeps the names the
cohort code, the web API and the tests import.

**Coalesced columns.** The shipped views use only FHIRPath that every SQL-on-FHIR engine we run them on
supports (our runner and Pathling; no ``iif()``). Where a value has fallbacks ("``code.text``, else the first
coding's display, else its code") a view writes the candidates as parts ``name__1``, ``name__2``, ... and
:func:`coalesce_parts` turns them into one column ``name`` (the first part that is not empty, in order), at the
place of ``name__1``. The cohort flow applies it to every engine's rows, so the cohort code sees ``name`` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kaapana_fhir.core.limits import load_json
from kaapana_fhir.core.sof import CompiledView, compile_view, reference_key
from kaapana_fhir.core.sof import ViewDefinitionError as ViewError
from kaapana_fhir.core.sof import run_view as run_view_parts
from kaapana_fhir.core.sof.fhirpath import check_syntax
from kaapana_fhir.core.sof.table import ViewTable
from kaapana_fhir.exceptions import MappingError

VIEWS_DIR = Path(__file__).resolve().parents[2] / "data" / "views"

__all__ = ["VIEWS_DIR", "CompiledView", "ViewError", "check_syntax", "coalesce_parts", "coalesce_plan",
           "coalesce_rows", "coalesce_tables", "compile_view", "load_view", "reference_key", "run_view",
           "shipped_views"]

_PART = re.compile(r"^(?P<name>.+)__(?P<n>[1-9][0-9]?)$")


def run_view(view: Mapping[str, Any] | CompiledView, resources: Any) -> list[dict[str, Any]]:
    """All rows of ``view`` over ``resources`` as the cohort sees them (parts coalesced, :func:`coalesce_rows`);
    :func:`kaapana_fhir.core.sof.run_view` gives the raw rows."""
    name = view.name if isinstance(view, CompiledView) else str(view.get("name") or "")
    return coalesce_rows(run_view_parts(view, resources), name)


def shipped_views() -> list[str]:
    """Names of the views shipped in ``data/views``."""
    return sorted(p.stem for p in VIEWS_DIR.glob("*.json"))


def load_view(name_or_path: str | Path) -> dict[str, Any]:
    """A shipped view by name (``patient``) or a ViewDefinition JSON file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = VIEWS_DIR / f"{name_or_path}.json"
    if not p.is_file():
        raise ViewError(str(name_or_path), "", f"not found (shipped views: {', '.join(shipped_views())})")
    try:
        view = load_json(p)
    except (ValueError, MappingError) as exc:
        raise ViewError(str(p), "", f"not valid JSON: {exc}") from exc
    if not isinstance(view, dict):
        raise ViewError(str(p), "", "a ViewDefinition must be a JSON object")
    return view


def _empty(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, (list, tuple)) and not v)


RowFn = Callable[[tuple[Any, ...]], tuple[Any, ...]]


def coalesce_plan(columns: Sequence[str], view: str = "") -> tuple[list[str], RowFn] | None:
    """For view columns with parts ``name__1``, ``name__2``, ...: the output columns and a function turning a
    row tuple into the coalesced tuple; ``None`` when there are no parts. A part numbering with a gap
    (``x__1``, ``x__3``) is an error naming the column (rule: parts are numbered 1, 2, 3, ...)."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, c in enumerate(columns):
        m = _PART.match(c)
        if m:
            groups.setdefault(m["name"], []).append((int(m["n"]), i))
    if not groups:
        return None
    for name, items in groups.items():
        numbers = sorted(n for n, _ in items)
        if numbers != list(range(1, len(numbers) + 1)):
            listed = ", ".join(f"{name}__{n}" for n in numbers)
            raise ViewError(view, f"column {name}", f"parts {listed}: numbered with a gap or twice (rule: name__1, "
                                                    "name__2, ... in order)")
        if name in columns:
            raise ViewError(view, f"column {name}", f"both {name!r} and its parts {name}__N (rule: one or the other)")
    out_cols: list[str] = []
    plan: list[int | tuple[int, ...]] = []
    for i, c in enumerate(columns):
        m = _PART.match(c)
        if not m:
            out_cols.append(c)
            plan.append(i)
        elif m["n"] == "1":
            out_cols.append(m["name"])
            plan.append(tuple(j for _, j in sorted(groups[m["name"]])))

    def row(t: tuple[Any, ...]) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in plan:
            if isinstance(p, int):
                out.append(t[p])
                continue
            v = None
            for j in p:
                if not _empty(t[j]):
                    v = t[j]
                    break
            out.append(v)
        return tuple(out)

    return out_cols, row


def coalesce_parts(table: ViewTable, view: str = "") -> ViewTable:
    """``table`` with its ``name__N`` parts coalesced into ``name`` (see the module doc); unchanged without."""
    plan = coalesce_plan(table.columns, view)
    if plan is None:
        return table
    columns, row = plan
    return ViewTable(columns, map(row, table.tuples))


def coalesce_rows(rows: Sequence[Mapping[str, Any]], view: str = "") -> list[dict[str, Any]]:
    """The same for rows as dicts (all with the same columns)."""
    if not rows:
        return [dict(r) for r in rows]
    cols = list(rows[0])
    plan = coalesce_plan(cols, view)
    if plan is None:
        return [dict(r) for r in rows]
    columns, row = plan
    return [dict(zip(columns, row(tuple(r.get(c) for c in cols)), strict=True)) for r in rows]


def coalesce_tables(tables: Mapping[str, Any]) -> dict[str, Any]:
    """Every :class:`ViewTable` (or list of row dicts) of ``tables`` with its parts coalesced."""
    out: dict[str, Any] = {}
    for name, t in tables.items():
        if isinstance(t, ViewTable):
            out[name] = coalesce_parts(t, name)
        elif isinstance(t, list) and t and isinstance(t[0], Mapping):
            out[name] = coalesce_rows(t, name)
        else:
            out[name] = t
    return out
