"""Checks of a run's data before it trains: columns and texts, the local files, whether the training rows form
batches without repeated values, and whether an evaluation is big enough to say anything.

Errors say what is wrong, where (file and line, via :class:`~datamodules.locations.Where`) and which option to change.
"""

import logging
import os
import time
from collections.abc import Callable, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lightning.pytorch.utilities import rank_zero_info

from datamodules.contract import RetrievalTask
from datamodules.files import DataFileError, folder_files, is_table, scan_file
from datamodules.loading import dataset_builder, local_files
from datamodules.locations import ROW, SHOWN_ROWS, Where
from datamodules.sampler import NoDuplicatesBatchSampler
from datamodules.sources import BadRow
from datamodules.splits import arrow_columns

log = logging.getLogger(__name__)

# Invisible format characters that editors and scrapers leave (zero-width space, non-joiner and joiner, word joiner,
# byte-order mark): a text of only these and whitespace is empty, though str.strip() keeps them
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_DROP_INVISIBLE = str.maketrans("", "", INVISIBLE)
FEW_QUERIES = 10  # an evaluation of fewer queries is warned about: one query moves its metrics by more than 0.1


def check_columns(split: datasets.Dataset | datasets.IterableDataset, columns: Sequence[str], where: Where) -> None:
    """Raise if a column is missing, naming it, the file, the columns that exist and the option to set (a stream of
    unknown columns passes)."""
    found = split.column_names
    if found is None:
        return
    missing = [c for c in columns if c not in found]
    if missing:
        files = ", ".join(where.files() or [])
        raise ValueError(f"{where}: column(s) {missing} not found; columns found: {[c for c in found if c != ROW]}"
                         f"{f' (in {files})' if files else ''}. Set {where.flags(missing)} to the data's column names.")


def check_texts(split: datasets.Dataset, columns: Sequence[str], where: Where) -> None:
    """Raise on None or blank texts (whitespace and ``INVISIBLE`` characters only), such a row would train on nothing,
    and on non-text values: for every such column, how many rows and the first ``SHOWN_ROWS`` of them by file and
    line.

    Column-wise in Arrow (about 1 s per million rows and column), not row by row in Python.
    """
    table = arrow_columns(split, [*columns, ROW])
    problems, bad_columns = [], []
    for column in columns:
        values = table.column(column)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            visible = pc.utf8_trim_whitespace(pc.replace_substring_regex(values, f"[{INVISIBLE}]", ""))
            found = {"an empty or missing": pc.indices_nonzero(pc.fill_null(pc.equal(pc.utf8_length(visible), 0),
                                                                           True)).to_numpy()}
        else:  # None in every row, or values of several types (HF's JSON column): each row's value, in Python
            decoded = split.select_columns([column])[column]
            found = {kind: np.array([i for i, value in enumerate(decoded) if test(value)], dtype=np.int64)
                     for kind, test in (("an empty or missing", lambda v: v is None or isinstance(v, str) and
                                         is_blank(v)),
                                        ("a non-text", lambda v: v is not None and not isinstance(v, str)))}
        for kind, bad in found.items():
            if len(bad):
                rows = np.sort(table.column(ROW).take(bad).to_numpy())
                first = split.select_columns([column])[int(bad[0])][column]
                example = f"{first!r}, of type {type(first).__name__}" if kind == "a non-text" else repr(first)
                problems.append(f"{len(bad)} row{'s have' if len(bad) > 1 else ' has'} {kind} {column!r} (e.g. "
                                f"{example}): {where.rows(rows[:SHOWN_ROWS].tolist(), len(bad))}")
                bad_columns.append(column)
    if problems:
        raise ValueError(f"{where}: " + ";\n  ".join(problems) + f".\nFill or remove those rows, or name other "
                         f"columns with {where.flags(bad_columns)}.")


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing but whitespace and ``INVISIBLE`` characters."""
    return not text.translate(_DROP_INVISIBLE).strip()


def text_value(row: dict, column: str, where: str) -> str:
    """A stream row's text, or :class:`BadRow` naming the row by its other values."""
    value = row.get(column)
    if isinstance(value, str) and not is_blank(value):
        return value
    others = {k: (v[:60] + "…" if isinstance(v, str) and len(v) > 60 else v) for k, v in row.items()
              if k != column and isinstance(v, (str, int))}
    raise BadRow(f"{where}: column {column!r} has an empty or non-text value ({value!r}) in the row {others}")


