"""Read FHIR resources from files as a stream and write view rows (pure: local files only).

Inputs (:func:`iter_resources`): NDJSON (``.ndjson``, ``.jsonl``, also ``.gz``; one resource per line, as
written by FHIR Bulk Data ``$export``), a Bundle (``entry[].resource``, nested Bundles followed), a JSON array
of resources or one resource. Every document is read within :mod:`kaapana_fhir.core.limits`: an NDJSON line at
most :data:`MAX_NDJSON_LINE_BYTES`, a whole JSON file at most :data:`MAX_JSON_FILE_BYTES`, nesting, integer
digits and non-finite numbers bounded; errors name the file, the line and the rule.

Outputs (:func:`write_rows`): CSV (lists/objects as JSON text; text that a spreadsheet would run as a formula
is prefixed with ``'``), Parquet (pyarrow; a column whose values do not share one type is written as text),
JSON (an array of row objects) or NDJSON.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kaapana_fhir.core import limits
from kaapana_fhir.exceptions import ConfigError, MappingError

FORMATS = ("csv", "parquet", "json", "ndjson")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
#: longest NDJSON line (one resource) read; the line is refused before it is read whole
MAX_NDJSON_LINE_BYTES = limits.MAX_DOCUMENT_BYTES
#: largest whole-JSON file (Bundle, array, one resource; after gunzip) parsed in memory; larger: use NDJSON
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _ndjson_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of an NDJSON file; a line longer than ``max_line_bytes`` is refused after
    reading at most ``max_line_bytes + 1`` bytes of it."""
    n = 0
    try:
        with _open_binary(path) as fh:
            while True:
                line = fh.readline(max_line_bytes + 1)
                if not line:
                    return
                n += 1
                if len(line) > max_line_bytes and not line.endswith(b"\n"):
                    raise limits.LimitError(f"{path} line {n}", f"NDJSON lines of at most {max_line_bytes} bytes",
                                            "is longer;")
                yield n, line
    except (OSError, EOFError) as exc:  # unreadable, or a corrupt / truncated .gz
        raise MappingError(f"{path} line {n + 1}: cannot be read ({exc}) (rule: a readable NDJSON file, "
                           "gzip-compressed only when named .gz)") from None


def _read_json_file(path: Path, max_bytes: int) -> Any:
    source = str(path)
    try:
        with _open_binary(path) as fh:
            data = fh.read(max_bytes + 1)
    except (OSError, EOFError) as exc:
        raise MappingError(f"{path}: cannot be read ({exc}) (rule: a readable JSON file, gzip-compressed only "
                           "when named .gz)") from None
    if len(data) > max_bytes:
        raise limits.LimitError(source, f"a JSON resource file of at most {max_bytes} bytes (larger: NDJSON, "
                                "one resource per line)", f"is more than {max_bytes} bytes;")
    return limits.loads_json(data, source=source, max_bytes=max_bytes)


def _from_json(obj: Any, where: str) -> Iterator[dict[str, Any]]:
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _from_json(item, f"{where}[{i}]")
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        raise MappingError(f"{where}: not a FHIR resource (no resourceType)")
    if obj["resourceType"] == "Bundle":
        entries = obj.get("entry") or []
        if not isinstance(entries, list):
            raise MappingError(f"{where}: Bundle.entry is a {type(entries).__name__}, not a list (rule: R4 Bundle)")
        for i, entry in enumerate(entries):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if res is not None:
                yield from _from_json(res, f"{where} entry[{i}]")
        return
    yield obj


def iter_resources(paths: Iterable[str | Path], *, max_line_bytes: int = MAX_NDJSON_LINE_BYTES,
                   max_file_bytes: int = MAX_JSON_FILE_BYTES) -> Iterator[dict[str, Any]]:
    """Resources from the files, one at a time (NDJSON is never loaded whole). Hostile or broken input ends in a
    :class:`~kaapana_fhir.core.limits.LimitError` (a ``MappingError``) naming the file, the line and the rule."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"resource file {str(path)!r} does not exist")
        name = path.name.lower().removesuffix(".gz")
        if name.endswith((".ndjson", ".jsonl")):
            for n, line in _ndjson_lines(path, max_line_bytes):
                if not line.strip():
                    continue
                where = f"{path} line {n}"
                yield from _from_json(limits.loads_json(line, source=where, max_bytes=max_line_bytes), where)
        else:
            yield from _from_json(_read_json_file(path, max_file_bytes), str(path))


def _cell(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, sort_keys=True)
    return v


def _safe(v: Any) -> Any:
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def write_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: str | Path | IO[str] | IO[bytes],
               fmt: str) -> int:
    """Write tuples in ``columns`` order; returns the row count. ``out`` may be a path or an open stream
    (text for csv/json/ndjson, binary for parquet)."""
    if fmt not in FORMATS:
        raise ConfigError(f"output format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        return _write_parquet(columns, rows, out)
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with Path(out).open("w", encoding="utf-8", newline="") as fh:
            return _write_text(columns, rows, fh, fmt)
    return _write_text(columns, rows, out, fmt)  # type: ignore[arg-type]


def _write_text(columns: Sequence[str], rows: Iterable[Sequence[Any]], fh: IO[str], fmt: str) -> int:
    n = 0
    if fmt == "csv":
        w = csv.writer(fh)
        w.writerow([_safe(c) for c in columns])
        for r in rows:
            w.writerow([_safe(_cell(v)) for v in r])
            n += 1
        return n
    if fmt == "ndjson":
        for r in rows:
            fh.write(json.dumps(dict(zip(columns, r, strict=True)), ensure_ascii=False) + "\n")
            n += 1
        return n
    fh.write("[")
    for r in rows:
        fh.write(("," if n else "") + "\n" + json.dumps(dict(zip(columns, r, strict=True)), ensure_ascii=False))
        n += 1
    fh.write("\n]\n")
    return n


def _arrow_column(values: list[Any]) -> Any:
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int} or kinds <= {float, int} or kinds <= {bool} or kinds <= {str}:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    if kinds and all(k is list for k in kinds):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict))
                     else str(v) for v in values], type=pa.string())


def _write_parquet(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: Any,
                   metadata: Mapping[str, str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [list(r) for r in rows]
    cols = [_arrow_column([r[i] for r in data]) for i in range(len(columns))]
    table = pa.Table.from_arrays(cols, names=list(columns))
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return len(data)
