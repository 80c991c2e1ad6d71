"""Bounded loaders for user input (pure: no network, no Airflow).

Every file a user, a platform or another tool hands us (mappings, settings, radiomics results, DICOM JSON,
state objects) is parsed through these helpers, so that hostile or broken input ends in one typed error that
names the file and the rule, in bounded time and memory, never in a traceback, a hang or a silent wrong value:

* :func:`load_json` / :func:`loads_json`: a size limit, a nesting-depth limit checked *before* parsing
  (100,000 nested brackets would crash the C parser's recursion), integers of more than
  :data:`MAX_INT_DIGITS` digits refused (Python's own limit raises a bare ``ValueError`` at 4,300 digits), and
  ``NaN``/``Infinity``/``1e309`` refused (they are not JSON numbers, or overflow to ``inf``).
* :func:`finite_number`: a value that must be a number: ``true``/``false`` are refused (``bool`` is an ``int``
  in Python, so ``float(True)`` silently gives 1.0), and so are non-finite values and numbers beyond float range.
* :func:`load_yaml` / :func:`loads_yaml`: ``yaml.SafeLoader`` plus a size limit, a depth limit, **aliases
  refused** (``&a``/``*a``: a 1 KB alias bomb expands to gigabytes) and **every mapping key read as a string**
  (YAML 1.1 reads ``yes:``/``on:``/``1.0:`` as bool/float keys).
* :func:`parse_xml`: ``defusedxml`` with DTDs, entities and external references forbidden, plus a size limit.

The limits are module constants (documented in README "Reliability"); callers may pass tighter ones.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode

from kaapana_fhir.exceptions import MappingError

#: default maximum size of a JSON / YAML / XML document read from a user (bytes)
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: default maximum size of a YAML document (mappings, settings): the pure-Python parser is slow on big input
MAX_YAML_BYTES = 1024 * 1024
#: maximum nesting of arrays/objects (JSON) or collections (YAML) / elements (XML)
MAX_DEPTH = 64
#: maximum number of digits of an integer literal (a DICOM IS has 12, a 64-bit integer 20)
MAX_INT_DIGITS = 40
#: maximum length of a numeric string accepted by :func:`finite_number`
MAX_NUMBER_CHARS = 64

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_INT_DIGITS",
    "MAX_YAML_BYTES",
    "LimitError",
    "check_size",
    "check_json_depth",
    "finite_number",
    "json_decoder",
    "load_json",
    "load_yaml",
    "loads_json",
    "loads_yaml",
    "parse_xml",
    "read_bounded",
]


class LimitError(MappingError):
    """A document breaks a safety rule (size, depth, number range, aliases, DTD). Names the file and the rule."""

    def __init__(self, source: str, rule: str, detail: str = "") -> None:
        self.source = source
        self.rule = rule
        super().__init__(f"{source}: {detail + ' ' if detail else ''}(rule: {rule})")


# ---------------------------------------------------------------------------------------------- raw bytes
def check_size(size: int, source: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
    """Refuse a document larger than ``max_bytes`` before reading or parsing it."""
    if size > max_bytes:
        raise LimitError(source, f"at most {max_bytes} bytes", f"is {size} bytes;")


def read_bounded(path: str | Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """Read a file, refusing it above ``max_bytes`` (checked before reading, and while reading)."""
    p = Path(path)
    try:
        check_size(p.stat().st_size, str(p), max_bytes)
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise LimitError(str(p), "a readable file", f"cannot be read ({exc.strerror or type(exc).__name__});") from None
    check_size(len(data), str(p), max_bytes)
    return data


def _text(data: str | bytes, source: str, max_bytes: int) -> str:
    check_size(len(data), source, max_bytes)
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LimitError(source, "UTF-8 text", f"is not UTF-8 at byte {exc.start};") from None


# ---------------------------------------------------------------------------------------------- JSON
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """Maximum nesting of ``[``/``{`` outside strings (linear scan; no recursion)."""
    depth = deepest = 0
    for ch in _NOT_BRACKETS.sub("", _JSON_STRING.sub('""', text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def json_decoder(source: str, *, max_int_digits: int = MAX_INT_DIGITS, allow_nan: bool = False) -> json.JSONDecoder:
    """A ``json.JSONDecoder`` that refuses long integers and non-finite numbers (``NaN`` too unless
    ``allow_nan``: pyradiomics writes ``NaN`` for undefined features), naming ``source``."""

    def parse_int(s: str) -> int:
        digits = len(s.lstrip("-"))
        if digits > max_int_digits:
            raise LimitError(source, f"integers of at most {max_int_digits} digits",
                             f"has an integer of {digits} digits;")
        return int(s)

    def parse_float(s: str) -> float:
        value = float(s)
        if math.isinf(value):
            raise LimitError(source, "finite numbers (within ±1.8e308)", f"has the number {s[:40]!r};")
        return value

    def parse_constant(s: str) -> Any:
        if s == "NaN" and allow_nan:
            return math.nan
        raise LimitError(source, "finite numbers (Infinity is not a number; NaN only where allowed)", f"has {s!r};")

    return json.JSONDecoder(parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)


def check_json_depth(text: str, source: str, max_depth: int = MAX_DEPTH) -> None:
    if text.count("[") + text.count("{") <= max_depth:  # fast path (one NDJSON line): cannot be deeper
        return
    depth = json_depth(text)
    if depth > max_depth:
        raise LimitError(source, f"JSON nesting at most {max_depth} levels", f"is nested {depth} levels deep;")


def loads_json(data: str | bytes, *, source: str = "<json>", max_bytes: int = MAX_DOCUMENT_BYTES,
               max_depth: int = MAX_DEPTH, max_int_digits: int = MAX_INT_DIGITS, allow_nan: bool = False) -> Any:
    """Parse JSON within the limits; raise :class:`LimitError` naming ``source`` and the rule."""
    text = _text(data, source, max_bytes)
    check_json_depth(text, source, max_depth)
    try:
        return json_decoder(source, max_int_digits=max_int_digits, allow_nan=allow_nan).decode(text)
    except json.JSONDecodeError as exc:
        raise LimitError(source, "well-formed JSON", f"line {exc.lineno} column {exc.colno}: {exc.msg};") from None
    except RecursionError:  # defence in depth; check_json_depth refuses deep documents before
        raise LimitError(source, f"JSON nesting at most {max_depth} levels", "is nested too deep;") from None


def load_json(path: str | Path, **limits: Any) -> Any:
    """:func:`loads_json` of a file (size checked before reading)."""
    max_bytes = limits.get("max_bytes", MAX_DOCUMENT_BYTES)
    return loads_json(read_bounded(path, max_bytes), source=str(path), **limits)


# ---------------------------------------------------------------------------------------------- numbers
def finite_number(value: Any, *, where: str, allow_none: bool = False) -> float | None:
    """``value`` as a finite float, or :class:`LimitError` naming ``where`` (file, row, field) and the rule.

    Accepts int, float and numeric strings (``" 1.5 "``, ``"1e3"``); refuses ``bool`` (``true`` is not a
    number), ``NaN``/``inf``/``1e309``, integers beyond float range and strings longer than
    :data:`MAX_NUMBER_CHARS`. ``None`` and ``""`` give ``None`` when ``allow_none``.
    """
    rule = "a finite number (not a boolean, NaN or infinity)"
    if value is None or (isinstance(value, str) and not value.strip()):
        if allow_none:
            return None
        raise LimitError(where, rule, "is empty;")
    if isinstance(value, bool):
        raise LimitError(where, rule, f"is the boolean {str(value).lower()};")
    if isinstance(value, int):
        if value.bit_length() > 1023:
            raise LimitError(where, rule, "is an integer beyond the float range;")
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LimitError(where, rule, f"is {value!r};")
        return value
    if isinstance(value, str):
        s = value.strip()
        if len(s) > MAX_NUMBER_CHARS:
            raise LimitError(where, rule, f"is a {len(s)}-character text;")
        try:
            f = float(s)
        except ValueError:
            raise LimitError(where, rule, f"is the text {s[:40]!r};") from None
        if not math.isfinite(f):
            raise LimitError(where, rule, f"is {s!r};")
        return f
    raise LimitError(where, rule, f"is a {type(value).__name__};")


# ---------------------------------------------------------------------------------------------- YAML
class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, bounds nesting and reads every mapping key as a string."""

    source = "<yaml>"
    max_depth = MAX_DEPTH
    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            mark = event.start_mark
            raise LimitError(self.source, "no YAML aliases/anchors (alias bombs)",
                             f"line {mark.line + 1} column {mark.column + 1}: alias *{event.anchor};")
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None):
            mark = event.start_mark
            raise LimitError(self.source, "no YAML aliases/anchors (alias bombs)",
                             f"line {mark.line + 1} column {mark.column + 1}: anchor &{event.anchor};")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = event.start_mark
                raise LimitError(self.source, f"YAML nesting at most {self.max_depth} levels",
                                 f"line {mark.line + 1}: nested too deep;")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            mark = node.start_mark
            raise LimitError(self.source, "a YAML mapping",
                             f"line {mark.line + 1}: a {type(node).__name__} where a mapping is expected;")
        self.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                mark = key_node.start_mark
                raise LimitError(self.source, "mapping keys are plain text",
                                 f"line {mark.line + 1} column {mark.column + 1}: a {key_node.id} as key;")
            out[str(key_node.value)] = self.construct_object(value_node, deep=deep)
        return out



def loads_yaml(data: str | bytes, *, source: str = "<yaml>", max_bytes: int = MAX_YAML_BYTES,
               max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load`` within the limits; mapping keys are strings; aliases are refused."""
    text = _text(data, source, max_bytes)
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here already
        loader.source, loader.max_depth = source, max_depth
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise LimitError(source, "well-formed YAML", f"{where}{exc.problem or exc.context};") from None
    except yaml.YAMLError as exc:
        raise LimitError(source, "well-formed YAML", f"{type(exc).__name__};") from None
    except RecursionError:
        raise LimitError(source, f"YAML nesting at most {max_depth} levels", "is nested too deep;") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | Path, **limits: Any) -> Any:
    """:func:`loads_yaml` of a file (size checked before reading)."""
    max_bytes = limits.get("max_bytes", MAX_YAML_BYTES)
    return loads_yaml(read_bounded(path, max_bytes), source=str(path), **limits)


# ---------------------------------------------------------------------------------------------- XML
_XML_DECL = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_DECL_B = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xml(data: str | bytes, *, source: str = "<xml>", max_bytes: int = MAX_DOCUMENT_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """Parse XML with ``defusedxml`` (no DTD, no entities, no external references); returns the root Element."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    check_size(len(data), source, max_bytes)
    if not (data.strip() if isinstance(data, (str, bytes)) else data):
        raise LimitError(source, "well-formed XML", "empty file;")
    decl = _XML_DECL.search(data) if isinstance(data, str) else _XML_DECL_B.search(data)
    if decl:
        raise LimitError(source, "XML without DTD, entities or external references",
                         "XML has a DOCTYPE/ENTITY declaration;")
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise LimitError(source, "XML without DTD, entities or external references",
                         f"XML has a DOCTYPE/ENTITY declaration ({type(exc).__name__});") from None
    except ParseError as exc:
        raise LimitError(source, "well-formed XML", f"not well-formed XML ({exc});") from None
    except RecursionError:
        raise LimitError(source, f"XML nesting at most {max_depth} levels", "is nested too deep;") from None
    stack = [(root, 1)]
    while stack:  # iterative depth check (no recursion on hostile trees)
        el, d = stack.pop()
        if d > max_depth:
            raise LimitError(source, f"XML nesting at most {max_depth} levels", f"<{el.tag}> at depth {d};")
        stack.extend((child, d + 1) for child in el)
    return root


# ---------------------------------------------------------------------------------------------- output paths
def check_output_paths(outputs: Mapping[str, str | Path | None],
                       inputs: Mapping[str, str | Path | None] | None = None) -> None:
    """Refuse two outputs that resolve to one file, and an output that would overwrite an input.

    ``outputs`` / ``inputs``: what each path is (e.g. ``{"--out": ..., "series table": ...}``); the error names
    both roles and the path (rule: no flow writes two outputs to one path or overwrites an input). Empty
    entries (an option not given) are skipped."""
    from kaapana_fhir.exceptions import ConfigError

    seen: dict[Path, str] = {}
    for role, path in (inputs or {}).items():
        if not path:
            continue
        seen.setdefault(Path(path).resolve(), f"input {role}")
    for role, path in outputs.items():
        if not path:
            continue
        p = Path(path).resolve()
        if p in seen:
            raise ConfigError(f"{role} {p} would overwrite the {seen[p]} (rule: no flow writes two outputs to one "
                              "path or overwrites an input; choose another file name)")
        seen[p] = role


# ---------------------------------------------------------------------------------------------- files beside
def read_beside(base_dir: str | Path, relative: str, *, what: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> str:
    """Read a file that a user file names relative to itself (e.g. a mapping's ``map_file``), as UTF-8.

    The path must be relative and stay inside ``base_dir`` after resolving links: ``../``, absolute paths and
    links that leave the folder are refused by name (rule: files named by a mapping stay in its folder)."""
    from kaapana_fhir.exceptions import ConfigError

    rel = str(relative)
    base = Path(base_dir).resolve()
    if not rel or "\x00" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ConfigError(f"{what} {rel!r}: must be a relative path inside {base} without '..' "
                          "(rule: files named by a mapping stay in its folder)")
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise ConfigError(f"{what} {rel!r} resolves to {target}, outside {base} "
                          "(rule: files named by a mapping stay in its folder)")
    data = read_bounded(target, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {target}: not UTF-8 text at byte {exc.start}") from None


def load_json_object(path: str | Path, *, what: str, hint: str = "") -> dict[str, Any]:
    """A JSON file that must hold one object (a conf, settings, a ViewDefinition), read within the limits.

    Every failure is a ``ConfigError`` naming the file, what it should be and ``hint`` (who writes it)."""
    from kaapana_fhir.exceptions import ConfigError

    suffix = f"; {hint}" if hint else ""
    try:
        data = load_json(path)
    except (ValueError, MappingError) as exc:
        raise ConfigError(f"{path}: not valid JSON for {what} ({exc}){suffix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object, got {type(data).__name__}{suffix}")
    return data