def value_codes(groups: Sequence[Sequence[pa.ChunkedArray]]) -> np.ndarray:
    """(N, C) integer codes of N rows' values, one column per array: equal values within a group get equal codes,
    different groups never share one (a caption never equals an image key). Hashing in Arrow, not Python objects:
    1M text pairs take about 1 s and 16 MB instead of 10 s and ~2 GB of tuples."""
    codes, offset = [], 0
    for arrays in groups:
        encoded = pa.chunked_array([c for a in arrays for c in a.cast(pa.string()).chunks], type=pa.string())
        encoded = encoded.dictionary_encode().combine_chunks()
        column_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64) + offset
        codes.extend(np.split(column_codes, len(arrays)))
        offset += len(encoded.dictionary)
    return np.stack(codes, axis=1)


def check_files(source: str, data_files: dict[str, str] | None, roles: dict[str, str],
                text_columns: Callable[[str], list[str]], announce: bool) -> bool:
    """Read every local file of the splits in use once, before HF datasets does (``datamodules.files``), and raise one
    error for the faults of all of them, each by file and 1-based line; refuse a folder whose split has files of two
    formats. With ``announce`` (rank 0), print one line per split with the files feeding it (and the data files that
    feed none). False when ``source`` cannot be read here (a hub name out of reach: loading it says so).

    Args:
        source: ``--data.init_args.dataset``.
        data_files: ``--data.init_args.data_files``.
        roles: each split in use by name in the dataset → "train", "validation" or "test".
        text_columns: the columns of a role that hold texts (checked to be strings).
        announce: log what was read.
    """
    builder = dataset_builder(source, data_files)
    if builder is None:
        return False
    split_files = {str(split): [str(f) for f in files] for split, files in (builder.config.data_files or {}).items()}
    unread = []
    if os.path.isdir(source) and data_files is None and builder.name in ("json", "csv", "parquet"):
        unread = folder_files(source, split_files)
    started, problems, lines = time.monotonic(), [], []
    for split in split_files:
        files = local_files(builder, split)
        if not files or not all(map(is_table, files)):
            continue
        if split not in roles:
            lines.append(f"  {split} split (not used): {', '.join(files)}")
            continue
        rows = []
        for path in files:
            try:
                rows.append(f"{path} ({scan_file(path, text_columns(roles[split])).rows} rows)")
            except DataFileError as err:
                problems.append(str(err))
        lines.append(f"  {split} split: {', '.join(rows)}")
    took = time.monotonic() - started
    if problems:
        raise DataFileError("\n".join(problems))
    if not announce:
        return True
    if unread:
        log.warning("%s: %d data file(s) match no split name (train, validation, test, and HF's other "
                    "spellings) and are not read: %s. Rename them (e.g. train-2.jsonl) or name every split's "
                    "files with --data.init_args.data_files", source, len(unread), ", ".join(unread))
    if lines:
        rank_zero_info(f"Data files of {source} (checked in {took:.1f} s):\n" + "\n".join(lines))
    return True


