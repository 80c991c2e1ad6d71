"""Reading clinical tables as streams of rows: CSV, Excel ``.xlsx`` and REDCap record exports.

* CSV: encoding detected from a BOM (UTF-8, UTF-16) or by trying UTF-8 then Windows-1252/Latin-1 on a
  sample; delimiter detected from the header line among ``, ; TAB |`` unless the mapping fixes it;
  quoted fields may contain delimiters and newlines (the :mod:`csv` module parses them). Rows stream:
  memory does not grow with the file.
* ``.xlsx``: openpyxl in read-only mode, the mapping's sheet (default: first); formulas are read as
  their text and never evaluated. Zip-bomb guard before parsing (:func:`check_xlsx_limits`: total uncompressed
  size, compression ratio, declared row count). Memory is constant in the rows:
  - the workbook's shared-strings table (one entry per distinct text cell, which openpyxl loads whole as a list)
    is streamed once per table into :class:`SharedStrings`: in memory up to :data:`SHARED_STRINGS_IN_MEMORY`
    entries, beyond that in a private temporary SQLite database (deleted when the table is dropped);
  - the sheet is not pre-scanned for its size (openpyxl's read-only reader parses a sheet without a
    ``<dimension>`` element whole on every open and keeps every cleared row element: +90 MB and a 60 s pause
    per 1M rows, measured);
  - the rows are parsed by openpyxl's own cell parser (types, dates by number format, formulas as text), and
    each parsed ``<row>`` is dropped from the XML tree.
* REDCap: CSV exports are CSV; JSON exports are a list of record objects (all values strings).

Row numbers in errors are 1-based record numbers with the header as row 1 (for CSV with quoted
newlines, the record number, not the physical line).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, overload
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException

from kaapana_fhir.core import limits
from kaapana_fhir.exceptions import MappingError

#: Largest accepted cell (characters); longer fields are rejected with a clear error.
MAX_FIELD_CHARS = 1_000_000
DELIMITERS = (",", ";", "\t", "|")
_SAMPLE = 256 * 1024
log = logging.getLogger(__name__)

if csv.field_size_limit() < MAX_FIELD_CHARS:
    csv.field_size_limit(MAX_FIELD_CHARS)

Source = "bytes | str | os.PathLike[str]"


@dataclass
class Table:
    """A re-iterable table: ``header`` and a factory of ``(row_number, {column: raw value})`` iterators."""

    name: str
    header: list[str]
    open_rows: Callable[[], Iterator[tuple[int, dict[str, Any]]]]
    encoding: str | None = None
    delimiter: str | None = None

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return self.open_rows()


def _head(source: Any, n: int = _SAMPLE) -> bytes:
    if isinstance(source, bytes):
        return source[:n]
    with open(source, "rb") as fh:
        return fh.read(n)


def _size(source: Any) -> int:
    return len(source) if isinstance(source, bytes) else os.path.getsize(source)


def detect_encoding(sample: bytes) -> str:
    """``utf-8-sig`` / ``utf-16`` by BOM, else ``utf-8`` if the sample decodes, else ``cp1252``/``latin-1``."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def detect_delimiter(header_line: str) -> str:
    """The candidate delimiter occurring most often in the header line outside quotes (``,`` if none)."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for ch in header_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _text_stream(source: Any, encoding: str) -> io.TextIOBase:
    raw = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def read_csv(source: Any, *, name: str = "table", delimiter: str | None = None,
             encoding: str | None = None) -> Table:
    """Open a CSV (bytes or path) as a streaming :class:`Table`; header cells are stripped."""
    if _size(source) == 0:
        raise MappingError(f"{name}: file is empty (0 bytes) (rule: a table needs a header and data rows)")
    head = _head(source)
    if head.startswith(b"PK\x03\x04") or head.lstrip().startswith((b"<?xml", b"<ODM")):
        kind = "an Excel workbook (zip)" if head.startswith(b"PK") else "an XML document"
        raise MappingError(f"{name}: row 1: the file is {kind}, not CSV text (rule: source.format matches the "
                           f"file; use format: {'xlsx' if head.startswith(b'PK') else 'odm'} or auto)")
    enc = encoding or detect_encoding(head)
    with _text_stream(source, enc) as fh:
        try:
            first = fh.readline()
        except UnicodeDecodeError as exc:
            raise MappingError(f"{name}: cannot decode as {enc}: {exc.reason} (rule: encoding)") from None
    first = first.lstrip("\ufeff")
    delim = delimiter or detect_delimiter(first)
    header = [h.strip().lstrip("\ufeff") for h in next(csv.reader([first], delimiter=delim), [])]
    if not any(header):
        raise MappingError(f"{name}: row 1: header is empty (rule: first row holds the column names)")

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with _text_stream(source, enc) as fh:
            reader = csv.reader(fh, delimiter=delim)
            n = 0
            try:
                for n, rec in enumerate(reader, start=1):
                    if n == 1:
                        continue
                    yield n, dict(zip(header, rec, strict=False)) | ({"__extra__": rec[len(header):]}
                                                                      if len(rec) > len(header) else {})
            except csv.Error as exc:
                raise MappingError(f"{name}: row {n + 1}: unreadable CSV record: {exc} "
                                   f"(rule: fields <= {MAX_FIELD_CHARS} characters, balanced quotes)") from None
            except UnicodeDecodeError as exc:
                raise MappingError(f"{name}: row {n + 1}: cannot decode as {enc}: {exc.reason} "
                                   "(rule: one encoding per file)") from None

    return Table(name, header, rows, encoding=enc, delimiter=delim)


def _cell(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return value  # str, None, datetime/date (parsed by values.parse_date)


#: shared strings kept in a Python list; beyond this many the table moves to a temporary SQLite database
SHARED_STRINGS_IN_MEMORY = 50_000
#: a progress line at least this often while a large shared-strings table is read (seconds)
_PROGRESS_EVERY_S = 5.0


class SharedStrings(Sequence[str]):
    """An ``.xlsx`` shared-strings table read as a stream: a list while small, a SQLite table when large.

    openpyxl's worksheet parser only indexes the table (``strings[i]``), so this object stands in for the list
    openpyxl would build. Beyond ``in_memory`` entries every entry lives in a private temporary on-disk SQLite
    database (``sqlite3.connect("")``: SQLite deletes it when the connection closes), so memory stays flat in
    the number of distinct text cells.
    """

    def __init__(self, in_memory: int | None = None) -> None:
        self._limit = SHARED_STRINGS_IN_MEMORY if in_memory is None else in_memory
        self._mem: list[str] = []
        self._db: sqlite3.Connection | None = None
        self._n = 0
        self._batch: list[tuple[int, str]] = []

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def append(self, text: str) -> None:
        if self._db is None and self._n >= self._limit:
            db = sqlite3.connect("", check_same_thread=False)
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE s (i INTEGER PRIMARY KEY, t TEXT NOT NULL)")
            db.executemany("INSERT INTO s VALUES (?, ?)", enumerate(self._mem))
            self._mem = []
            self._db = db
        if self._db is None:
            self._mem.append(text)
        else:
            self._batch.append((self._n, text))
            if len(self._batch) >= 10_000:
                self._flush()
        self._n += 1

    def _flush(self) -> None:
        if self._db is not None and self._batch:
            self._db.executemany("INSERT INTO s VALUES (?, ?)", self._batch)
            self._batch = []

    def finish(self) -> None:
        self._flush()
        if self._db is not None:
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"shared string {i} out of range (table has {self._n})")
        if self._db is None:
            return self._mem[i]
        row = self._db.execute("SELECT t FROM s WHERE i = ?", (i,)).fetchone()
        return str(row[0])


def read_shared_strings(src: IO[bytes], *, name: str = "table",
                        in_memory: int | None = None) -> SharedStrings:
    """Stream ``xl/sharedStrings.xml`` (defusedxml, elements dropped as read) into a :class:`SharedStrings`."""
    from defusedxml.ElementTree import iterparse
    from openpyxl.cell.text import Text
    from openpyxl.xml.constants import SHEET_MAIN_NS

    si = f"{{{SHEET_MAIN_NS}}}si"
    out = SharedStrings(in_memory)
    t0 = last = time.monotonic()
    root = None
    for event, node in iterparse(src, events=("start", "end")):
        if root is None:
            root = node
        if event == "end" and node.tag == si:
            out.append(Text.from_tree(node).content.replace("x005F_", ""))
            root.clear()  # the parsed <si> elements are not kept under the root
            if len(out) % 1_000 == 0 and time.monotonic() - last >= _PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info("%s: reading shared strings: %d in %.0f s", name, len(out), last - t0)
    out.finish()
    if out.spilled:
        log.info("%s: %d shared strings moved to a temporary SQLite table (constant memory)", name, len(out))
    return out


def _streaming_reader(source: Any, strings: SharedStrings | None, name: str) -> Any:
    """An openpyxl ``ExcelReader`` (read-only) whose shared strings come from :func:`read_shared_strings`."""
    from openpyxl.reader.excel import ExcelReader
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet
    from openpyxl.xml.constants import SHARED_STRINGS

    class _LazySheet(ReadOnlyWorksheet):  # type: ignore[misc]
        def _get_size(self) -> None:
            """Not computed: without a ``<dimension>`` element openpyxl would parse the whole sheet here (keeping
            every row element: +90 MB and one extra pass per 1M rows); the rows are streamed by _sheet_rows."""

    class _Reader(ExcelReader):  # type: ignore[misc]
        def read_worksheets(self) -> None:
            for sheet, rel in self.parser.find_sheets():
                if rel.target not in self.valid_files or "chartsheet" in rel.Type:
                    continue
                ws = _LazySheet(self.wb, sheet.name, rel.target, self.shared_strings)
                ws.sheet_state = sheet.state
                self.wb._sheets.append(ws)

        def read_strings(self) -> None:
            if strings is not None:
                self.shared_strings = strings
                return
            ct = self.package.find(SHARED_STRINGS)
            if ct is not None:
                with self.archive.open(ct.PartName[1:]) as src:
                    self.shared_strings = read_shared_strings(src, name=name)

    fh = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    return _Reader(fh, read_only=True, data_only=False)


def _sheet_rows(wb: Any, ws: Any, name: str) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(row number, cells)`` of a read-only worksheet, each ``<row>`` dropped from the XML tree once parsed.

    The cells come from openpyxl's ``WorkSheetParser.parse_row`` (shared strings, inline strings, booleans,
    errors, dates by the cell's number format, formulas as ``=`` text), the parser read-only openpyxl itself uses.
    """
    from defusedxml.ElementTree import iterparse
    from openpyxl.worksheet._reader import ROW_TAG, WorkSheetParser
    from openpyxl.xml.constants import SHEET_MAIN_NS

    sheet_data = f"{{{SHEET_MAIN_NS}}}sheetData"
    with wb._archive.open(ws._worksheet_path) as src:
        parser = WorkSheetParser(src, ws._shared_strings, data_only=False, epoch=wb.epoch,
                                 date_formats=wb._date_formats, timedelta_formats=wb._timedelta_formats)
        parent = None
        idx = 0
        try:
            for event, el in iterparse(src, events=("start", "end")):
                if event == "start":
                    if el.tag == sheet_data:
                        parent = el
                    continue
                if el.tag == ROW_TAG:
                    idx, cells = parser.parse_row(el)
                    parser.row_dimensions.clear()
                    if parent is not None:
                        parent.clear()
                    yield idx, cells
        except (ParseError, DefusedXmlException, ValueError, IndexError, KeyError) as exc:
            raise MappingError(f"{name}: row {idx + 1}: unreadable worksheet XML ({type(exc).__name__}: "
                               f"{str(exc)[:200]}) (rule: Excel 2007+ format; no DTDs or entities)") from None


