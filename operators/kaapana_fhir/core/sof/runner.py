"""Run SQL-on-FHIR v2 ViewDefinitions over FHIR resources (pure: no network, no Airflow).

:func:`compile_view` validates the view (:mod:`.structure`) and compiles every path once: into Python
closures (:mod:`.compiler`) where the path is in the compiled subset, else into a fhirpathpy evaluation.
Semantics (SQL-on-FHIR v2):

* ``select[]``: a select's rows are its columns, then the cross product with the rows of each nested
  ``select``, then with the concatenated rows of its ``unionAll`` branches (column order: columns,
  nested selects, unionAll); sibling selects are cross-joined;
* ``forEach`` (one row set per item, none when empty), ``forEachOrNull`` (one all-null row when empty),
  ``repeat`` (the items reached by following the paths recursively, depth first, pre-order);
* ``%rowIndex``: the 0-based index of the item in the enclosing ``forEach``/``forEachOrNull``/``repeat``;
  0 at the top level; ``unionAll`` branches without an iteration inherit it;
* ``where[]``: a resource is kept when every path is ``true``; a path yielding a non-boolean is an error;
* a column without ``collection: true`` that yields several values is an error naming view, column and
  resource.

Rows are dicts (:meth:`CompiledView.rows`) or tuples in :attr:`CompiledView.columns` order
(:meth:`CompiledView.tuples`, faster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fhirpathpy.engine.nodes import ResourceNode

from kaapana_fhir.core.sof.compiler import Env, SType, Unsupported, compile_fhirpath
from kaapana_fhir.core.sof.errors import ViewDefinitionError
from kaapana_fhir.core.sof.fhirpath import MODEL, FallbackPath, parse, plain
from kaapana_fhir.core.sof.structure import validate_view

log = logging.getLogger(__name__)

Engine = Literal["auto", "fhirpathpy"]
NodeFn = Callable[[Any, Env], list[Any]]
_MAX_REPEAT_DEPTH = 64

#: constant value[x] → static FHIRPath type used by the compiler
_CONST_KIND = {"valueBase64Binary": "base64Binary", "valueBoolean": "boolean", "valueCanonical": "canonical",
               "valueCode": "code", "valueDate": "date", "valueDateTime": "dateTime", "valueDecimal": "decimal",
               "valueId": "id", "valueInstant": "instant", "valueInteger": "integer",
               "valueInteger64": "integer64", "valueOid": "oid", "valueString": "string",
               "valuePositiveInt": "positiveInt", "valueTime": "time", "valueUnsignedInt": "unsignedInt",
               "valueUri": "uri", "valueUrl": "url", "valueUuid": "uuid"}


@dataclass
class _Path:
    """One compiled path: ``fn(node, env) -> list``; ``raw`` when the results need :func:`plain`."""
    text: str
    fn: NodeFn
    type: SType
    compiled: bool
    needs_plain: bool = True
    inner: Any = None  # the compiled list function (focus list, env) -> list


@dataclass
class _Column:
    name: str
    path: _Path
    collection: bool
    where: str
    get: Callable[[Any, Env], Any] | None = None


@dataclass
class _Select:
    where: str
    columns: list[_Column] = field(default_factory=list)
    selects: list[_Select] = field(default_factory=list)
    union: list[_Select] = field(default_factory=list)
    kind: str | None = None  # forEach | forEachOrNull | repeat
    iterate: list[_Path] = field(default_factory=list)
    deeper: list[_Path] = field(default_factory=list)  # repeat: paths from the second level on
    names: list[str] = field(default_factory=list)


def _type_path(t: SType) -> str | None:
    return str(t[1]) if t is not None and t[0] == "complex" else None


class CompiledView:
    """A validated, compiled ViewDefinition. ``engine="fhirpathpy"`` evaluates every path with fhirpathpy
    (the reference for the compiled paths; used by the conformance tests and the bench)."""

    def __init__(self, view: Mapping[str, Any], *, engine: Engine = "auto") -> None:
        validate_view(view)
        self.view = view
        self.name = str(view.get("name") or "(unnamed)")
        self.resource = str(view["resource"])
        self.engine = engine
        self.paths: list[_Path] = []
        self.constants_raw: dict[str, Any] = {}
        self.constants: dict[str, tuple[Any, SType]] = {}
        for c in view.get("constant", []):
            key = next(k for k in c if k.startswith("value"))
            value = c[key]
            kind = _CONST_KIND.get(key, "string")
            self.constants_raw[c["name"]] = value
            self.constants[c["name"]] = (value, ("primitive", kind))
        root_type: SType = ("complex", self.resource) if MODEL.is_resource(self.resource) else None
        self.where = [self._path(w["path"], root_type, f"where[{i}].path")
                      for i, w in enumerate(view.get("where", []))]
        self.root = _Select(where="select", selects=[self._select(s, root_type, f"select[{i}]")
                                                     for i, s in enumerate(view["select"])])
        self.root.names = [n for s in self.root.selects for n in s.names]
        self.columns: list[str] = self.root.names
        dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dupes:
            raise ViewDefinitionError(self.name, "select", f"duplicate column names {dupes} (column names must "
                                                           "be unique)")
        self._simple = self._simple_columns()
        self._required = self._required_keys()

    # ------------------------------------------------------------------ compile
    def _vars(self, env: Env) -> dict[str, Any]:
        out = dict(self.constants_raw)
        out["rowIndex"] = env[1]
        out["resource"] = env[0]
        out["rootResource"] = env[0]
        return out

    def _path(self, text: str, focus: SType, where: str) -> _Path:
        text = text.strip()
        tree = parse(text)
        if self.engine == "auto":
            try:
                inner, st = compile_fhirpath(tree, focus, self.constants)
            except Unsupported as exc:
                log.debug("view %s %s: fhirpathpy for %r (%s)", self.name, where, text, exc)
            else:
                def fn(node: Any, env: Env, _inner: Any = inner) -> list[Any]:
                    return _inner([node], env)  # type: ignore[no-any-return]

                p = _Path(text, fn, st, True, needs_plain=focus is None, inner=inner)
                self.paths.append(p)
                return p
        if text == "$this":  # fhirpathpy defines $this only inside functions; the focus is meant
            def this(node: Any, env: Env) -> list[Any]:
                return [] if node is None else [node]

            p = _Path(text, this, focus, False)
            self.paths.append(p)
            return p
        try:
            fb = FallbackPath(text.removeprefix("$this."))
        except Exception as exc:
            raise ViewDefinitionError(self.name, where, f"cannot compile FHIRPath {text!r}: {exc}") from exc
        tp = _type_path(focus)
        view = self

        def fallback(node: Any, env: Env) -> list[Any]:
            return fb(node, tp, view._vars(env))

        p = _Path(text, fallback, None, False)
        self.paths.append(p)
        return p

    def _select(self, spec: Mapping[str, Any], focus: SType, where: str) -> _Select:
        sel = _Select(where=where)
        item_type = focus
        if "forEach" in spec or "forEachOrNull" in spec:
            sel.kind = "forEach" if "forEach" in spec else "forEachOrNull"
            p = self._path(spec[sel.kind], focus, f"{where}.{sel.kind}")
            sel.iterate = [p]
            item_type = p.type if p.compiled and p.type is not None and p.type[0] in ("complex", "primitive") \
                else None
        elif "repeat" in spec:
            sel.kind = "repeat"
            first = [self._path(t, focus, f"{where}.repeat[{i}]") for i, t in enumerate(spec["repeat"])]
            types = {p.type for p in first}
            item_type = types.pop() if len(types) == 1 and all(p.compiled for p in first) else None
            if item_type is not None:
                deeper = [self._path(t, item_type, f"{where}.repeat[{i}]") for i, t in enumerate(spec["repeat"])]
                if all(p.compiled and p.type == item_type for p in deeper):
                    sel.iterate, sel.deeper = first, deeper
                else:
                    item_type = None
            if item_type is None:
                sel.iterate = [self._force_fallback(t, focus, f"{where}.repeat[{i}]")
                               for i, t in enumerate(spec["repeat"])]
                sel.deeper = [self._force_fallback(t, None, f"{where}.repeat[{i}]")
                              for i, t in enumerate(spec["repeat"])]
        for i, col in enumerate(spec.get("column", [])):
            cw = f"{where}.column[{i}]"
            c = _Column(col["name"], self._path(col["path"], item_type, f"{cw}.path"), bool(col.get("collection")), cw)
            c.get = self._getter(c)
            sel.columns.append(c)
        sel.selects = [self._select(s, item_type, f"{where}.select[{i}]") for i, s in enumerate(spec.get("select", []))]
        sel.union = [self._select(s, item_type, f"{where}.unionAll[{i}]")
                     for i, s in enumerate(spec.get("unionAll", []))]
        if sel.union:
            first_names = sel.union[0].names
            for i, other in enumerate(sel.union[1:], start=1):
                if other.names != first_names:
                    raise ViewDefinitionError(self.name, f"{where}.unionAll[{i}]",
                                              f"unionAll branches must have the same columns in the same order: "
                                              f"{first_names} vs {other.names}")
        sel.names = [c.name for c in sel.columns] + [n for s in sel.selects for n in s.names] + \
            (sel.union[0].names if sel.union else [])
        return sel

    def _force_fallback(self, text: str, focus: SType, where: str) -> _Path:
        saved = self.engine
        self.engine = "fhirpathpy"
        try:
            return self._path(text, focus, where)
        finally:
            self.engine = saved

    def _required_keys(self) -> tuple[str, ...]:
        """Top-level elements a resource must have to give any row: the first member of each root-level
        ``forEach`` (an empty forEach gives no rows, and sibling selects are cross-joined)."""
        keys = []
        for s in self.root.selects:
            if s.kind != "forEach" or not s.iterate or not s.iterate[0].compiled:
                continue
            inner = s.iterate[0].inner
            steps = getattr(inner, "_chain", None)
            if steps and getattr(inner, "_base", 1) is None and len(steps[0]) == 1:
                keys.append(steps[0][0])
        return tuple(keys)

    def _simple_columns(self) -> list[Callable[[Any, Env], Any]] | None:
        """The columns when the view is one plain select (no iteration, nesting or union): fast path."""
        sels = self.root.selects
        cols: list[Callable[[Any, Env], Any]] = []
        for s in sels:
            if s.kind or s.selects or s.union:
                return None
            cols.extend(c.get for c in s.columns if c.get is not None)
        return cols

    # ------------------------------------------------------------------ evaluation
    def _getter(self, col: _Column) -> Callable[[Any, Env], Any]:
        """``get(node, env) -> cell value`` for one column (compiled fast path where possible)."""
        inner = col.path.inner
        if inner is None or col.path.needs_plain:
            return lambda node, env: self._value(col, node, env)
        if col.collection:
            return lambda node, env: [plain(v) if v.__class__ is dict else v for v in inner([node], env)]
        many = self._many
        # the compiled node function when the path has one (the hot path: no list around the node), else the path
        node_fn = getattr(inner, "_node", None)
        fetch: Callable[[Any, Env], Any] = node_fn if node_fn is not None else (lambda node, env: inner([node], env))

        def get(node: Any, env: Env) -> Any:
            vals = fetch(node, env)
            if not vals:
                return None
            if len(vals) == 1:
                v = vals[0]
                return plain(v) if v.__class__ is dict else v
            return many(col, vals, env)

        return get

    def _many(self, col: _Column, vals: list[Any], env: Env) -> Any:
        res = env[0]
        raise ViewDefinitionError(
            self.name, f"{col.where}.path",
            f"column {col.name!r} ({col.path.text}) returned {len(vals)} values for "
            f"{res.get('resourceType')}/{res.get('id')} (rule: set collection: true or narrow the path)")

    def _value(self, col: _Column, node: Any, env: Env) -> Any:
        vals = col.path.fn(node, env)
        if col.collection:
            return [plain(v) for v in vals] if col.path.needs_plain else vals
        if not vals:
            return None
        if len(vals) > 1:
            self._many(col, vals, env)
        v = vals[0]
        return plain(v) if col.path.needs_plain or v.__class__ is dict else v

    def _rows(self, sel: _Select, node: Any, env: Env) -> list[tuple[Any, ...]]:
        if sel.kind is None:
            return self._inner(sel, node, env)
        if sel.kind == "repeat":
            items = self._traverse(sel, node, env)
        else:
            items = sel.iterate[0].fn(node, env)
        if not items:
            if sel.kind != "forEachOrNull":
                return []
            # one row of nulls; %rowIndex is 0 in it (SQL-on-FHIR v2 row_index tests)
            return self._inner(sel, None, (env[0], 0)) or [(None,) * len(sel.names)]
        out: list[tuple[Any, ...]] = []
        res = env[0]
        for i, item in enumerate(items):
            out.extend(self._inner(sel, item, (res, i)))
        return out

    def _traverse(self, sel: _Select, node: Any, env: Env) -> list[Any]:
        out: list[Any] = []

        def walk(n: Any, paths: list[_Path], depth: int) -> None:
            if depth > _MAX_REPEAT_DEPTH:
                raise ViewDefinitionError(self.name, f"{sel.where}.repeat",
                                          f"nesting deeper than {_MAX_REPEAT_DEPTH} levels in "
                                          f"{env[0].get('resourceType')}/{env[0].get('id')}")
            for p in paths:
                for child in p.fn(n, env):
                    out.append(child)
                    walk(child, sel.deeper, depth + 1)

        walk(node, sel.iterate, 0)
        return out

    def _inner(self, sel: _Select, node: Any, env: Env) -> list[tuple[Any, ...]]:
        rows = [tuple([c.get(node, env) for c in sel.columns])]  # type: ignore[misc]
        for sub in sel.selects:
            sub_rows = self._rows(sub, node, env)
            if not sub_rows:
                return []
            rows = [a + b for a in rows for b in sub_rows] if len(rows) > 1 or len(sub_rows) > 1 \
                else [rows[0] + sub_rows[0]]
        if sel.union:
            branch = [r for u in sel.union for r in self._rows(u, node, env)]
            rows = [a + b for a in rows for b in branch]
        return rows

    def matches(self, resource: Mapping[str, Any]) -> bool:
        """True when ``resource`` has the view's type and every ``where`` path is true."""
        if resource.get("resourceType") != self.resource:
            return False
        env: Env = (resource, 0)
        for i, w in enumerate(self.where):
            res = w.inner([resource], env) if w.inner is not None else w.fn(resource, env)
            if not res:
                return False
            v = plain(res[0]) if w.needs_plain else res[0]
            if len(res) > 1 or v.__class__ is not bool:
                raise ViewDefinitionError(self.name, f"where[{i}].path",
                                          f"{w.text!r} did not return a boolean for "
                                          f"{resource.get('resourceType')}/{resource.get('id')} "
                                          f"(got {[plain(x) for x in res[:3]]!r})")
            if v is not True:
                return False
        return True

    def tuples(self, resource: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of one resource as tuples in :attr:`columns` order (empty when another type or filtered)."""
        for k in self._required:
            if not resource.get(k):
                return []
        if not self.matches(resource):
            return []
        env: Env = (resource, 0)
        try:
            if self._simple is not None:
                return [tuple([g(resource, env) for g in self._simple])]
            return self._rows(self.root, resource, env)
        except ViewDefinitionError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ViewDefinitionError(self.name, "select", f"evaluation failed for {resource.get('resourceType')}/"
                                                           f"{resource.get('id')}: {exc}") from exc

    def rows(self, resource: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Rows of one resource as dicts (empty when another type or ``where`` is not true)."""
        cols = self.columns
        return [dict(zip(cols, t, strict=True)) for t in self.tuples(resource)]

    def run(self, resources: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        for res in resources:
            yield from self.rows(res)

    def run_tuples(self, resources: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Any, ...]]:
        for res in resources:
            yield from self.tuples(res)

    @property
    def compiled_share(self) -> tuple[int, int]:
        """(compiled paths, all paths)."""
        return sum(1 for p in self.paths if p.compiled), len(self.paths)

    def fallback_paths(self) -> list[str]:
        return [p.text for p in self.paths if not p.compiled]


def compile_view(view: Mapping[str, Any], *, engine: Engine = "auto") -> CompiledView:
    """Validate and compile ``view``; raises :class:`ViewDefinitionError` naming the view and JSON path."""
    if isinstance(view, CompiledView):
        return view
    return CompiledView(view, engine=engine)


def run_view(view: Mapping[str, Any] | CompiledView, resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """All rows of ``view`` over ``resources``."""
    cv = view if isinstance(view, CompiledView) else compile_view(view)
    return list(cv.run(resources))


__all__ = ["CompiledView", "Engine", "ResourceNode", "compile_view", "run_view"]