def check_batches(train: datasets.Dataset, codes: np.ndarray, where: Where, batch_size: int, drop_last: bool,
                  seed: int, value_name: Callable[[datasets.Dataset, int, int], str], warn: bool) -> None:
    """Refuse training rows that form no batch; with ``warn`` (rank 0) say, with epoch 0's numbers, when repeated
    values shrink the batches or leave rows out (the sampler leaves out rows that would be a batch of one row).

    Epoch 0's batches are formed here only when a value is in more rows than there are batches (a few seconds per
    million rows with repeats); below that, repeats cost at most a few rows at an epoch's end, which the sampler
    logs each epoch.

    Args:
        train: the training split (with ``__row__``).
        codes: (N, C) codes of its rows' values (``value_codes``); rows sharing one never meet in a batch.
        where: how messages name the split.
        batch_size: ``--data.init_args.batch_size``.
        drop_last: ``--data.init_args.drop_last``.
        seed: ``--data.init_args.seed``, of epoch 0's batches.
        value_name: the value of ``codes[row, column]`` for messages.
        warn: log the warning (rank 0).
    """
    rows, size = len(codes), batch_size
    if drop_last and rows < size:
        raise ValueError(f"{where}: {rows} rows make no batch of {size} (--data.init_args.drop_last true): lower "
                         f"--data.init_args.batch_size or set --data.init_args.drop_last false")
    count, row, column = most_repeated(codes)
    if count <= -(-rows // size):
        return
    formed = NoDuplicatesBatchSampler(codes, size, seed=seed, num_replicas=1, rank=0).st_batches()
    full, ones = sum(len(b) == size for b in formed), sum(len(b) == 1 for b in formed)
    kept = full * size if drop_last else rows - ones
    holders = np.flatnonzero((codes == codes[row, column]).any(axis=1))
    named = np.sort(arrow_columns(train, [ROW]).column(0).take(holders).to_numpy())[:SHOWN_ROWS].tolist()
    value = f"{value_name(train, int(row), int(column))} is in {count} of the {rows} rows " \
            f"({where.rows(named, count)})"
    if not kept:
        raise ValueError(
            f"{where}: no batch of {size if drop_last else 'two or more'} rows can be formed without repeating a "
            f"value (--data.init_args.no_duplicates true): {value}. Remove the repeated rows, or set "
            f"--data.init_args.no_duplicates false to let repeats share a batch (they then count as each "
            f"other's negatives){' or --data.init_args.drop_last false' if drop_last else ''}.")
    if not warn:
        return
    smaller = [len(b) for b in formed if 1 < len(b) < size] if not drop_last else []
    suggest = rows // count
    log.warning(
        f"{where}: repeated values shrink the training batches. Epoch 0 (the others alike): {rows} rows make "
        f"{full} batches of {size}"
        + (f", {len(smaller)} smaller batch{'es' * (len(smaller) > 1)} ({sum(smaller)} rows)" if smaller else "")
        + (f" and leave {rows - kept} rows out" + (" (--data.init_args.drop_last true)" if drop_last else
           " (each would be a batch of one row, which has no in-batch negative)") if rows > kept else "")
        + f". --data.init_args.no_duplicates true puts a value in at most one row of a batch, and {value}. To "
        f"keep more rows: deduplicate the data, "
        + (f"lower --data.init_args.batch_size to about {suggest}, " if 2 <= suggest < size else "")
        + "or set --data.init_args.no_duplicates false (repeats then count as each other's negatives)"
        + ("" if drop_last else "; --data.init_args.drop_last true trains on full batches only") + ".")


def most_repeated(codes: np.ndarray) -> tuple[int, int, int]:
    """(rows holding it, a row, its column) of the value in the most rows (a row holding it twice counts once)."""
    first = np.ones(codes.shape, dtype=bool)
    for c in range(1, codes.shape[1]):
        first[:, c] = (codes[:, :c] != codes[:, c:c + 1]).all(axis=1)
    counts = np.bincount(codes[first])
    row, column = np.argwhere(codes == counts.argmax())[0]
    return int(counts.max()), int(row), int(column)


def check_eval_size(split_name: str, streams: dict[str, list], tasks: list[RetrievalTask], where: Where,
                    held_out: bool, capped: bool, warn: bool) -> None:
    """Refuse an evaluation of fewer than 2 queries or documents: against one document every ranking is right, so
    every metric is 1.0 whatever the model (``val_size 1.0`` holds out one row); with ``warn`` (rank 0) warn under
    ``FEW_QUERIES`` queries, where one query moves a metric by more than 0.1.

    Args:
        split_name: "validation" or "test".
        streams: the evaluation streams by name.
        tasks: the evaluation's retrieval tasks.
        where: how messages name the split.
        held_out: the validation rows are held out of train by ``--data.init_args.val_size``.
        capped: ``--data.init_args.max_eval_rows`` is set.
        warn: log the warning (rank 0).
    """
    flags = (["--data.init_args.val_size (a row count, or a fraction between 0 and 1; 1.0 is one row)"] if held_out
             else [f"--data.init_args.{'val' if split_name == 'validation' else 'test'}_split (a bigger split)"])
    flags += ["--data.init_args.max_eval_rows"] if capped else []
    for task in tasks:
        queries, documents = len(task.relevant), len(streams[task.corpus_stream])
        task_name = f" ({task.name})" if task.name else ""
        counts = (f"{where}{task_name}: {queries} quer{'ies' if queries != 1 else 'y'} against {documents} "
                  f"item{'s' * (documents != 1)} to rank")
        if min(queries, documents) < 2:
            raise ValueError(f"{counts}: with fewer than 2 of either a retrieval metric says nothing (against one "
                             f"item every ranking is right: 1.0 whatever the model). Evaluate on more rows: raise "
                             f"{' or '.join(flags)}.")
        if queries < FEW_QUERIES and warn:
            log.warning("%s: each query moves its metrics by 1/%d; for steadier numbers raise %s", counts, queries,
                        " or ".join(flags))
