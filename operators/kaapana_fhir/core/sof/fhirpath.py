"""FHIRPath support shared by the compiler and the fallback engine (fhirpathpy, R4 model).

* :func:`check_syntax` parses with fhirpathpy's ANTLR parser and raises on any error (fhirpathpy itself
  recovers silently from syntax errors);
* :func:`reference_key` and :func:`resource_key`: the SQL-on-FHIR ``getReferenceKey()`` /
  ``getResourceKey()`` functions (the resource id; the id part of ``Reference.reference``);
* :func:`low_boundary` / :func:`high_boundary`: FHIRPath ``lowBoundary()`` / ``highBoundary()`` for decimal,
  date, dateTime, instant and time values (the SQL-on-FHIR "experimental" functions);
* :class:`Model`: type lookups in the R4 model (element types, choice types, backbone elements) used by
  the compiler to resolve ``value.ofType(Quantity)`` to ``valueQuantity`` statically;
* :class:`FallbackPath`: any FHIRPath expression evaluated by fhirpathpy (the compiler's fallback).
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser import parse as _fp_parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

R4 = _fhirpath_models["r4"]

#: environment variables every view may use besides its constants
BUILTIN_VARIABLES = frozenset({"resource", "rootResource", "context", "rowIndex", "ucum", "sct", "loinc"})


class _RaiseOnError(ErrorListener):  # type: ignore[misc]
    def syntaxError(self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str,
                    e: Any) -> None:
        raise SyntaxError(f"column {column}: {msg}")


def check_syntax(path: str) -> None:
    """Raise ``SyntaxError`` when ``path`` is not a complete FHIRPath expression."""
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


def parse(path: str) -> dict[str, Any]:
    """fhirpathpy's AST of ``path`` (call :func:`check_syntax` first)."""
    tree: dict[str, Any] = _fp_parse(path)  # type: ignore[no-untyped-call]
    return tree


_EXTERNAL_CONSTANT = re.compile(r"%(`[^`]*`|'[^']*'|[A-Za-z_][A-Za-z0-9_]*)")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")


def external_constants(path: str) -> set[str]:
    """Names used as ``%name`` in ``path`` (string literals ignored)."""
    names = set()
    for m in _EXTERNAL_CONSTANT.finditer(_STRING.sub("''", path)):
        names.add(m.group(1).strip("`'"))
    return names


# ---------------------------------------------------------------------- SQL-on-FHIR key functions
def reference_key(reference: Any, rtype: str | None = None) -> str | None:
    if isinstance(reference, str):
        return _reference_key(reference, rtype)
    return None


@functools.lru_cache(maxsize=65536)
def _reference_key(reference: str, rtype: str | None) -> str | None:
    """Key of ``Reference.reference``: ``Patient/1``, ``http://x/fhir/Patient/1/_history/2`` → ``1``.

    ``None`` for a missing, contained (``#x``) or ``urn:`` reference, and when ``rtype`` is given and the
    reference names another resource type.
    """
    if not reference or not isinstance(reference, str) or reference.startswith(("#", "urn:")):
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


def resource_key(resource: Any) -> str | None:
    """Key of a resource (its ``id``)."""
    if isinstance(resource, Mapping):
        rid = resource.get("id")
        return rid if isinstance(rid, str) and rid else None
    return None


# ---------------------------------------------------------------------- boundaries
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME = re.compile(r"^(\d{4}(?:-\d{2}(?:-\d{2})?)?)(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?"
                       r"(Z|[+-]\d{2}:\d{2})?$")
_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$")


def _decimal_boundary(value: Any, high: bool) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    exp = d.as_tuple().exponent
    places = -exp if isinstance(exp, int) and exp < 0 else 0
    half = Decimal(5) * Decimal(10) ** -(places + 1)
    return d + half if high else d - half