def read_xlsx(source: Any, *, name: str = "table", sheet: str | None = None) -> Table:
    """Open an ``.xlsx`` sheet (openpyxl read-only; formulas kept as text, never evaluated).

    The shared-strings table is read once (:func:`read_shared_strings`) and shared by every pass over the rows.
    """
    import zipfile

    from openpyxl.utils.exceptions import InvalidFileException

    if _size(source) == 0:
        raise MappingError(f"{name}: file is empty (0 bytes) (rule: a table needs a header and data rows)")
    check_xlsx_limits(source, name=name, sheet=sheet)
    strings: list[SharedStrings | None] = [None]

    def _open() -> Any:
        try:
            reader = _streaming_reader(source, strings[0], name)
            reader.read()
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError, ParseError) as exc:
            xml = exc if isinstance(exc, (ParseError, DefusedXmlException)) else exc.__cause__
            if isinstance(xml, (ParseError, DefusedXmlException)):  # openpyxl wraps them in a ValueError
                raise MappingError(f"{name}: unreadable XML in the workbook ({type(xml).__name__}: {xml}) "
                                   "(rule: Excel 2007+ format; no DTDs or entities)") from None
            raise MappingError(f"{name}: not a readable .xlsx workbook ({type(exc).__name__}) "
                               "(rule: Excel 2007+ format)") from None
        if isinstance(reader.shared_strings, SharedStrings):
            strings[0] = reader.shared_strings
        wb = reader.wb
        if sheet and sheet not in wb.sheetnames:
            raise MappingError(f"{name}: sheet {sheet!r} not found (sheets: {wb.sheetnames}) (rule: source.sheet)")
        return wb, wb[sheet] if sheet else wb.worksheets[0]

    wb, ws = _open()
    try:
        first = next(_sheet_rows(wb, ws, name), None)
    finally:
        wb.close()
    if not first or first[0] != 1 or not first[1]:
        raise MappingError(f"{name}: sheet is empty (rule: first row holds the column names)")
    cells = {c["column"]: c["value"] for c in first[1]}
    header = [str(cells[c]).strip() if cells.get(c) is not None else "" for c in range(1, max(cells) + 1)]
    width = len(header)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        wb2, ws2 = _open()
        try:
            last = 1
            for idx, row in _sheet_rows(wb2, ws2, name):
                if idx <= last:
                    continue
                for gap in range(last + 1, idx):  # rows missing from the XML are empty rows
                    yield gap, dict.fromkeys(header)
                last = idx
                rec: list[Any] = [None] * width
                for c in row:
                    if c["column"] <= width:
                        rec[c["column"] - 1] = c["value"]
                yield idx, {h: _cell(v) for h, v in zip(header, rec, strict=True)}
        finally:
            wb2.close()

    table = Table(name, header, rows)
    if strings[0] is not None:
        weakref.finalize(table, strings[0].close)
    return table


