"""Loading splits from a hub name, a local directory or file, or a built-in generator; eval task description."""

import hashlib
import itertools
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import torch
from datasets.exceptions import DatasetGenerationError
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules.files import DataFileError, folder_files, is_table, scan_file
from datamodules.sampler import NoDuplicatesBatchSampler
from datamodules.sources import BadRow, EpochReport, MapStyleSource, StreamingSource, TrainSource

log = logging.getLogger(__name__)

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROW = "__row__"  # each row's position as loaded, kept for messages
# Invisible format characters that editors and scrapers leave (zero-width space, non-joiner and joiner, word joiner,
# byte-order mark): a text of only these and whitespace is empty, though str.strip() keeps them
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_DROP_INVISIBLE = str.maketrans("", "", INVISIBLE)
SHOWN_ROWS = 10  # rows a message names by file and line; it counts the others
FEW_QUERIES = 10  # an evaluation of fewer queries is warned about: one query moves its metrics by more than 0.1


@dataclass(frozen=True)
class RetrievalTask:
    """One retrieval evaluation: queries of one stream against the corpus of another.

    ``relevant[q]`` holds the ids (row positions) in ``corpus_stream`` that answer query ``q`` of ``query_stream``.
    The module encodes every stream once and scores all tasks (and all Matryoshka dims) from those embeddings.
    """

    name: str
    query_stream: str
    corpus_stream: str
    relevant: list[set[int]]


