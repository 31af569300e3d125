"""Local data files read and checked once before HF datasets loads them.

HF datasets reports a bad line of a local file as a 50–160-line traceback (pyarrow's 0-based row, pandas' tokenizer
line), loads some faults silently (a csv row with fewer fields, a duplicated csv column, invalid UTF-8 replaced), and a
stream meets a bad line only when it reaches it, mid-training. So every local file of a split in use is read here
first, line by line: its rows counted (csv records, not newlines: a quoted cell may hold line breaks), every line
parsed, the text columns' values type-checked, and all faults of all files reported in one message that names the
file, the 1-based line (a parquet's or a .json array's row, counting from 1) and what to do.

A folder's split inference (HF's) is checked too: two formats for one split (HF keeps the commoner one and drops the
other) are refused, and a data file whose name matches no split is named.
"""

import bisect
import codecs
import csv
import json
import os
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from datasets.data_files import DataFilesDict, get_data_patterns

TABLE_FORMATS = (".jsonl", ".json", ".csv", ".parquet")
SHOWN = 10  # faults a message names per file; it counts the others
# JSON escapes of UTF-16 surrogates: a lone one decodes to a str that is no text (it cannot be encoded as UTF-8)
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class DataFileError(ValueError):
    """A local data file that cannot be read as it is: the message names the file, its lines and what to do."""


@dataclass(frozen=True)
class FileScan:
    """What one read of a local file found: its rows, and where each row starts in the file.

    Rows map to lines piecewise: row ``starts[i]`` begins on line ``lines[i]`` and the rows after it follow one per
    line until the next piece (a blank line, or a csv cell holding a line break, starts one). A file without such
    lines is a single piece, whatever its size. A parquet file, or a .json array, has no pieces: its rows are named by
    number.
    """

    path: str
    rows: int
    starts: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("q"))

    def place(self, row: int) -> tuple[str, int]:
        """("line", 1-based line) of the 0-based ``row``, or ("row", row + 1) where the file has no lines."""
        if not self.starts:
            return "row", row + 1
        piece = bisect.bisect_right(self.starts, row) - 1
        return "line", self.lines[piece] + row - self.starts[piece]


class _Lines:
    """Builds a :class:`FileScan`'s pieces row by row (``kind``: how its faults are named, "line" or "row");
    collects the faults."""

    def __init__(self, path: str, kind: str = "line") -> None:
        self.path, self.kind, self.rows, self.faults = path, kind, 0, []
        self.starts, self.lines = array("q"), array("q")

    def row(self, line: int) -> None:
        if not self.starts or self.lines[-1] + self.rows - self.starts[-1] != line:
            self.starts.append(self.rows)
            self.lines.append(line)
        self.rows += 1

    def fault(self, where: str, problem: str) -> None:
        self.faults.append(f"{where}: {problem}")

    def scan(self) -> FileScan:
        if self.faults:
            shown = "; ".join(self.faults[:SHOWN])
            more = f"; and {len(self.faults) - SHOWN} more" if len(self.faults) > SHOWN else ""
            raise DataFileError(f"{self.path}: {len(self.faults)} bad {self.kind}(s): {shown}{more}. Fix or remove "
                                f"those {self.kind}s (every local data file of a split in use is read before "
                                f"training starts)")
        if not self.rows:
            raise DataFileError(f"{self.path}: no rows (the file is empty or holds only a header or blank lines); "
                                f"fill it or remove it")
        return FileScan(self.path, self.rows, self.starts, self.lines) if self.kind == "line" else \
            FileScan(self.path, self.rows)


_scans: dict[tuple[str, int, int], tuple[frozenset[str], FileScan]] = {}


def scan_file(path: str, text_columns: Sequence[str] = ()) -> FileScan:
    """Read ``path`` (.jsonl, .json, .csv or .parquet) once and check it; a file unchanged since it was read with
    these ``text_columns`` (or more) is not read again.

    Raises:
        DataFileError: the file's faults (invalid JSON, a line that is not an object, invalid UTF-8 or a lone
            surrogate escape, a csv row with more or fewer fields than its header, a duplicated csv column, a non-text
            value in a text column, an empty file), the first ``SHOWN`` named by 1-based line (or row), the rest
            counted.
    """
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    checked, scan = _scans.get(key, (frozenset(), None))
    if scan is not None and checked >= set(text_columns):
        return scan
    ext = os.path.splitext(path)[1].lower()
    readers = {".jsonl": _scan_json_lines, ".json": _scan_json, ".csv": _scan_csv, ".parquet": _scan_parquet}
    if ext not in readers:
        raise DataFileError(f"{path}: cannot read {ext or 'a file without extension'}; use one of {TABLE_FORMATS}")
    scan = readers[ext](path, text_columns)
    _scans[key] = (checked | set(text_columns), scan)
    return scan