#: largest total uncompressed size of an .xlsx (zip-bomb guard, checked before parsing)
MAX_XLSX_UNCOMPRESSED = 2 * 1024**3
#: largest compression ratio of one member (a real sheet compresses ~5-20x; bombs 1000x+)
MAX_XLSX_RATIO = 200
#: most rows in a sheet (from its <dimension> element, checked before parsing)
MAX_XLSX_ROWS = 2_000_000


def check_xlsx_limits(source: Any, *, name: str, sheet: str | None = None, max_uncompressed: int | None = None,
                      max_rows: int | None = None) -> None:
    """Refuse an ``.xlsx`` whose members would inflate too far or whose sheet declares too many rows.

    Reads only the zip directory and the first bytes of each worksheet (its ``<dimension ref="A1:K1000">``);
    nothing is decompressed in full. Raises :class:`MappingError` naming the limit.
    """
    import re
    import zipfile

    limit = MAX_XLSX_UNCOMPRESSED if max_uncompressed is None else max_uncompressed
    rows_limit = MAX_XLSX_ROWS if max_rows is None else max_rows
    fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    try:
        try:
            zf = zipfile.ZipFile(fh)
        except zipfile.BadZipFile:
            raise MappingError(f"{name}: not a readable .xlsx workbook (BadZipFile) "
                               "(rule: Excel 2007+ format)") from None
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > limit:
            raise MappingError(f"{name}: workbook inflates to {total} bytes (rule: xlsx uncompressed size at most "
                               f"{limit} bytes)")
        for i in infos:
            if i.file_size > 10 * 1024 * 1024 and i.compress_size and i.file_size / i.compress_size > MAX_XLSX_RATIO:
                raise MappingError(f"{name}: member {i.filename} compresses {i.file_size // i.compress_size}:1 "
                                   f"(rule: xlsx compression ratio at most {MAX_XLSX_RATIO}:1, zip-bomb guard)")
        for i in infos:
            if not re.match(r"xl/worksheets/sheet\d+\.xml$", i.filename):
                continue
            with zf.open(i) as member:
                head = member.read(4096).decode("utf-8", "replace")
            m = re.search(r'<(?:\w+:)?dimension ref="[A-Z]+\d+(?::[A-Z]+(\d+))?"', head)
            if m and m.group(1) and int(m.group(1)) > rows_limit:
                raise MappingError(f"{name}: {i.filename} declares {m.group(1)} rows (rule: at most {rows_limit} "
                                   "rows per sheet)")
    finally:
        fh.close()


