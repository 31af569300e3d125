"""What ``encode.py`` embeds, read and checked before any model loads, and the files it writes.

A ``.txt`` file holds one text per line; ``.jsonl``, ``.json`` (a list of objects, or JSON lines), ``.csv``, ``.tsv``
and ``.parquet`` hold a text column; a folder holds images. Rows are named as litembed's training errors name them: a
``.txt`` or ``.jsonl`` row by its line in the file, other rows counting from 1 (a csv's header not counted).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

from datamodules.images import ImageLoadError, check_image

if TYPE_CHECKING:
    from torch import Tensor

# a folder's images are the files a local imagefolder dataset trains on (HF datasets' list: GIF, TIFF, … as well)
IMAGE_EXTENSIONS = tuple(ImageFolder.EXTENSIONS)
IMAGE_FORMATS = ".jpg/.png/.webp/.gif/.tiff/.bmp/… (the image files training reads from a folder)"
FOLDER_METADATA = tuple(ImageFolder.METADATA_FILENAMES)  # an imagefolder's captions, not images
TABLE_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
ACCEPTED = (f"a .txt file (one text per line), a {'/'.join(TABLE_EXTENSIONS)} file with a text column, or a folder of "
            f"images ({IMAGE_FORMATS})")
SHOWN = 10  # bad rows named in an error; the rest are counted


@dataclass
class Inputs:
    """The items to embed, in order, and what was left out.

    Attributes:
        path: the input as given.
        kind: ``"text"`` or ``"image"``.
        items: the texts, or the image file paths.
        ids: one id per item: the ``--id_column`` value, else the item's line (``.txt``, ``.jsonl``) or row (counting
            from 1), or an image's path relative to the folder.
        skipped: one message per bad row skipped (``skip_bad_rows``): a folder's unreadable images and files that
            are not images.
        blank_lines: blank lines skipped in a ``.txt`` or ``.jsonl`` file (not errors: nothing to embed there).
        passed_over: files of an image folder that are not inputs, as training does not read them either (not
            errors): an imagefolder's metadata files and hidden files, relative to the folder.
    """

    path: str
    kind: str
    items: list[str]
    ids: list[Any]
    skipped: list[str] = field(default_factory=list)
    blank_lines: int = 0
    passed_over: list[str] = field(default_factory=list)

    def summary(self) -> str | None:
        """What was left out, for the log; None when nothing was."""
        parts = []
        if self.blank_lines:
            parts.append(f"skipped {self.blank_lines} blank line(s) of {self.path}")
        if self.passed_over:
            shown = ", ".join(self.passed_over[:SHOWN])
            more = f" and {len(self.passed_over) - SHOWN} more" if len(self.passed_over) > SHOWN else ""
            parts.append(f"skipped {len(self.passed_over)} metadata or hidden file(s) of {self.path}: {shown}{more}")
        if self.skipped:
            shown = "; ".join(self.skipped[:SHOWN])
            more = f"; and {len(self.skipped) - SHOWN} more" if len(self.skipped) > SHOWN else ""
            parts.append(f"skipped {len(self.skipped)} bad row(s) (--skip_bad_rows): {shown}{more}")
        text = "; ".join(parts)
        return text[:1].upper() + text[1:] if parts else None


def read_inputs(path: str, column: str | None = None, id_column: str | None = None,
                skip_bad_rows: bool = False) -> Inputs:
    """Read and check what to embed.

    Args:
        path: a ``.txt``, ``.jsonl``, ``.json``, ``.csv``, ``.tsv`` or ``.parquet`` file, or a folder of images.
        column: the text column of a table; default: its only string column.
        id_column: a table column holding each row's id (unique); default: the row's line or number.
        skip_bad_rows: skip rows with a missing, empty or non-string text (or id), and a folder's unreadable images
            and files that are not images, and list them in ``Inputs.skipped``, instead of raising.

    Raises:
        ValueError: no such input, an unsupported kind, a column that is not there (the message lists the columns),
            bad rows without ``skip_bad_rows`` (the first 10 named by line or row, the total counted), duplicate ids,
            or nothing to embed.
    """
    if os.path.isdir(path):
        for name, value in (("--column", column), ("--id_column", id_column)):
            if value is not None:
                raise ValueError(f"{name} does not apply to a folder of images ({path}): ids are the files' paths "
                                 f"relative to it")
        inputs = _read_images(path, skip_bad_rows)
    elif not os.path.isfile(path):
        raise ValueError(f"--input {path}: no such file or folder; give {ACCEPTED}")
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".txt", *TABLE_EXTENSIONS):
            raise ValueError(f"--input {path}: cannot read {ext or 'a file without extension'}; give {ACCEPTED}")
        try:
            if ext == ".txt":
                for name, value in (("--column", column), ("--id_column", id_column)):
                    if value is not None:
                        raise ValueError(f"{name} does not apply to a .txt file ({path}): it holds one text per "
                                         f"line, and a text's id is its line number")
                inputs = _read_txt(path)
            else:
                inputs = _pick(path, _read_table(path, ext), column, id_column, skip_bad_rows)
        except UnicodeDecodeError as err:
            raise ValueError(f"--input {path}: not UTF-8 text ({err}); re-encode it as UTF-8") from None
        except (pa.ArrowInvalid, csv.Error) as err:
            raise ValueError(f"--input {path}: cannot read it as {ext} ({err})") from None
    if not inputs.items:
        raise ValueError(f"--input {path}: nothing to embed" + (f" ({inputs.summary()})" if inputs.summary() else ""))
    return inputs


def _read_txt(path: str) -> Inputs:
    texts, ids, blank = [], [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            if text.strip():
                texts.append(text)
                ids.append(number)
            else:
                blank += 1
    return Inputs(path, "text", texts, ids, blank_lines=blank)


@dataclass
class Table:
    """A table's rows, each with how messages name it (``"line"`` of a JSON-lines file, else ``"row"``), its number
    and its values (a dict; or, for a line that is not a JSON object, what is wrong with it)."""

    rows: list[tuple[str, int, dict | str]]
    columns: list[str]
    string_columns: list[str]
    blank_lines: int = 0


def _read_table(path: str, ext: str) -> Table:
    if ext == ".parquet":
        table = pq.read_table(path)
        strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                   or pa.types.is_string_view(f.type)]
        return Table([("row", i, row) for i, row in enumerate(table.to_pylist(), 1)], table.column_names, strings)
    if ext in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            rows = [("row", i, row) for i, row in enumerate(reader, 1)]
            names = list(reader.fieldnames or [])
        return Table(rows, names, names)  # every csv value is a string
    table = _json_rows(path, ext)
    dicts = [values for *_, values in table.rows if isinstance(values, dict)]
    table.columns = list(dict.fromkeys(k for values in dicts for k in values))
    table.string_columns = [name for name in table.columns
                            if any(isinstance(v.get(name), str) for v in dicts)]  # bad values count in _pick
    return table


def _json_rows(path: str, ext: str) -> Table:
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if ext == ".json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError:
            data = None  # JSON lines in a .json file
        if isinstance(data, list):
            return Table([("row", i, _as_object(value)) for i, value in enumerate(data, 1)], [], [])
        if data is not None:
            raise ValueError(f"--input {path}: expected a list of objects (one per row) or JSON lines, got a "
                             f"{type(data).__name__}")
    rows, blank = [], 0
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            blank += 1
            continue
        try:
            value = _as_object(json.loads(line))
        except json.JSONDecodeError as err:
            value = f"not valid JSON ({err.msg})"
        rows.append(("line", number, value))
    return Table(rows, [], [], blank)


def _as_object(value: Any) -> dict | str:
    return value if isinstance(value, dict) else f"not a JSON object but a {type(value).__name__}"


def _pick(path: str, table: Table, column: str | None, id_column: str | None, skip_bad_rows: bool) -> Inputs:
    """The text (and id) of every row, the bad ones refused or skipped."""
    names, string_columns = table.columns, table.string_columns
    if column is None:
        if len(string_columns) != 1:
            raise ValueError(f"--input {path}: pass --column to name the text column; "
                             + (f"the string columns are {string_columns} (all columns: {names})" if string_columns
                                else f"it has no string column (columns: {names})"))
        column = string_columns[0]
    for flag, name in (("--column", column), ("--id_column", id_column)):
        if name is not None and name not in names:
            raise ValueError(f"{flag} {name!r}: {path} has no such column; its columns are {names}")
    texts, ids, bad = [], [], []
    for kind, number, values in table.rows:
        problem = _problem(values, column, id_column)
        if problem:
            bad.append(f"{kind} {number}: {problem}")
            continue
        texts.append(values[column])
        ids.append(values[id_column] if id_column else number)
    if bad and not skip_bad_rows:
        raise ValueError(f"--input {path}: {len(bad)} bad row(s): " + "; ".join(bad[:SHOWN])
                         + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
                         + ". Fix or remove them, or pass --skip_bad_rows to skip them")
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise ValueError(f"--id_column {id_column!r}: ids must be unique; {len(duplicates)} id(s) of {path} repeat: "
                         f"{duplicates[:SHOWN]}")
    return Inputs(path, "text", texts, ids, skipped=bad, blank_lines=table.blank_lines)


def _problem(values: Any, column: str, id_column: str | None) -> str | None:
    """What makes a row unusable, or None."""
    if isinstance(values, str):
        return values
    text = values.get(column)
    if text is None:
        return f"no value in column {column!r}"
    if not isinstance(text, str):
        return f"column {column!r} holds {type(text).__name__} {str(text)[:40]}, not a text"
    if not text.strip():
        return f"column {column!r} is empty"
    if id_column is not None and values.get(id_column) in (None, ""):
        return f"no id in column {id_column!r}"
    return None


def _read_images(folder: str, skip_bad_rows: bool) -> Inputs:
    """Every image under ``folder`` (recursively, sorted by relative path), each decoded once to find bad ones. A file
    that is not an image is a bad row, unless training would pass over it too (metadata, hidden files)."""
    relative = sorted(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                      for root, _, files in os.walk(folder) for name in files)
    passed_over = [name for name in relative
                  if name.startswith(".") or "/." in name or name.split("/")[-1] in FOLDER_METADATA]
    relative = sorted(set(relative) - set(passed_over))
    paths = [os.path.join(folder, name) for name in relative]
    with ThreadPoolExecutor(8) as pool:  # PIL releases the GIL while decoding
        outcomes = list(pool.map(_image_problem, relative, paths))
    problems = [problem for problem in outcomes if problem]
    good = [i for i, problem in enumerate(outcomes) if problem is None]
    if problems and not skip_bad_rows:
        raise ValueError(f"--input {folder}: {len(problems)} unreadable or non-image file(s): "
                         + "; ".join(problems[:SHOWN])
                         + (f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
                         + ". Fix or remove them, or pass --skip_bad_rows to skip them")
    return Inputs(folder, "image", [paths[i] for i in good], [relative[i] for i in good], skipped=problems,
                  passed_over=passed_over)


def _image_problem(name: str, path: str) -> str | None:
    """Why ``load_image`` would refuse the file, or training would not read it, or None (JPEGs decoded at 1/8 scale:
    every byte is still read)."""
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return f"{name}: not an image file; the image files read are {IMAGE_FORMATS}"
    try:
        check_image(path, where=name)
    except ImageLoadError as err:
        return str(err)
    return None


def output_paths(output: str) -> tuple[str, str]:
    """``out/name`` (or ``out/name.npy``) → (``out/name.npy``, ``out/name.parquet``)."""
    stem = output.removesuffix(".npy").removesuffix(".parquet")
    return f"{stem}.npy", f"{stem}.parquet"


def save_embeddings(output: str, embeddings: Tensor, inputs: Inputs) -> tuple[str, str]:
    """Write ``<output>.npy`` ((N, D) float32, row i for item i) and ``<output>.parquet`` (``id`` and ``text`` or
    ``file``, row for row), as ``train.py predict`` writes a stream; returns both paths."""
    npy, parquet = output_paths(output)
    os.makedirs(os.path.dirname(npy) or ".", exist_ok=True)
    np.save(npy, embeddings.detach().float().cpu().numpy())
    pq.write_table(pa.table({"id": inputs.ids, "text" if inputs.kind == "text" else "file": inputs.items}), parquet)
    return npy, parquet