def is_table(path: str) -> bool:
    """Whether ``scan_file`` reads ``path`` (an imagefolder's split without metadata.jsonl is image files)."""
    return os.path.splitext(path)[1].lower() in TABLE_FORMATS


def not_text(column: str, value) -> str | None:
    """Why ``value`` cannot be the text of ``column`` (None: it is a text, or missing, which the split's check of
    empty texts reports with the others)."""
    if value is None or isinstance(value, str):
        return None
    return f"column {column!r} holds {type(value).__name__} {repr(value)[:40]}, not a text"


def _check_object(value, where: str, escapes: bool, text_columns: Sequence[str], found: _Lines) -> None:
    """``escapes``: the row's JSON holds a surrogate escape, so its texts are checked for lone ones."""
    if not isinstance(value, dict):
        found.fault(where, f"not a JSON object (one row) but a {type(value).__name__}")
        return
    for column in text_columns:
        problem = not_text(column, value.get(column))
        if problem:
            found.fault(where, problem)
    if escapes:
        for column, text in value.items():
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    found.fault(where, f"column {column!r} holds a lone surrogate escape (such as \\ud800), which is "
                                       f"no character: fix the escape or remove the text")


def _refuse_constant(name: str):
    # Python's json reads NaN and Infinity; JSON (and the pyarrow reader HF uses) does not
    raise ValueError(f"{name} is not a JSON value; write null or a number")


def _decoded(raw: bytes, where: str, found: _Lines) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        found.fault(where, f"not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}): re-encode the file "
                           f"as UTF-8")
        return raw.decode("utf-8", errors="replace")


_CHUNK = 8 << 20


def _fast_json_lines(path: str, text_columns: Sequence[str]) -> FileScan | None:
    """The scan of a JSON-lines file that has no fault, read by pyarrow's C++ reader in blocks (100,000 QA pairs in
    ~0.06 s instead of ~1 s), or None where the line-by-line read must decide: any error of pyarrow's (invalid JSON,
    a lone surrogate escape, a line that is not an object, a column whose type changes), invalid UTF-8 (which
    pyarrow's block reader lets through), a text column that is not text, a number that is NaN or infinite (Python's
    reader refuses the NaN and Infinity constants, which pyarrow reads), a blank line (rows then map to lines
    piecewise). Memory: one chunk of the file and one block at a time."""
    import pyarrow.compute as pc
    import pyarrow.json as pa_json

    newlines, last = 0, b""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        try:
            while chunk := f.read(_CHUNK):
                if not chunk.isascii():
                    utf8.decode(chunk)
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            return None
    lines = newlines + (last not in (b"\n", b""))
    rows = 0
    try:
        for batch in pa_json.open_json(path):
            for field_, column in zip(batch.schema, batch.columns):
                kind = field_.type
                if field_.name in text_columns and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                                                        or pa.types.is_null(kind)):
                    return None
                if pa.types.is_floating(kind) and pc.any(pc.invert(pc.is_finite(column))).as_py():
                    return None
            rows += batch.num_rows
    except (pa.ArrowInvalid, ValueError, UnicodeDecodeError):
        return None
    if rows == 0 or rows != lines:  # empty, or blank lines among the rows
        return None
    return FileScan(path, rows, array("q", [0]), array("q", [1]))