def _date_boundary(text: str, high: bool) -> str | None:
    m = _DATE.match(text)
    if not m:
        return None
    year, month, day = m.group(1), m.group(2), m.group(3)
    if month is None:
        month = "12" if high else "01"
    if day is None:
        day = f"{calendar.monthrange(int(year), int(month))[1]:02d}" if high else "01"
    return f"{year}-{month}-{day}"


def _time_part(hh: str | None, mm: str | None, ss: str | None, frac: str | None, high: bool) -> str:
    hh = hh or ("23" if high else "00")
    mm = mm or ("59" if high else "00")
    ss = ss or ("59" if high else "00")
    if frac is None:
        frac = "999" if high else "000"
    else:
        frac = (frac + ("9" if high else "0") * 3)[:3]
    return f"{hh}:{mm}:{ss}.{frac}"


def _datetime_boundary(text: str, high: bool) -> str | None:
    m = _DATETIME.match(text)
    if not m:
        return None
    date = _date_boundary(m.group(1), high)
    if date is None:
        return None
    tz = m.group(6) or ("-12:00" if high else "+14:00")
    return f"{date}T{_time_part(m.group(2), m.group(3), m.group(4), m.group(5), high)}{tz}"


def _time_boundary(text: str, high: bool) -> str | None:
    m = _TIME.match(text)
    if not m:
        return None
    return _time_part(m.group(1), m.group(2), m.group(3), m.group(4), high)


def boundary(value: Any, kind: str | None, high: bool) -> Any:
    """``lowBoundary()`` (``high=False``) / ``highBoundary()`` of one value; ``kind`` is the FHIR type name
    (``decimal``, ``date``, ``dateTime``, ``instant``, ``time``) or ``None`` to guess it from the value."""
    if isinstance(value, FP_Type):
        value = str(value)
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return _decimal_boundary(value, high) if kind in (None, "decimal", "integer") else None
    if not isinstance(value, str):
        return None
    if kind == "date":
        return _date_boundary(value, high)
    if kind in ("dateTime", "instant"):
        return _datetime_boundary(value, high)
    if kind == "time":
        return _time_boundary(value, high)
    if kind is None:
        if _DATE.match(value):
            return _date_boundary(value, high)
        if "T" in value:
            return _datetime_boundary(value, high)
        if _TIME.match(value):
            return _time_boundary(value, high)
    return None


