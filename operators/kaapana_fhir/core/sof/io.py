"""Read FHIR resources from files as a stream and write view rows (pure: local files only).

Inputs (:func:`iter_resources`): NDJSON (``.ndjson``, ``.jsonl``, also ``.gz``; one resource per line, as
written by FHIR Bulk Data ``$export``), a Bundle (``entry[].resource``, nested Bundles followed), a JSON array
of resources or one resource. Outputs (:func:`write_rows`): CSV (lists/objects as JSON text; text that a
spreadsheet would run as a formula is prefixed with ``'``), Parquet (pyarrow; a column whose values do not
share one type is written as text), JSON (an array of row objects) or NDJSON.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kaapana_fhir.exceptions import ConfigError, MappingError

FORMATS = ("csv", "parquet", "json", "ndjson")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _from_json(obj: Any, where: str) -> Iterator[dict[str, Any]]:
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _from_json(item, f"{where}[{i}]")
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        raise MappingError(f"{where}: not a FHIR resource (no resourceType)")
    if obj["resourceType"] == "Bundle":
        for i, entry in enumerate(obj.get("entry") or []):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if res is not None:
                yield from _from_json(res, f"{where} entry[{i}]")
        return
    yield obj


def iter_resources(paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Resources from the files, one at a time (NDJSON is never loaded whole)."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"resource file {str(path)!r} does not exist")
        name = path.name.lower().removesuffix(".gz")
        if name.endswith((".ndjson", ".jsonl")):
            with _open_text(path) as fh:
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise MappingError(f"{path}:{n}: not valid JSON ({exc})") from None
                    yield from _from_json(obj, f"{path}:{n}")
        else:
            with _open_text(path) as fh:
                try:
                    obj = json.load(fh)
                except ValueError as exc:
                    raise MappingError(f"{path}: not valid JSON ({exc})") from None
            yield from _from_json(obj, str(path))


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