def _scan_json_lines(path: str, text_columns: Sequence[str]) -> FileScan:
    fast = _fast_json_lines(path, text_columns)
    if fast is not None:
        return fast
    found = _Lines(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():  # HF skips blank lines (CRLF ones too); they still count in the line numbers
                continue
            found.row(number)
            where = f"line {number}"
            text = _decoded(raw, where, found).rstrip("\r\n")
            try:
                value = json.loads(text, parse_constant=_refuse_constant)
            except json.JSONDecodeError as err:
                found.fault(where, f"not valid JSON at column {err.colno} ({err.msg})")
                continue
            except ValueError as err:
                found.fault(where, f"not valid JSON ({err})")
                continue
            _check_object(value, where, bool(SURROGATE_ESCAPE.search(raw)), text_columns, found)
    return found.scan()


def _scan_json(path: str, text_columns: Sequence[str]) -> FileScan:
    """A .json file holds a list of objects, or JSON lines (HF reads both)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError:  # JSON lines (or a fault, which reading it so names by line)
        return _scan_json_lines(path, text_columns)
    if not isinstance(data, list):
        raise DataFileError(f"{path}: holds a JSON {type(data).__name__}; a .json file must hold a list of objects "
                            f"(one per row) or JSON lines")
    found, escapes = _Lines(path, "row"), bool(SURROGATE_ESCAPE.search(raw))
    for number, value in enumerate(data, 1):
        found.rows += 1
        _check_object(value, f"row {number}", escapes, text_columns, found)
    return found.scan()


def _physical_lines(path: str, found: _Lines, counter: list[int]) -> Iterator[str]:
    """The file's lines decoded one by one (a decoding fault names its line); ``counter[0]``: lines read so far."""
    with open(path, "rb") as f:
        for raw in f:
            counter[0] += 1
            yield _decoded(raw, f"line {counter[0]}", found)


def _scan_csv(path: str, text_columns: Sequence[str]) -> FileScan:
    """Records as pandas (HF's csv reader) forms them: quoted cells may span lines, blank lines are skipped."""
    found, counter = _Lines(path), [0]
    reader = csv.reader(_physical_lines(path, found, counter))
    header, header_line = None, 0
    while True:
        start = counter[0] + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            found.fault(f"line {start}", f"not valid CSV ({err})")
            break
        if not record:  # a blank line
            continue
        if header is None:
            header, header_line = record, start
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                found.fault(f"line {start}", f"the header names column(s) {repeated} more than once (HF would keep "
                                             f"one and rename the others): rename or remove the repeated column(s)")
            continue
        found.row(start)
        if len(record) != len(header):
            found.fault(f"line {start}", f"{len(record)} field(s), the header (line {header_line}) has "
                                         f"{len(header)}: quote values holding commas, or fill the missing fields")
    return found.scan()


def _scan_parquet(path: str, text_columns: Sequence[str]) -> FileScan:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{path}: not a readable parquet file ({err}); rewrite it (e.g. with "
                            f"pyarrow.parquet.write_table)") from None
    found = _Lines(path, "row")
    found.rows = file.metadata.num_rows
    schema = file.schema_arrow
    for column in text_columns:
        if column in schema.names:
            kind = schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
                    or pa.types.is_null(kind)):
                found.fault(f"rows 1–{found.rows}", f"column {column!r} holds {kind} values, not text")
    return found.scan()


def folder_files(directory: str, used: dict[str, list[str]]) -> list[str]:
    """Check HF's split inference of ``directory`` (``used``: the files it reads for each split) and return the data
    files it reads for no split.

    Raises:
        DataFileError: a split with files of two formats (HF reads only the commoner one).
    """
    directory = os.path.abspath(directory)
    patterns = DataFilesDict.from_patterns(get_data_patterns(directory), base_path=directory)
    problems = []
    for split, files in patterns.items():
        tables = [str(f) for f in files if os.path.splitext(str(f))[1].lower() in TABLE_FORMATS]
        formats = {os.path.splitext(f)[1].lower() for f in tables}
        if len(formats) > 1:
            kept = {str(f) for f in used.get(split, [])}
            dropped = [f for f in tables if f not in kept]
            problems.append(f"the {split} split has files of {len(formats)} formats ({', '.join(sorted(formats))}): "
                            f"{', '.join(tables)}; HF datasets would read {', '.join(sorted(kept)) or 'none'} and "
                            f"drop {', '.join(dropped)}. Convert them to one format, move the others out of the "
                            f"folder, or name each split's files with --data.init_args.data_files")
    if problems:
        raise DataFileError(f"{directory}: " + ";\n  ".join(problems))
    read = {os.path.abspath(str(f)) for files in used.values() for f in files}
    unread = []
    for root, subdirs, names in os.walk(directory):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith((".", "_")))  # HF skips hidden folders too
        unread += [os.path.join(root, name) for name in sorted(names)
                   if os.path.splitext(name)[1].lower() in TABLE_FORMATS and not name.startswith((".", "_"))
                   and os.path.join(root, name) not in read]
    return unread