# ---------------------------------------------------------------------- plain values
def plain(value: Any) -> Any:
    """A fhirpathpy result item as plain JSON-like Python (Decimal → int/float, FHIRPath dates → str)."""
    if isinstance(value, ResourceNode):
        value = value.data
    if isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, Decimal):
        if value == value.to_integral_value() and "." not in str(value) and "E" not in str(value):
            return int(value)
        return float(value)
    if isinstance(value, FP_Type):
        return str(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------------- R4 model
_PRIMITIVES = {"boolean", "integer", "integer64", "string", "decimal", "uri", "url", "canonical", "base64Binary",
               "instant", "date", "dateTime", "time", "code", "oid", "id", "markdown", "unsignedInt",
               "positiveInt", "uuid", "xhtml"}
_SYSTEM = {"System.String": "string", "System.Boolean": "boolean", "System.Integer": "integer",
           "System.Decimal": "decimal", "System.Date": "date", "System.DateTime": "dateTime",
           "System.Time": "time"}


class Model:
    """Static type lookups in fhirpathpy's R4 model."""

    def __init__(self, data: Mapping[str, Any] = R4) -> None:
        self.path2type: Mapping[str, str] = data["path2Type"]
        self.choices: Mapping[str, list[str]] = data["choiceTypePaths"]
        self.elsewhere: Mapping[str, str] = data["pathsDefinedElsewhere"]
        self.parents: Mapping[str, str] = data["type2Parent"]
        self.backbone: set[str] = set()
        for p in list(self.path2type) + list(self.choices):
            parts = p.split(".")
            for i in range(2, len(parts)):
                self.backbone.add(".".join(parts[:i]))

    def is_resource(self, name: str) -> bool:
        t: str | None = name
        seen = 0
        while t and seen < 10:
            if t in ("Resource", "DomainResource"):
                return True
            t = self.parents.get(t)
            seen += 1
        return False

    def member(self, type_path: str, name: str) -> tuple[str, Any] | None:
        """What ``name`` on a value of ``type_path`` is: ``("choice", (element path, [types]))``,
        ``("primitive", fhir type)``, ``("complex", type path)`` or None when unknown."""
        t: str | None = type_path
        for _ in range(12):
            if t is None:
                return None
            p = f"{t}.{name}"
            if p in self.elsewhere:
                return ("complex", self.elsewhere[p])
            if p in self.choices:
                return ("choice", (p, list(self.choices[p])))
            if p in self.path2type:
                kind = self.path2type[p]
                if kind in _SYSTEM:
                    return ("primitive", _SYSTEM[kind])
                if kind in _PRIMITIVES:
                    return ("primitive", kind)
                if kind in ("Resource", "BackboneElement", "Element"):
                    return None if kind == "Resource" else ("complex", p)
                return ("complex", kind)
            if p in self.backbone:
                return ("complex", p)
            if "." in t:  # backbone element: inherits BackboneElement / Element members
                t = "BackboneElement"
            else:
                t = self.parents.get(t)
        return None


MODEL = Model()


# ---------------------------------------------------------------------- fallback (fhirpathpy)
def _fn_resource_key(inputs: list[Any]) -> list[Any]:
    return [k for k in (resource_key(i) for i in inputs) if k]


def _fn_reference_key(inputs: list[Any], type_spec: Any = None) -> list[Any]:
    rtype = getattr(type_spec, "name", None) if type_spec is not None else None
    if isinstance(rtype, str) and "." in rtype:
        rtype = rtype.split(".")[-1]
    out = []
    for i in inputs:
        if isinstance(i, Mapping):
            key = reference_key(i.get("reference"), rtype)
            if key:
                out.append(key)
    return out


def _fn_join(inputs: list[Any], separator: Any = "") -> list[Any]:
    sep = separator if isinstance(separator, str) else "" if separator in (None, []) else str(separator)
    parts = []
    for i in inputs:
        v = plain(i)
        if not isinstance(v, str):
            raise TypeError(f"join() needs strings, got {type(v).__name__}")
        parts.append(v)
    return ["".join(parts) if not sep else sep.join(parts)]


def _fn_low(inputs: list[Any]) -> list[Any]:
    return [b for b in (boundary(i, None, False) for i in inputs) if b is not None]


def _fn_high(inputs: list[Any]) -> list[Any]:
    return [b for b in (boundary(i, None, True) for i in inputs) if b is not None]


FALLBACK_FUNCTIONS: dict[str, dict[str, Any]] = {
    "getResourceKey": {"fn": _fn_resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _fn_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "join": {"fn": _fn_join, "arity": {0: [], 1: ["String"]}},
    "lowBoundary": {"fn": _fn_low, "arity": {0: []}},
    "highBoundary": {"fn": _fn_high, "arity": {0: []}},
}
_OPTIONS = {"userInvocationTable": FALLBACK_FUNCTIONS, "returnRawData": True}


class FallbackPath:
    """A FHIRPath expression evaluated by fhirpathpy; the focus keeps its type path so that choice
    elements (``value.ofType(Quantity)``) resolve below backbone elements too."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tree = parse(path)

    def __call__(self, focus: Any, type_path: str | None, variables: dict[str, Any]) -> list[Any]:
        node = focus if isinstance(focus, ResourceNode) or type_path is None else \
            ResourceNode.create_node(focus, type_path)  # type: ignore[no-untyped-call]
        out = apply_parsed_path(node, self.tree, variables, R4, _OPTIONS)  # type: ignore[no-untyped-call]
        return [x for x in out if not (isinstance(x, ResourceNode) and isinstance(x.data, Mapping)
                                       and list(x.data) == ["extension"])]
