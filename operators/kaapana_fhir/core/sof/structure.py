"""Validate a ViewDefinition against the SQL-on-FHIR v2 ViewDefinition structure before running it.

Checked: the allowed keys on every level (unknown keys such as a misspelt ``"colum"`` are errors),
JSON types, required elements (``resource``, ``select``, column ``name``/``path``, constant ``name`` and
exactly one ``value[x]``), the ``sql-name`` invariant for view, column and constant names, at most one of
``forEach``/``forEachOrNull``/``repeat`` per select, FHIRPath syntax of every path, ``%name`` references
to undefined constants. Every problem names the view and the JSON path of the element
(``select[0].column[2].path``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kaapana_fhir.core.sof.errors import ViewDefinitionError
from kaapana_fhir.core.sof.fhirpath import BUILTIN_VARIABLES, check_syntax, external_constants

SQL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")

#: CanonicalResource / DomainResource elements a ViewDefinition may carry besides its own
_CANONICAL = {"resourceType", "id", "meta", "implicitRules", "language", "text", "contained", "extension",
              "modifierExtension", "url", "identifier", "version", "versionAlgorithmString",
              "versionAlgorithmCoding", "name", "title", "status", "experimental", "date", "publisher", "contact",
              "description", "useContext", "jurisdiction", "purpose", "copyright", "copyrightLabel"}
_VIEW_KEYS = _CANONICAL | {"resource", "profile", "fhirVersion", "constant", "select", "where"}
_ELEMENT = {"id", "extension", "modifierExtension"}
_SELECT_KEYS = _ELEMENT | {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll"}
_COLUMN_KEYS = _ELEMENT | {"name", "path", "description", "collection", "type", "tag"}
_WHERE_KEYS = _ELEMENT | {"path", "description"}
_TAG_KEYS = _ELEMENT | {"name", "value"}
#: constant value[x] → accepted JSON types
CONSTANT_TYPES: dict[str, tuple[type, ...]] = {
    "valueBase64Binary": (str,), "valueBoolean": (bool,), "valueCanonical": (str,), "valueCode": (str,),
    "valueDate": (str,), "valueDateTime": (str,), "valueDecimal": (int, float), "valueId": (str,),
    "valueInstant": (str,), "valueInteger": (int,), "valueInteger64": (int, str), "valueOid": (str,),
    "valueString": (str,), "valuePositiveInt": (int,), "valueTime": (str,), "valueUnsignedInt": (int,),
    "valueUri": (str,), "valueUrl": (str,), "valueUuid": (str,),
}


class _Checker:
    def __init__(self, view: Mapping[str, Any]) -> None:
        name = view.get("name") if isinstance(view, Mapping) else None
        self.view_name = str(name) if isinstance(name, str) and name else "(unnamed)"
        self.problems: list[tuple[str, str]] = []
        self.constants: set[str] = set()

    def err(self, where: str, msg: str) -> None:
        self.problems.append((where, msg))

    def keys(self, obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for k in obj:
            base = k.removeprefix("_")
            if base not in allowed:
                hint = [a for a in sorted(allowed) if a.lower().startswith(base.lower()[:3])]
                self.err(f"{where}.{k}" if where else k,
                         f"unknown element {k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))

    def string(self, obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        loc = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                self.err(loc, "is required")
            return None
        v = obj[key]
        if not isinstance(v, str) or (required and not v.strip()):
            self.err(loc, f"must be a non-empty string, got {type(v).__name__} {v!r}")
            return None
        return v

    def array(self, obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
        if key not in obj:
            return []
        v = obj[key]
        if not isinstance(v, list):
            self.err(f"{where}.{key}" if where else key, f"must be an array, got {type(v).__name__}")
            return []
        return v

    def path(self, path: str | None, where: str) -> None:
        if path is None:
            return
        try:
            check_syntax(path)
        except Exception as exc:  # noqa: BLE001 - antlr raises several exception types; reported below
            self.err(where, f"invalid FHIRPath {path!r}: {exc}")
            return
        unknown = external_constants(path) - self.constants - BUILTIN_VARIABLES
        unknown = {u for u in unknown if not u.startswith(("vs-", "ext-"))}
        if unknown:
            self.err(where, f"FHIRPath {path!r} uses undefined constant(s) "
                            f"{', '.join('%' + u for u in sorted(unknown))}")

    def sql_name(self, name: str | None, where: str) -> None:
        if name is not None and not SQL_NAME.match(name):
            self.err(where, f"{name!r} is not a valid name (rule sql-name: ^[A-Za-z][A-Za-z0-9_]*$)")

    # ------------------------------------------------------------------ levels
    def view(self, view: Any) -> None:
        if not isinstance(view, Mapping):
            self.err("", f"a ViewDefinition must be a JSON object, got {type(view).__name__}")
            return
        self.keys(view, _VIEW_KEYS, "")
        rt = view.get("resourceType")
        if rt is not None and rt != "ViewDefinition":
            self.err("resourceType", f"must be 'ViewDefinition', got {rt!r}")
        self.sql_name(self.string(view, "name", ""), "name")
        resource = self.string(view, "resource", "", required=True)
        if resource is not None and not _RESOURCE_TYPE.match(resource):
            self.err("resource", f"{resource!r} is not a FHIR resource type name")
        for key in ("profile", "fhirVersion"):
            for i, v in enumerate(self.array(view, key, "")):
                if not isinstance(v, str):
                    self.err(f"{key}[{i}]", "must be a string")
        for i, const in enumerate(self.array(view, "constant", "")):
            self.constant(const, f"constant[{i}]")
        selects = self.array(view, "select", "")
        if not selects and ("select" not in view or isinstance(view.get("select"), list)):
            self.err("select", "is required (at least one select)")
        for i, sel in enumerate(selects):
            self.select(sel, f"select[{i}]")
        for i, w in enumerate(self.array(view, "where", "")):
            loc = f"where[{i}]"
            if not isinstance(w, Mapping):
                self.err(loc, "must be an object")
                continue
            self.keys(w, _WHERE_KEYS, loc)
            self.path(self.string(w, "path", loc, required=True), f"{loc}.path")
            self.string(w, "description", loc)

    def constant(self, const: Any, loc: str) -> None:
        if not isinstance(const, Mapping):
            self.err(loc, "must be an object")
            return
        self.keys(const, _ELEMENT | {"name"} | set(CONSTANT_TYPES), loc)
        name = self.string(const, "name", loc, required=True)
        self.sql_name(name, f"{loc}.name")
        values = [k for k in const if k.startswith("value")]
        if len(values) != 1:
            self.err(loc, f"needs exactly one value[x] ({len(values)} given)")
        for k in values:
            types = CONSTANT_TYPES.get(k)
            v = const[k]
            if types is not None and (not isinstance(v, types) or (bool not in types and isinstance(v, bool))):
                self.err(f"{loc}.{k}", f"has the wrong JSON type {type(v).__name__}")
        if name:
            self.constants.add(name)

    def select(self, sel: Any, loc: str) -> None:
        if not isinstance(sel, Mapping):
            self.err(loc, f"must be an object, got {type(sel).__name__}")
            return
        self.keys(sel, _SELECT_KEYS, loc)
        iters = [k for k in ("forEach", "forEachOrNull", "repeat") if k in sel]
        if len(iters) > 1:
            self.err(loc, f"has {' and '.join(iters)} (rule sql-expressions: at most one of forEach, "
                          "forEachOrNull, repeat)")
        for key in ("forEach", "forEachOrNull"):
            if key in sel:
                self.path(self.string(sel, key, loc, required=True), f"{loc}.{key}")
        if "repeat" in sel:
            rep = sel["repeat"]
            if not isinstance(rep, list) or not rep:
                self.err(f"{loc}.repeat", "must be a non-empty array of FHIRPath strings")
            else:
                for i, p in enumerate(rep):
                    if not isinstance(p, str) or not p.strip():
                        self.err(f"{loc}.repeat[{i}]", f"must be a non-empty string, got {p!r}")
                    else:
                        self.path(p, f"{loc}.repeat[{i}]")
        for i, col in enumerate(self.array(sel, "column", loc)):
            self.column(col, f"{loc}.column[{i}]")
        for i, sub in enumerate(self.array(sel, "select", loc)):
            self.select(sub, f"{loc}.select[{i}]")
        for i, sub in enumerate(self.array(sel, "unionAll", loc)):
            self.select(sub, f"{loc}.unionAll[{i}]")

    def column(self, col: Any, loc: str) -> None:
        if not isinstance(col, Mapping):
            self.err(loc, f"must be an object, got {type(col).__name__}")
            return
        self.keys(col, _COLUMN_KEYS, loc)
        self.sql_name(self.string(col, "name", loc, required=True), f"{loc}.name")
        self.path(self.string(col, "path", loc, required=True), f"{loc}.path")
        self.string(col, "description", loc)
        self.string(col, "type", loc)
        if "collection" in col and not isinstance(col["collection"], bool):
            self.err(f"{loc}.collection", f"must be true or false, got {col['collection']!r}")
        for i, tag in enumerate(self.array(col, "tag", loc)):
            tl = f"{loc}.tag[{i}]"
            if not isinstance(tag, Mapping):
                self.err(tl, "must be an object")
                continue
            self.keys(tag, _TAG_KEYS, tl)
            self.string(tag, "name", tl, required=True)
            self.string(tag, "value", tl, required=True)


def view_problems(view: Any) -> list[tuple[str, str]]:
    """All structure problems of ``view`` as (JSON path, message); empty when valid."""
    c = _Checker(view if isinstance(view, Mapping) else {})
    # constants first, so that paths may reference constants declared after them
    if isinstance(view, Mapping) and isinstance(view.get("constant"), list):
        for const in view["constant"]:
            if isinstance(const, Mapping) and isinstance(const.get("name"), str):
                c.constants.add(const["name"])
    c.view(view)
    return c.problems


def validate_view(view: Any) -> None:
    """Raise :class:`ViewDefinitionError` listing every structure problem of ``view`` (first one as
    ``where``)."""
    problems = view_problems(view)
    if problems:
        name = view.get("name") if isinstance(view, Mapping) else None
        vname = str(name) if isinstance(name, str) and name else "(unnamed)"
        first = problems[0][0]
        msg = "; ".join(f"{w or '(view)'}: {m}" for w, m in problems)
        raise ViewDefinitionError(vname, first, msg if len(problems) > 1 else problems[0][1])