def load_splits(
    source: str, builtins: dict[str, Callable[[], datasets.DatasetDict]], data_files: dict[str, str] | None = None,
    streaming: bool = False,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Read a dataset from ``builtin:<name>``, a .jsonl/.json/.csv/.parquet file, a local directory or a hub name.

    A single file becomes the ``train`` split. A directory goes through HF datasets' split inference: name validation
    files ``validation`` (``eval`` files land in the ``test`` split) or pass ``data_files``. ``streaming`` reads the
    files as they are, row by row, instead of downloading and converting every split to Arrow first (built-ins are
    generated in memory either way).
    """
    options = stream_read_options(source, data_files) if streaming and not source.startswith("builtin:") else {}
    try:
        return _load_splits(source, builtins, data_files, streaming, **options)
    except DatasetGenerationError as err:  # local files were read first (check_files): this is a hub dataset's fault
        raise ValueError(f"--data.init_args.dataset {source!r}: HF datasets could not read it "
                         f"({type(err.__cause__ or err).__name__}: {err.__cause__ or err})") from None


# How a stream reads parquet. HF's reader decodes a whole row group per Arrow batch by default and datasets 5 writes
# ~100 MB row groups; the shuffle interleaves up to 10 files, so a COCO-style stream (images inline) held ~1.5 GB more
# than a 1,000-row one before its first step. Reading through a buffered stream, without pre-buffering the row group,
# 100 rows (HF's old row group size for image datasets) per batch halves that; what stays is the row group's decoded
# column chunks, which pyarrow's dataset scanner keeps whole (BENCHMARKS.md, time to first step).
STREAM_PARQUET_ROWS = 100
STREAM_PARQUET_BUFFER = 8 << 20


def stream_read_options(source: str, data_files: dict[str, str] | None) -> dict:
    """Builder options that bound a stream's memory: for parquet (local files or a hub repository), batches of
    ``STREAM_PARQUET_ROWS`` rows read through a buffered stream."""
    if os.path.isfile(source):
        parquet = source.lower().endswith(".parquet")
    else:
        try:
            parquet = datasets.load_dataset_builder(source, data_files=data_files).name == "parquet"
        except Exception:  # loading the stream reports what is wrong with the source
            parquet = False
    if not parquet:
        return {}
    scan = pyarrow.dataset.ParquetFragmentScanOptions(use_buffered_stream=True, buffer_size=STREAM_PARQUET_BUFFER,
                                                      pre_buffer=False)
    return {"batch_size": STREAM_PARQUET_ROWS, "fragment_scan_options": scan}


def _load_splits(
    source: str, builtins: dict[str, Callable[[], datasets.DatasetDict]], data_files: dict[str, str] | None,
    streaming: bool, **options,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in builtins:
            raise ValueError(f"--data.init_args.dataset: unknown built-in dataset {name!r}; built-ins: "
                             f"{sorted(builtins)}")
        return builtins[name]()
    if data_files is not None:
        return datasets.load_dataset(source, data_files=data_files, streaming=streaming, **options)
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in FILE_FORMATS:
            raise ValueError(f"--data.init_args.dataset {source!r}: unsupported file type {ext!r}; use one of "
                             f"{sorted(FILE_FORMATS)}")
        return datasets.load_dataset(FILE_FORMATS[ext], data_files={"train": source}, streaming=streaming, **options)
    if os.path.isdir(source):
        return datasets.load_dataset(source, streaming=streaming, **options)
    try:
        return datasets.load_dataset(source, streaming=streaming, **options)
    except Exception as err:  # offline, misspelt or private: all surface here
        raise ValueError(
            f"--data.init_args.dataset {source!r} is not a file, not a directory and could not be loaded from the hub "
            f"({type(err).__name__}: {err}). Check the path, or pass a local .jsonl/.csv/.parquet file or directory."
        ) from err


def count_rows(source: str, split: str, data_files: dict[str, str] | None = None) -> int | None:
    """Rows of a split without loading it: the hub metadata's count, else one read of its local files
    (:func:`~datamodules.files.scan_file`: csv records, non-blank JSON lines, parquet footers). None when neither
    tells (a hub dataset without counts)."""
    builder = _builder(source, data_files)
    if builder is None:
        return None
    if builder.info.splits and split in builder.info.splits and builder.info.splits[split].num_examples:
        return builder.info.splits[split].num_examples
    files = _local_files(builder, split)
    return sum(scan_file(path).rows for path in files) if files and all(map(is_table, files)) else None


def split_files(source: str, split: str, data_files: dict[str, str] | None = None) -> list[str] | None:
    """The local files a split is read from, in the order HF concatenates their rows (an imagefolder's
    metadata.jsonl); None for a built-in or hub dataset, or a source that cannot be read."""
    builder = _builder(source, data_files)
    return None if builder is None else _local_files(builder, split)


def _builder(source: str, data_files: dict[str, str] | None) -> datasets.DatasetBuilder | None:
    if source.startswith("builtin:"):
        return None
    if os.path.isfile(source):
        source, data_files = FILE_FORMATS.get(os.path.splitext(source)[1].lower(), source), {"train": source}
    try:
        return datasets.load_dataset_builder(source, data_files=data_files)
    except Exception:  # loading the data itself reports what is wrong with the source
        return None


def _local_files(builder: datasets.DatasetBuilder, split: str) -> list[str] | None:
    files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    metadata = [f for f in files if os.path.basename(f) == "metadata.jsonl"]
    files = metadata or files
    return files if files and all(os.path.isfile(f) for f in files) else None


def select_split(
    splits: datasets.DatasetDict, name: str | None, source: str, flag: str, max_rows: int | None = None
) -> datasets.Dataset | None:
    """The named split (first ``max_rows`` rows), None when ``name`` is None; a clear error when it is missing."""
    if name is None:
        return None
    if name not in splits:
        raise ValueError(f"{flag} {name!r}: split not found in {source!r}; splits found: {sorted(splits)}")
    split = splits[name]
    return split.select(range(min(max_rows, len(split)))) if max_rows is not None else split


def with_row_numbers(split: datasets.Dataset) -> datasets.Dataset:
    """Add ``__row__``, each row's position in its file or split as loaded, so that messages name the row a user can
    find, even after ``val_size`` has shuffled rows out."""
    if ROW in split.column_names:
        return split
    return split.add_column(ROW, np.arange(len(split)))


@dataclass(frozen=True)
class Where:
    """How messages name a split: ``str()`` gives the data and split (``"data/qa (train split)"``), :meth:`rows` its
    rows by file and line, :meth:`flags` the options that chose its columns.

    Args:
        text: the data and split, as messages start.
        source: ``--data.init_args.dataset``.
        file_split: the split whose files the ``__row__`` numbers index (train, for rows held out by ``val_size``).
        data_files: ``--data.init_args.data_files``.
        column_flags: the option naming each column, e.g. ``{"positive": "--data.init_args.columns"}``.
    """

    text: str
    source: str
    file_split: str
    data_files: dict[str, str] | None = None
    column_flags: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text

    def flags(self, columns: Iterable[str]) -> str:
        """The options that name ``columns``."""
        return " or ".join(dict.fromkeys(self.column_flags.get(c, "--data.init_args.columns") for c in columns))

    def files(self) -> list[str] | None:
        return split_files(self.source, self.file_split, self.data_files)

    def rows(self, positions: Sequence[int], total: int | None = None) -> str:
        """``positions`` (``__row__`` values) as a user finds them: ``"lines 70, 91 of data/train.jsonl"``. A jsonl's
        or csv's rows are named by the file's line (blank lines, which HF skips, and a csv's header and line breaks
        inside quoted cells counted); other rows count from 1: a parquet's, or the split's where no local file holds
        it. ``total``: rows the positions were taken from; those not named are counted."""
        positions = sorted(positions)
        files = self.files()
        places = (_file_rows(files, positions) if files else None) or [
            (f"the {self.file_split} split", "row", p + 1) for p in positions]
        parts = []
        for (name, kind), group in itertools.groupby(places, key=lambda place: place[:2]):
            numbers = [str(number) for *_, number in group]
            parts.append(f"{kind}{'s' * (len(numbers) > 1)} {', '.join(numbers)} of {name}")
        more = (total or 0) - len(positions)
        counting = " (counting from 1)" if any(kind == "row" for _, kind, _ in places) else ""
        return "; ".join(parts) + counting + (f", and {more} more" if more > 0 else "")


def _file_rows(files: list[str], positions: list[int]) -> list[tuple[str, str, int]] | None:
    """(file, "line" or "row", number) of each of the sorted 0-based ``positions`` in the split that ``files`` make,
    in order; None when a file holds no table (images) or a position lies beyond their rows."""
    if not all(map(is_table, files)):
        return None
    places, start, wanted = [], 0, iter(positions)
    position = next(wanted, None)
    for path in files:
        scan = scan_file(path)
        while position is not None and position < start + scan.rows:
            places.append((path, *scan.place(position - start)))
            position = next(wanted, None)
        start += scan.rows
    return places if position is None else None


def pick_splits(
    raw: datasets.DatasetDict,
    source: str,
    train_split: str,
    val_split: str | None,
    test_split: str | None,
    val_size: int | float | None,
    max_train_rows: int | None,
    max_eval_rows: int | None,
    seed: int,
) -> tuple[datasets.Dataset, datasets.Dataset | None, datasets.Dataset | None]:
    """(train, validation, test), each with ``__row__``. Without a validation split, ``val_size`` rows (count, or
    fraction if < 1) of train are held out, shuffled by ``seed``; the row caps apply afterwards (first rows, as HF's
    ``split="train[:n]"``)."""
    train = select_split(raw, train_split, source, "--data.init_args.train_split")
    train = with_row_numbers(train)
    if val_split is not None and val_split in raw:
        val = select_split(raw, val_split, source, "--data.init_args.val_split", max_eval_rows)
    elif val_size:
        check_val_size(val_size, len(train), train_split)
        parts = train.train_test_split(test_size=val_size, seed=seed, shuffle=True)
        train, val = parts["train"], parts["test"]
        val = val.select(range(min(max_eval_rows or len(val), len(val))))
    elif val_split is not None:
        raise ValueError(f"--data.init_args.val_split {val_split!r}: split not found in {source!r}; splits found: "
                         f"{sorted(raw)}. Set --data.init_args.val_size to hold out part of train, or "
                         f"--data.init_args.val_split null.")
    else:
        val = None
    if max_train_rows is not None:
        train = train.select(range(min(max_train_rows, len(train))))
    test = select_split(raw, test_split, source, "--data.init_args.test_split", max_eval_rows)
    return train, val and with_row_numbers(val), test and with_row_numbers(test)


def check_val_size(val_size: int | float, rows: int, split: str) -> None:
    """Refuse a held-out row count that leaves no training row."""
    if isinstance(val_size, int) and val_size >= rows:
        raise ValueError(f"--data.init_args.val_size {val_size}: the {split} split has {rows} rows, so none would be "
                         f"left to train on; hold out fewer (a count below {rows}, or a fraction between 0 and 1)")


def materialize(stream: datasets.IterableDataset, max_rows: int | None) -> datasets.Dataset:
    """The first ``max_rows`` rows of a stream (all when None) as an in-memory map-style split, for evaluation."""
    rows = list(stream.take(max_rows) if max_rows is not None else stream)
    if not rows:
        raise ValueError("the evaluation split is empty")
    return with_row_numbers(datasets.Dataset.from_list(rows, features=stream.features))


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


def arrow_columns(split: datasets.Dataset, columns: Sequence[str]) -> pa.Table:
    """The split's ``columns`` as one Arrow table, rows in the split's order.

    A split carved by ``val_size`` is a view (an index mapping) of the file's table; HF's row-order read of such a view
    took 14 s per million rows here, one Arrow ``take`` of the mapping takes 0.3 s.
    """
    table = split.data.table.select(list(columns))
    indices = split._indices  # None unless the split is a view: select, shuffle, train_test_split
    return table if indices is None else table.take(indices.column(0))


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


class RetrievalDataModule(L.LightningDataModule, ABC):
    """Shared options and plumbing: splits, the training source, the model's processor, DDP rank, evaluation loaders.

    Subclasses say which columns a split needs and check them (``check_split``), turn a prepared split into evaluation
    streams and tasks (``retrieval``), give each training row's values that may not repeat in a batch (``row_codes``
    column-wise for map-style data, ``admit`` row by row for a stream), and build the collators. Each rank evaluates
    every world_size-th item of every stream; the model's collectors gather and reorder them.

    Args:
        dataset: where the data comes from (see the subclass).
        data_files: explicit ``{split: file}`` for ``dataset`` (a format name such as ``json`` or ``parquet``, or a
            directory).
        train_split: name of the training split.
        val_split: name of the validation split; None to skip validation.
        test_split: name of the test split; None when there is none.
        val_size: hold out this many rows (or fraction, if < 1) of train as validation when ``val_split`` is absent.
            Streaming holds out the stream's first ``val_size`` rows (a count, not a fraction).
        max_train_rows: keep only the first rows of train (after carving validation); with streaming, ``take(n)``.
        max_eval_rows: keep only the first rows of validation and test.
        batch_size: pairs per device per step; in-batch negatives need at least 2.
        eval_batch_size: items per evaluation batch.
        no_duplicates: never put a value (text, image) twice in one batch (ST's ``BatchSamplers.NO_DUPLICATES``): a
            duplicate would be a false negative.
        drop_last: drop the last, smaller batches of an epoch. Without it, map-style epochs end with smaller batches,
            and under DDP the ranks are evened out by repeating the epoch's first batches: fewer than ``world_size``
            batches, so at most ``(world_size - 1) × batch_size`` rows are seen twice per epoch. No batch has one row
            (it has no negative): such rows are left out of the epoch and counted, and setup warns when repeated
            values make many (numbers of epoch 0, the value, the options).
        streaming: read the training split as a stream (HF ``IterableDataset``) instead of downloading and converting
            it whole: nothing is prepared before the first step, whatever the data's size. Validation and test
            splits are read in full (``max_eval_rows`` caps them) and kept in memory. Every rank reads its own shards
            (files) and yields ``rows // (batch_size × world_size)`` full batches per epoch; bad rows are skipped and
            reported per epoch.
        shuffle_buffer: streaming: rows in the shuffle buffer, reshuffled every epoch.
        stream_window: streaming: rows among which duplicate-free batches are formed (at least ``batch_size``).
        num_workers: DataLoader worker processes per device, where tokenisation and image decoding run. None: up to
            4 per GPU (they prepare batches while the GPU computes), none when training on the CPU (there a worker
            takes a core from the model: on 2 cores one worker cut MiniLM training from 11.7 to 10 pairs/s). A stream
            uses at most one worker per shard.
        seed: seed of the batch order (shuffled anew every epoch) and of the validation carve.
    """

    def __init__(
        self,
        dataset: str,
        data_files: dict[str, str] | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        val_size: int | float | None = None,
        max_train_rows: int | None = None,
        max_eval_rows: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        no_duplicates: bool = True,
        drop_last: bool = False,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        stream_window: int | None = None,
        num_workers: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"--data.init_args.batch_size must be ≥ 2 for in-batch negatives, got {batch_size}")
        if isinstance(val_size, float) and val_size >= 1 and val_size.is_integer():
            # a row count given as 500.0 (in YAML, or as jsonargparse parses `int | float` once some libraries are
            # imported): HF's splitter reads floats as fractions only
            val_size = int(val_size)
        if val_size is not None and not (isinstance(val_size, int) and val_size > 0 or 0 < val_size < 1):
            raise ValueError(f"--data.init_args.val_size must be a row count ≥ 1 or a fraction between 0 and 1 (null: "
                             f"hold out nothing), got {val_size}")
        if streaming and val_size is not None and not isinstance(val_size, int):
            raise ValueError(f"--data.init_args.val_size must be a row count with streaming (a fraction needs the "
                             f"stream's length), got {val_size}")
        for flag, value in (("max_train_rows", max_train_rows), ("max_eval_rows", max_eval_rows),
                            ("eval_batch_size", eval_batch_size), ("shuffle_buffer", shuffle_buffer)):
            if value is not None and value < 1:
                raise ValueError(f"--data.init_args.{flag} must be ≥ 1, got {value}"
                                 + (" (null: no cap)" if flag.startswith("max_") else ""))
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"--data.init_args.num_workers must be ≥ 0 (0: batches are prepared in the main process; "
                             f"null: chosen per device), got {num_workers}")
        self.save_hyperparameters()  # with the subclass's own arguments
        self.hparams.val_size = val_size  # as normalised above (the saved value is the caller's)
        self.splits: dict[str, datasets.Dataset] = {}
        self.where: dict[str, Where] = {}  # how messages name each split's data, rows and columns
        self.train_source: TrainSource | None = None
        self.processor = None  # the model's tokenizer / image transform, taken from the LightningModule in setup
        self.streams: dict[str, dict[str, list]] = {}
        self.tasks: dict[str, list[RetrievalTask]] = {}
        self._eval_loader_cache: dict[tuple, list[DataLoader]] = {}
        self._epoch_report = EpochReport()
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches of it already trained), from a checkpoint
        self._files_checked = False  # prepare_data and setup both need the local files read before HF loads them
        self._batch_order: dict[str, object] | None = None

    def builtins(self) -> dict[str, Callable[[], datasets.DatasetDict]]:
        """``builtin:<name>`` datasets this datamodule can generate."""
        return {}

    @abstractmethod
    def check_split(self, name: str, split: datasets.Dataset, where: Where) -> datasets.Dataset:
        """Check (and possibly filter) one map-style split; errors name ``where``, the rows (``where.rows`` of their
        ``__row__``) and the options (``where.flags``)."""

    @abstractmethod
    def retrieval(self, stage: str, split_name: str) -> tuple[dict[str, list], list[RetrievalTask]]:
        """The evaluation streams and tasks of ``stage`` ("val" or "test") built from a prepared split."""

    @abstractmethod
    def stream_collator(self, stream: str, stage: str) -> Callable:
        """Evaluation items ``(id, value)`` of one stream → ``{"stream", "ids", "features"}``."""

    def before_collation(self) -> None:
        """Called by ``setup`` once the splits and evaluation streams are known, before any collator is built."""

    @abstractmethod
    def train_collator(self) -> Callable:
        """Training rows → ``{"features": [one dict per loss column]}``."""

    @abstractmethod
    def row_codes(self, split: datasets.Dataset) -> np.ndarray:
        """(N, C) integer codes of each training row's values (see ``value_codes``): rows sharing one never meet."""

    @abstractmethod
    def admit(self, row: dict) -> tuple:
        """A streamed training row's values that may not repeat in a batch; raises ``BadRow`` to skip the row."""

    @property
    @abstractmethod
    def train_columns(self) -> list[str]:
        """Columns a training row needs."""

    def split_columns(self, name: str) -> list[str]:
        """The columns the model reads from split ``name`` ("train", "validation", "test")."""
        return self.train_columns

    def encoded(self, split):
        """The split with columns that HF would decode (images) kept encoded: decoding happens in the workers."""
        return split

    def head(self, name: str, rows: int = 1000) -> tuple[list[dict], int | None] | None:
        """The first ``rows`` rows of split ``name`` (its ``split_columns``, images still encoded) and the split's
        size (None: a stream of unknown length), for a model card's dataset section; None if the split is unused."""
        columns = self.split_columns(name)
        if name in self.splits:
            split = self.splits[name]
            return split.select_columns(columns).select(range(min(rows, len(split)))).to_list(), len(split)
        if name == "train" and isinstance(self.train_source, StreamingSource):
            stream = self.train_source.stream.select_columns(columns)
            return list(itertools.islice(stream, rows)), self.train_source.rows
        return None

    def text_columns(self, name: str) -> list[str]:
        """The columns of split ``name`` that hold texts (a local file's values there are checked to be strings)."""
        return self.split_columns(name)

    def check_files(self) -> None:
        """Read every local file of the splits in use once, before HF datasets does (``datamodules.files``), and
        raise one error for the faults of all of them, each by file and 1-based line; refuse a folder whose split
        has files of two formats. Rank 0 prints one line per split with the files feeding it (and the data files
        that feed none). A stream's files are all read here too, so a bad line fails the run at start-up, not when
        a worker reaches it."""
        h = self.hparams
        if self._files_checked or h.dataset.startswith("builtin:"):
            return
        builder = _builder(h.dataset, h.data_files)
        if builder is None:  # a hub name that cannot be reached: loading it says so
            return
        data_files = {str(split): [str(f) for f in files] for split, files in (builder.config.data_files or {}).items()}
        unread = []
        if os.path.isdir(h.dataset) and h.data_files is None and builder.name in ("json", "csv", "parquet"):
            unread = folder_files(h.dataset, data_files)
        roles = {split: name for name, split in (("test", h.test_split), ("validation", h.val_split),
                                                 ("train", h.train_split)) if split is not None}
        started, problems, lines = time.monotonic(), [], []
        for split in data_files:
            files = _local_files(builder, split)
            if not files or not all(map(is_table, files)):
                continue
            if split not in roles:
                lines.append(f"  {split} split (not used): {', '.join(files)}")
                continue
            rows = []
            for path in files:
                try:
                    rows.append(f"{path} ({scan_file(path, self.text_columns(roles[split])).rows} rows)")
                except DataFileError as err:
                    problems.append(str(err))
            lines.append(f"  {split} split: {', '.join(rows)}")
        took = time.monotonic() - started
        if problems:
            raise DataFileError("\n".join(problems))
        self._files_checked = True
        if self.rank()[0] != 0:
            return
        if unread:
            log.warning("%s: %d data file(s) match no split name (train, validation, test, and HF's other "
                        "spellings) and are not read: %s. Rename them (e.g. train-2.jsonl) or name every split's "
                        "files with --data.init_args.data_files", h.dataset, len(unread), ", ".join(unread))
        if lines:
            rank_zero_info(f"Data files of {h.dataset} (checked in {took:.1f} s):\n" + "\n".join(lines))

    def prepare_data(self) -> None:
        """Download and convert the data once per node (local rank 0): every rank's ``setup`` then reads the cache."""
        h = self.hparams
        self.check_files()
        if not h.streaming and not h.dataset.startswith("builtin:"):
            load_splits(h.dataset, self.builtins(), h.data_files)

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            self.processor = self.trainer.lightning_module.processor
        if self.splits:  # idempotent: fit, validate and test share the prepared data
            return
        h = self.hparams
        self.check_files()
        raw = load_splits(h.dataset, self.builtins(), h.data_files, streaming=h.streaming)
        self.where = self._where(raw)
        if isinstance(raw, datasets.IterableDatasetDict):
            train, val, test = self._stream_splits(raw)
        else:
            train, val, test = pick_splits(raw, h.dataset, h.train_split, h.val_split, h.test_split, h.val_size,
                                           h.max_train_rows, h.max_eval_rows, h.seed)
        problems = []  # every split's, in one message: rows held out by val_size are rows of the train files too
        for name, split in (("validation", val), ("test", test), ("train", train)):
            if isinstance(split, datasets.Dataset):
                try:
                    self.splits[name] = self.check_split(name, self.encoded(split), self.where[name])
                except ValueError as err:
                    problems.append(str(err))
        if problems:
            self.splits.clear()  # not set up: a later setup() must check again
            raise ValueError("\n".join(problems))
        for stage_name, split_name in (("val", "validation"), ("test", "test")):
            if split_name in self.splits:
                self.streams[stage_name], self.tasks[stage_name] = self.retrieval(stage_name, split_name)
                self._check_eval_size(split_name, self.streams[stage_name], self.tasks[stage_name])
        self.before_collation()
        if isinstance(train, datasets.Dataset):
            train = self.splits["train"]
            if h.streaming:  # a built-in dataset, generated in memory: streamed all the same
                self.train_source = self._streaming_source(train.to_iterable_dataset(num_shards=min(len(train), 8)),
                                                           len(train))
            else:
                codes = self.row_codes(train) if h.no_duplicates else np.arange(len(train))[:, None]
                self.train_source = MapStyleSource(train, codes, h.batch_size, h.drop_last, h.seed,
                                                   self.train_collator())
                self._check_batches(train, codes)
        else:
            self.train_source = self._streaming_source(*train)

    def _check_eval_size(self, split_name: str, streams: dict[str, list], tasks: list[RetrievalTask]) -> None:
        """Refuse an evaluation of fewer than 2 queries or documents: against one document every ranking is right,
        so every metric is 1.0 whatever the model (``val_size 1.0`` holds out one row); warn (rank 0) under
        ``FEW_QUERIES`` queries, where one query moves a metric by more than 0.1."""
        h, where = self.hparams, self.where[split_name]
        held_out = split_name == "validation" and bool(h.val_size) and where.file_split == h.train_split
        flags = (["--data.init_args.val_size (a row count, or a fraction between 0 and 1; 1.0 is one row)"] if held_out
                 else [f"--data.init_args.{'val' if split_name == 'validation' else 'test'}_split (a bigger split)"])
        flags += ["--data.init_args.max_eval_rows"] if h.max_eval_rows is not None else []
        for task in tasks:
            queries, documents = len(task.relevant), len(streams[task.corpus_stream])
            task_name = f" ({task.name})" if task.name else ""
            counts = (f"{where}{task_name}: {queries} quer{'ies' if queries != 1 else 'y'} against {documents} "
                      f"item{'s' * (documents != 1)} to rank")
            if min(queries, documents) < 2:
                raise ValueError(f"{counts}: with fewer than 2 of either a retrieval metric says nothing (against one "
                                 f"item every ranking is right: 1.0 whatever the model). Evaluate on more rows: raise "
                                 f"{' or '.join(flags)}.")
            if queries < FEW_QUERIES and self.rank()[0] == 0:
                log.warning("%s: each query moves its metrics by 1/%d; for steadier numbers raise %s", counts, queries,
                            " or ".join(flags))

    def _where(self, raw: datasets.DatasetDict | datasets.IterableDatasetDict) -> dict[str, Where]:
        """How messages name each split, its rows (by file and line) and the options naming its columns."""
        h = self.hparams
        flags: dict[str, str] = {}
        for key, value in h.items():  # the options that name columns: ``columns`` (a list) and ``*_column``
            names = value if key == "columns" else [value] if key.endswith("_column") and value else None
            for column in names or []:
                flags.setdefault(column, f"--data.init_args.{key}")
        where = {name: Where(f"{h.dataset} ({name} split)", h.dataset, split, h.data_files, flags)
                 for name, split in (("train", h.train_split), ("validation", h.val_split), ("test", h.test_split))
                 if split is not None}
        if h.val_size and (h.val_split is None or h.val_split not in raw):  # rows of the train files
            where["validation"] = Where(f"{h.dataset} (validation rows held out of the {h.train_split} split by "
                                        f"--data.init_args.val_size)", h.dataset, h.train_split, h.data_files, flags)
        return where

    def _check_batches(self, train: datasets.Dataset, codes: np.ndarray) -> None:
        """Refuse training rows that form no batch; say once (rank 0), with epoch 0's numbers, when repeated values
        shrink the batches or leave rows out (the sampler leaves out rows that would be a batch of one row).

        Epoch 0's batches are formed here only when a value is in more rows than there are batches (a few seconds per
        million rows with repeats); below that, repeats cost at most a few rows at an epoch's end, which the sampler
        logs each epoch.
        """
        h, where, rows, size = self.hparams, self.where["train"], len(codes), self.hparams.batch_size
        if h.drop_last and rows < size:
            raise ValueError(f"{where}: {rows} rows make no batch of {size} (--data.init_args.drop_last true): lower "
                             f"--data.init_args.batch_size or set --data.init_args.drop_last false")
        count, row, column = _most_repeated(codes)
        if count <= -(-rows // size):
            return
        formed = NoDuplicatesBatchSampler(codes, size, seed=h.seed, num_replicas=1, rank=0).st_batches()
        full, ones = sum(len(b) == size for b in formed), sum(len(b) == 1 for b in formed)
        kept = full * size if h.drop_last else rows - ones
        holders = np.flatnonzero((codes == codes[row, column]).any(axis=1))
        named = np.sort(arrow_columns(train, [ROW]).column(0).take(holders).to_numpy())[:SHOWN_ROWS].tolist()
        value = f"{self.value_name(train, int(row), int(column))} is in {count} of the {rows} rows " \
                f"({where.rows(named, count)})"
        if not kept:
            raise ValueError(
                f"{where}: no batch of {size if h.drop_last else 'two or more'} rows can be formed without repeating a "
                f"value (--data.init_args.no_duplicates true): {value}. Remove the repeated rows, or set "
                f"--data.init_args.no_duplicates false to let repeats share a batch (they then count as each "
                f"other's negatives){' or --data.init_args.drop_last false' if h.drop_last else ''}.")
        if self.rank()[0] != 0:
            return
        smaller = [len(b) for b in formed if 1 < len(b) < size] if not h.drop_last else []
        suggest = rows // count
        log.warning(
            f"{where}: repeated values shrink the training batches. Epoch 0 (the others alike): {rows} rows make "
            f"{full} batches of {size}"
            + (f", {len(smaller)} smaller batch{'es' * (len(smaller) > 1)} ({sum(smaller)} rows)" if smaller else "")
            + (f" and leave {rows - kept} rows out" + (" (--data.init_args.drop_last true)" if h.drop_last else
               " (each would be a batch of one row, which has no in-batch negative)") if rows > kept else "")
            + f". --data.init_args.no_duplicates true puts a value in at most one row of a batch, and {value}. To "
            f"keep more rows: deduplicate the data, "
            + (f"lower --data.init_args.batch_size to about {suggest}, " if 2 <= suggest < size else "")
            + "or set --data.init_args.no_duplicates false (repeats then count as each other's negatives)"
            + ("" if h.drop_last else "; --data.init_args.drop_last true trains on full batches only") + ".")

    def value_name(self, split: datasets.Dataset, row: int, column: int) -> str:
        """The value of ``row_codes(split)[row, column]`` for messages: by default ``train_columns[column]``'s."""
        name = self.train_columns[column]
        value = split[row][name]
        return f"{value[:60] + '…' if isinstance(value, str) and len(value) > 60 else value!r} (column {name!r})"

    def _stream_splits(self, raw: datasets.IterableDatasetDict):
        """((train stream, its row count or None), validation, test): evaluation splits materialised, train not."""
        h = self.hparams
        if h.train_split not in raw:
            raise ValueError(f"--data.init_args.train_split {h.train_split!r}: split not found in {h.dataset!r}; "
                             f"splits found: {sorted(raw)}")
        train = self.encoded(raw[h.train_split])
        check_columns(train, self.train_columns, self.where["train"])
        rows = count_rows(h.dataset, h.train_split, h.data_files)
        val = test = None
        if h.val_split is not None and h.val_split in raw:
            val = materialize(self.encoded(raw[h.val_split]), h.max_eval_rows)
        elif h.val_size:
            if rows is not None:
                check_val_size(h.val_size, rows, h.train_split)
            val = materialize(train, min(h.val_size, h.max_eval_rows or h.val_size))
            train = train.skip(h.val_size)
            rows = rows - h.val_size if rows is not None else None
        elif h.val_split is not None:
            raise ValueError(f"--data.init_args.val_split {h.val_split!r}: split not found in {h.dataset!r}; "
                             f"splits found: {sorted(raw)}. Set --data.init_args.val_size to hold out part of train, or "
                             f"--data.init_args.val_split null.")
        if h.test_split is not None:
            if h.test_split not in raw:
                raise ValueError(f"--data.init_args.test_split {h.test_split!r}: split not found in "
                                 f"{h.dataset!r}; splits found: {sorted(raw)}")
            test = materialize(self.encoded(raw[h.test_split]), h.max_eval_rows)
        if h.max_train_rows is not None:
            train = train.take(h.max_train_rows)
            rows = min(rows, h.max_train_rows) if rows is not None else h.max_train_rows
        return (train, rows), val, test

    def _streaming_source(self, stream: datasets.IterableDataset, rows: int | None) -> StreamingSource:
        h, trainer = self.hparams, self.trainer
        admit = self.admit if h.no_duplicates else _distinct
        return StreamingSource(
            stream, rows, max_steps=trainer.max_steps if trainer is not None else -1,
            accumulate=trainer.accumulate_grad_batches if trainer is not None else 1, batch_size=h.batch_size,
            seed=h.seed, buffer_size=h.shuffle_buffer, window=h.stream_window or 8 * h.batch_size, admit=admit,
            collate=self.train_collator(), where=f"{h.dataset} (train stream)")

    def train_dataloader(self) -> DataLoader:
        rank, world = self.rank()
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        resume = self._resume_at if self._resume_at is not None and self._resume_at[0] >= epoch else None
        if resume is not None:
            # Lightning asks for this loader (and starts iterating it) before it restores its epoch counter
            epoch = resume[0]
        return self.train_source.dataloader(epoch=epoch, rank=rank, world=world, options=self.loader_options(),
                                            resume=resume)

    def state_dict(self) -> dict:
        """Where the training batches stand, saved in every checkpoint: the epoch, how many of its batches were
        trained (resuming serves the batches an uninterrupted run would have trained next, not the epoch's first) and
        what that order depends on (``batch_order``)."""
        if self.trainer is None or self.trainer.state.fn != "fit":
            return {}
        # also in a checkpoint written when an evaluation inside fit ends (trainer.training is False then): the one
        # written at a step an evaluation follows is that one
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed, "order": self.batch_order()}

    def batch_order(self) -> dict[str, object]:
        """What an epoch's training batches depend on, by the option that sets it: a resume inside an epoch serves the
        batches after the ones trained, which are those batches only if none of this changed. The data is identified
        by its rows: their count and a hash of up to 1,000 of them spread over the split (the train files' names and
        sizes for a stream), so a moved copy of the same data still resumes."""
        if self._batch_order is None:
            h, source = self.hparams, self.train_source
            options = self.loader_options() if self.trainer is not None else {"num_workers": h.num_workers}
            order = {"--data.init_args.batch_size": h.batch_size, "--data.init_args.seed": h.seed,
                     "--data.init_args.drop_last": h.drop_last, "--data.init_args.no_duplicates": h.no_duplicates,
                     "--data.init_args.streaming": h.streaming,
                     "--trainer.devices × --trainer.num_nodes (training processes)": self.rank()[1],
                     self.where["train"].flags(self.train_columns) + " (training columns)": list(self.train_columns)}
            if isinstance(source, StreamingSource):
                # each worker reads its own shards: the number of workers is part of the order
                files = self.where["train"].files()
                order |= {"--data.init_args.num_workers": options["num_workers"],
                          "--data.init_args.shuffle_buffer": h.shuffle_buffer,
                          "--data.init_args.stream_window": h.stream_window,
                          "--data.init_args.dataset (training rows)": source.rows,
                          "--data.init_args.dataset (training files)": _file_sizes(files) if files else h.dataset}
            else:
                train = self.splits["train"]
                order |= {"--data.init_args.dataset (training rows)": len(train),
                          "--data.init_args.dataset (hash of training rows)": _rows_hash(train, self.train_columns)}
            self._batch_order = order
        return self._batch_order

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_at = (state_dict["epoch"], state_dict["batches"]) if state_dict else None

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "report" in batch:  # what a stream's worker skipped since its last batch
            self._epoch_report.add(batch.pop("report"))
        return batch

    def report_epoch(self, epoch: int) -> None:
        """Log what this rank's stream skipped or read twice in the epoch that ended, then start counting anew."""
        report, self._epoch_report = self._epoch_report, EpochReport()
        rank = self.rank()[0]
        if report.skipped:
            log.warning("epoch %d, rank %d: %d training row(s) skipped, e.g.:\n  %s", epoch, rank, report.skipped,
                        "\n  ".join(report.examples))
        if report.repeated_passes:
            log.warning("epoch %d, rank %d: a worker's shards ran out %d time(s) before the epoch's batches were "
                        "complete and were read again (more skipped rows or fewer shards than the others)", epoch,
                        rank, report.repeated_passes)

    @property
    def equal_batch_sizes(self) -> bool:
        """Whether every training batch on every rank has ``batch_size`` rows (what a cross-device gather needs); the
        training source (built by ``setup("fit")``) knows."""
        return self.train_source.equal_batch_sizes

    def retrieval_tasks(self, stage: str) -> list[RetrievalTask]:
        return self.tasks.get(stage, [])

    def loader_options(self) -> dict:
        """Worker processes (kept alive between epochs and evaluations) and pinned memory, for every DataLoader."""
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        workers = self.hparams.num_workers
        if workers is None:
            workers = max(1, min(4, (os.cpu_count() or 1) // self.trainer.num_devices - 1)) if on_gpu else 0
        # pinned host batches copy to a GPU without a host-device sync per tensor. Each loader draws its workers' base
        # seed from a generator of its own, not torch's global one: the global generator then serves dropout alone,
        # so a resumed run that restores it draws the masks the uninterrupted run drew (no data iterator in between)
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": on_gpu,
                "generator": torch.Generator().manual_seed(self.hparams.seed)}

    def rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _eval_loaders(self, stage: str) -> list[DataLoader]:
        # Built once and kept, with persistent workers: every evaluation of a fit (and the base-model one before it)
        # reuses the same worker processes. Reaping them after each evaluation took ~0.9 s per stream on the H100
        # machine (profiled), more than encoding 1,600 texts with BERT-base there.
        rank, world = self.rank()
        options = self.loader_options()
        key = (stage, rank, world, *(v for k, v in options.items() if k != "generator"))
        if key in self._eval_loader_cache:
            return self._eval_loader_cache[key]
        loaders = []
        for stream, values in self.streams[stage].items():
            # every rank gets the same number of items, at least one (a rank without a stream would skip the gather
            # that computes its metrics): the last ranks repeat a few first items, which the collector drops
            padded = -(-len(values) // world) * world
            items = [(i % len(values), values[i % len(values)]) for i in range(rank, padded, world)]
            # longest texts first, as ST's encode does: batches of similar length waste less padding
            items.sort(key=lambda item: -len(item[1]) if isinstance(item[1], str) else 0)
            loaders.append(DataLoader(items, batch_size=self.hparams.eval_batch_size,
                                      collate_fn=self.stream_collator(stream, stage), **options))
        self._eval_loader_cache[key] = loaders
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val") if "val" in self.streams else []

    @property
    def predict_stage(self) -> str:
        """Whose evaluation streams ``train.py predict`` embeds: the test split's, else the validation split's."""
        if not self.streams:
            raise ValueError("nothing to predict: the dataset has no validation or test split")
        return "test" if "test" in self.streams else "val"

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.predict_stage)

    def item_columns(self, stage: str, stream: str) -> dict[str, list]:
        """What each item of an evaluation stream is, by id, as named columns (``train.py predict`` writes them next
        to the embeddings): its text."""
        return {"text": list(self.streams[stage][stream])}

    def test_dataloader(self) -> list[DataLoader]:
        if "test" not in self.streams:
            raise ValueError("no test split: set --data.init_args.test_split to the name of the dataset's test split")
        return self._eval_loaders("test")


def _most_repeated(codes: np.ndarray) -> tuple[int, int, int]:
    """(rows holding it, a row, its column) of the value in the most rows (a row holding it twice counts once)."""
    first = np.ones(codes.shape, dtype=bool)
    for c in range(1, codes.shape[1]):
        first[:, c] = (codes[:, :c] != codes[:, c:c + 1]).all(axis=1)
    counts = np.bincount(codes[first])
    row, column = np.argwhere(codes == counts.argmax())[0]
    return int(counts.max()), int(row), int(column)


def _rows_hash(split: datasets.Dataset, columns: Sequence[str], rows: int = 1000) -> str:
    """A hash of ``columns`` in up to ``rows`` rows spread evenly over the split, its first and last included: rows
    added, removed or reordered anywhere move the sampled positions onto other rows."""
    positions = np.unique(np.linspace(0, len(split) - 1, min(rows, len(split))).round().astype(np.int64))
    sample = arrow_columns(split, columns).take(pa.array(positions))
    return hashlib.blake2b(repr(sample.to_pylist()).encode(), digest_size=8).hexdigest()


def _file_sizes(files: Sequence[str]) -> list[str]:
    return [f"{os.path.basename(f)} ({os.path.getsize(f)} bytes)" for f in files]


def _distinct(row: dict) -> tuple:
    """no_duplicates off: no row conflicts with another."""
    return (object(),)