def read_json_records(source: Any, *, name: str = "table") -> Table:
    """A REDCap JSON export (a list of flat record objects) as a :class:`Table`."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data.strip():
        raise MappingError(f"{name}: file is empty (0 bytes) (rule: a table needs a header and data rows)")
    try:  # bounded: nesting depth and number size (the file's size is the table limit's business)
        records = limits.loads_json(data.decode(detect_encoding(data[:_SAMPLE])), source=name,
                                    max_bytes=len(data) + 1)
    except limits.LimitError as exc:
        raise MappingError(f"{exc} (rule: REDCap JSON export, a list of flat record objects)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MappingError(f"{name}: not valid JSON: {exc} (rule: REDCap JSON export)") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MappingError(f"{name}: JSON must be a list of record objects (rule: REDCap JSON export, type=flat)")
    header: list[str] = []
    for r in records:
        for k in r:
            if k not in header:
                header.append(k)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for n, r in enumerate(records, start=2):
            yield n, {k: (v if v is None or isinstance(v, str) else _cell(v)) for k, v in r.items()}

    return Table(name, header, rows)


def guess_format(name: str, head: bytes = b"") -> str:
    """``csv`` / ``xlsx`` / ``json`` from the file name or its first bytes."""
    low = name.lower()
    if low.endswith((".xlsx", ".xlsm")) or head.startswith(b"PK\x03\x04"):
        return "xlsx"
    if low.endswith(".json") or head.lstrip()[:1] == b"[":
        return "json"
    if low.endswith(".xml") or head.lstrip().startswith((b"<?xml", b"<ODM", b"\xef\xbb\xbf<?xml")):
        return "odm"
    return "csv"


def open_table(source: Any, *, name: str, fmt: str = "auto", delimiter: str | None = None,
               encoding: str | None = None, sheet: str | None = None) -> Table:
    """Open ``source`` (bytes or a path) in the given or guessed format."""
    if fmt in ("auto", None):
        fmt = guess_format(name, _head(source, 8) if _size(source) else b"")
    if fmt in ("csv", "redcap-csv"):
        return read_csv(source, name=name, delimiter=delimiter, encoding=encoding)
    if fmt == "xlsx":
        return read_xlsx(source, name=name, sheet=sheet)
    if fmt in ("json", "redcap-json"):
        return read_json_records(source, name=name)
    if fmt == "odm":
        from kaapana_fhir.core.tables.odm import read_odm

        return read_odm(source, name=name)
    raise MappingError(f"{name}: unknown source format {fmt!r} (rule: source.format in csv, xlsx, redcap-csv, "
                       "redcap-json)")
