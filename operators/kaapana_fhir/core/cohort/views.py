"""A small SQL-on-FHIR v2 ViewDefinition runner on fhirpathpy (no network, no Airflow).

FHIRPath is evaluated by the maintained engine ``fhirpathpy`` (R4 model, so choice types such as
``value.ofType(Quantity)`` resolve ``Observation.valueQuantity``); every path is compiled once per view.
This module only implements the ViewDefinition semantics on top of it:

* ``select[]`` with ``column[]`` (``name``, ``path``, ``collection``, ``type``) and nested ``select[]``
  (cross product of the row sets of a select's columns, nested selects and ``unionAll``);
* ``forEach`` (one row set per item, none when empty) and ``forEachOrNull`` (one all-null row when empty);
* ``unionAll`` (concatenation of the branch rows; every branch must have the same column names);
* ``where[]`` (a resource is kept when every path evaluates to ``true``);
* ``constant[]`` (``%name`` in paths; ``value[x]`` of the constant);
* the functions ``getResourceKey()`` (= ``Resource.id``) and ``getReferenceKey([Type])`` (the id part of
  ``Reference.reference``, relative, absolute or versioned; empty when the reference is by identifier only,
  is contained (``#id``) or names another type than ``Type``). Both keys are equal for a resource and
  the references to it, which is what the cohort joins rely on.

A column without ``collection: true`` that yields several values raises :class:`ViewError` naming the
view, column and resource (SQL-on-FHIR v2: "collection" rule).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from kaapana_fhir.exceptions import MappingError

log = logging.getLogger(__name__)

VIEWS_DIR = Path(__file__).resolve().parents[2] / "data" / "views"
_MODEL = _fhirpath_models["r4"]


class ViewError(MappingError):
    """A ViewDefinition is malformed or a resource breaks one of its rules."""


class _RaiseOnError(ErrorListener):
    def syntaxError(self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise SyntaxError(f"column {column}: {msg}")


def check_syntax(path: str) -> None:
    """Parse ``path`` with fhirpathpy's generated ANTLR parser and raise ``SyntaxError`` on any error
    (fhirpathpy itself recovers silently from syntax errors)."""
    lexer = FHIRPathLexer(InputStream(path))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaiseOnError())
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(_RaiseOnError())
    parser.expression()
    if tokens.LA(1) != Token.EOF:
        raise SyntaxError(f"unexpected {tokens.LT(1).text!r} after the expression")


def _resource_key(inputs: list[Any]) -> list[Any]:
    return [i["id"] for i in inputs if isinstance(i, dict) and i.get("id")]


def reference_key(reference: str | None, rtype: str | None = None) -> str | None:
    """Key of ``Reference.reference``: ``Patient/1``, ``http://x/fhir/Patient/1/_history/2`` → ``1``.

    Returns ``None`` for a missing, contained (``#x``) or ``urn:`` reference, and when ``rtype`` is
    given and the reference names another resource type.
    """
    if not reference or not isinstance(reference, str) or reference.startswith("#"):
        return None
    if reference.startswith("urn:"):
        return None
    parts = [p for p in reference.split("?")[0].split("/") if p]
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) < 2:
        return None
    ref_type, ref_id = parts[-2], parts[-1]
    if rtype and ref_type != rtype:
        return None
    return ref_id


def _reference_key(inputs: list[Any], type_spec: Any = None) -> list[Any]:
    rtype = getattr(type_spec, "name", None) if type_spec is not None else None
    if isinstance(rtype, str) and "." in rtype:
        rtype = rtype.split(".")[-1]
    out = []
    for i in inputs:
        if isinstance(i, dict):
            key = reference_key(i.get("reference"), rtype)
            if key:
                out.append(key)
    return out


_FUNCTIONS = {
    "getResourceKey": {"fn": _resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
}
_OPTIONS = {"userInvocationTable": _FUNCTIONS}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        f = float(value)
        return int(f) if value == value.to_integral_value() and abs(f) < 2**53 and "." not in str(value) else f
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


@dataclass
class _Column:
    name: str
    fn: Callable[..., list[Any]]
    collection: bool
    path: str


@dataclass
class _Select:
    columns: list[_Column] = field(default_factory=list)
    selects: list[_Select] = field(default_factory=list)
    union: list[_Select] = field(default_factory=list)
    for_each: Callable[..., list[Any]] | None = None
    or_null: bool = False

    def names(self) -> list[str]:
        out = [c.name for c in self.columns]
        for s in self.selects:
            out.extend(s.names())
        if self.union:
            out.extend(self.union[0].names())
        return out


class CompiledView:
    """A ViewDefinition with compiled FHIRPath; call :meth:`rows` per resource or :meth:`run`."""

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view
        self.name = str(view.get("name") or "view")
        self.resource = view.get("resource")
        if not self.resource or not isinstance(self.resource, str):
            raise ViewError(f"ViewDefinition {self.name!r} has no 'resource' (rule: SQL-on-FHIR v2 ViewDefinition.resource)")
        self.constants = {c["name"]: _constant_value(c, self.name) for c in view.get("constant", [])}
        self.where = [self._compile(w["path"], "where") for w in view.get("where", [])]
        if not view.get("select"):
            raise ViewError(f"ViewDefinition {self.name!r} has no select")
        self.root = self._select({"select": view["select"]})
        self.columns = self.root.names()
        dupes = {c for c in self.columns if self.columns.count(c) > 1}
        if dupes:
            raise ViewError(f"ViewDefinition {self.name!r}: duplicate column names {sorted(dupes)}")

    def _compile(self, path: str, where: str) -> Callable[..., list[Any]]:
        path = path.strip()
        if path == "$this":  # fhirpathpy defines $this only inside functions; the focus itself is meant
            return lambda node, _ctx=None: [] if node is None else (list(node) if isinstance(node, list) else [node])
        path = path.removeprefix("$this.")
        try:
            check_syntax(path)
            return fhirpathpy.compile(path, _MODEL, _OPTIONS)
        except Exception as exc:  # the parser raises several exception types
            raise ViewError(f"ViewDefinition {self.name!r}: cannot compile FHIRPath {path!r} in {where}: {exc}") from exc

    def _select(self, spec: dict[str, Any]) -> _Select:
        sel = _Select()
        if spec.get("forEach") and spec.get("forEachOrNull"):
            raise ViewError(f"ViewDefinition {self.name!r}: forEach and forEachOrNull in one select")
        if spec.get("forEach"):
            sel.for_each = self._compile(spec["forEach"], "forEach")
        elif spec.get("forEachOrNull"):
            sel.for_each = self._compile(spec["forEachOrNull"], "forEachOrNull")
            sel.or_null = True
        for col in spec.get("column", []):
            if not col.get("name") or "path" not in col:
                raise ViewError(f"ViewDefinition {self.name!r}: a column needs name and path ({col})")
            sel.columns.append(_Column(col["name"], self._compile(col["path"], f"column {col['name']}"),
                                       bool(col.get("collection")), col["path"]))
        sel.selects = [self._select(s) for s in spec.get("select", [])]
        sel.union = [self._select(s) for s in spec.get("unionAll", [])]
        if sel.union:
            first = sel.union[0].names()
            for other in sel.union[1:]:
                if other.names() != first:
                    raise ViewError(f"ViewDefinition {self.name!r}: unionAll branches have different columns "
                                    f"{first} vs {other.names()}")
        return sel

    # ------------------------------------------------------------------ evaluation
    def _eval(self, fn: Callable[..., list[Any]], node: Any, resource: dict[str, Any]) -> list[Any]:
        ctx = dict(self.constants)
        ctx["resource"] = resource
        ctx["rootResource"] = resource
        return fn(node, ctx)

    def _rows(self, sel: _Select, node: Any, resource: dict[str, Any]) -> list[dict[str, Any]]:
        if sel.for_each is not None:
            items = self._eval(sel.for_each, node, resource)
            if not items:
                if sel.or_null:
                    return [dict.fromkeys(sel.names())]
                return []
            out: list[dict[str, Any]] = []
            for item in items:
                out.extend(self._rows_at(sel, item, resource))
            return out
        return self._rows_at(sel, node, resource)

    def _rows_at(self, sel: _Select, node: Any, resource: dict[str, Any]) -> list[dict[str, Any]]:
        row: dict[str, Any] = {}
        for col in sel.columns:
            vals = self._eval(col.fn, node, resource)
            if col.collection:
                row[col.name] = [_plain(v) for v in vals]
            elif len(vals) > 1:
                raise ViewError(f"view {self.name!r} column {col.name!r} ({col.path}) returned {len(vals)} values "
                                f"for {resource.get('resourceType')}/{resource.get('id')} "
                                "(rule: set collection: true or narrow the path)")
            else:
                row[col.name] = _plain(vals[0]) if vals else None
        rows = [row]
        for nested in sel.selects:
            rows = [{**a, **b} for a in rows for b in self._rows(nested, node, resource)]
        if sel.union:
            branch_rows = [r for u in sel.union for r in self._rows(u, node, resource)]
            rows = [{**a, **b} for a in rows for b in branch_rows]
        return rows

    def matches(self, resource: dict[str, Any]) -> bool:
        if resource.get("resourceType") != self.resource:
            return False
        for w in self.where:
            res = self._eval(w, resource, resource)
            if res != [True]:
                if res and not isinstance(res[0], bool):
                    raise ViewError(f"view {self.name!r}: where path did not return a boolean (got {res[:3]!r})")
                return False
        return True

    def rows(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of one resource (empty when another type or ``where`` is not true)."""
        if not self.matches(resource):
            return []
        return [{c: r.get(c) for c in self.columns} for r in self._rows(self.root, resource, resource)]

    def run(self, resources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for res in resources:
            yield from self.rows(res)


def _constant_value(const: dict[str, Any], view: str) -> Any:
    if not const.get("name"):
        raise ViewError(f"ViewDefinition {view!r}: a constant needs a name")
    for k, v in const.items():
        if k.startswith("value"):
            return v
    raise ViewError(f"ViewDefinition {view!r}: constant {const['name']!r} has no value[x]")


def compile_view(view: dict[str, Any]) -> CompiledView:
    if view.get("resourceType") not in (None, "ViewDefinition"):
        raise ViewError(f"not a ViewDefinition: resourceType {view.get('resourceType')!r}")
    return CompiledView(view)


def load_view(name_or_path: str | Path) -> dict[str, Any]:
    """A shipped view by name (``patient``) or a ViewDefinition JSON file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = VIEWS_DIR / f"{name_or_path}.json"
    if not p.is_file():
        raise ViewError(f"ViewDefinition {str(name_or_path)!r} not found (shipped views: {', '.join(shipped_views())})")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ViewError(f"{p}: not valid JSON: {exc}") from exc


def shipped_views() -> list[str]:
    return sorted(p.stem for p in VIEWS_DIR.glob("*.json"))


def run_view(view: dict[str, Any] | CompiledView, resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    cv = view if isinstance(view, CompiledView) else compile_view(view)
    return list(cv.run(resources))
