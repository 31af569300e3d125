"""Loading splits from a hub name, a local directory or file, or a built-in generator; eval task description."""

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import pyarrow.parquet as pq
from torch.utils.data import DataLoader

from datamodules.sources import BadRow, EpochReport, MapStyleSource, StreamingSource, TrainSource

log = logging.getLogger(__name__)

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROW = "__row__"  # each row's position as loaded, kept for messages


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
    if streaming and not source.startswith("builtin:"):
        options = stream_read_options(source, data_files)
        if options:
            return _load_splits(source, builtins, data_files, streaming, **options)
    return _load_splits(source, builtins, data_files, streaming)


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
            raise ValueError(f"--data.dataset: unknown built-in dataset {name!r}; built-ins: {sorted(builtins)}")
        return builtins[name]()
    if data_files is not None:
        return datasets.load_dataset(source, data_files=data_files, streaming=streaming, **options)
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in FILE_FORMATS:
            raise ValueError(f"--data.dataset {source!r}: unsupported file type {ext!r}; use one of {sorted(FILE_FORMATS)}")
        return datasets.load_dataset(FILE_FORMATS[ext], data_files={"train": source}, streaming=streaming, **options)
    if os.path.isdir(source):
        return datasets.load_dataset(source, streaming=streaming, **options)
    try:
        return datasets.load_dataset(source, streaming=streaming, **options)
    except Exception as err:  # offline, misspelt or private: all surface here
        raise ValueError(
            f"--data.dataset {source!r} is not a file, not a directory and could not be loaded from the hub "
            f"({type(err).__name__}: {err}). Check the path, or pass a local .jsonl/.csv/.parquet file or directory."
        ) from err


def count_rows(source: str, split: str, data_files: dict[str, str] | None = None) -> int | None:
    """Rows of a split without reading it: the hub metadata's count, parquet footers, or newlines of jsonl/csv files
    (an imagefolder's metadata.jsonl). None when neither tells (e.g. a .json array)."""
    if source.startswith("builtin:"):
        return None
    if os.path.isfile(source):
        source, data_files = FILE_FORMATS.get(os.path.splitext(source)[1].lower(), source), {"train": source}
    try:
        builder = datasets.load_dataset_builder(source, data_files=data_files)
    except Exception:  # the stream itself will report what is wrong with the source
        return None
    if builder.info.splits and split in builder.info.splits and builder.info.splits[split].num_examples:
        return builder.info.splits[split].num_examples
    files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    metadata = [f for f in files if os.path.basename(f) == "metadata.jsonl"]
    files = metadata or files
    if not files or not all(os.path.isfile(f) for f in files):
        return None
    total = 0
    for path in files:
        ext = os.path.splitext(path)[1].lower()
        if ext == ".parquet":
            total += pq.ParquetFile(path).metadata.num_rows
        elif ext in (".jsonl", ".csv"):
            total += _count_lines(path) - (ext == ".csv")
        else:
            return None
    return total


def _count_lines(path: str) -> int:
    """Non-empty lines, read in 16 MiB blocks (about 0.1 s per 150 MB)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n") - block.count(b"\n\n")
            last = block[-1:]
    return lines + (last != b"\n")


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
    train = select_split(raw, train_split, source, "--data.train_split")
    train = with_row_numbers(train)
    if val_split is not None and val_split in raw:
        val = select_split(raw, val_split, source, "--data.val_split", max_eval_rows)
    elif val_size:
        parts = train.train_test_split(test_size=val_size, seed=seed, shuffle=True)
        train, val = parts["train"], parts["test"]
        val = val.select(range(min(max_eval_rows or len(val), len(val))))
    elif val_split is not None:
        raise ValueError(f"--data.val_split {val_split!r}: split not found in {source!r}; splits found: {sorted(raw)}. "
                         f"Set --data.val_size to hold out part of train, or --data.val_split null.")
    else:
        val = None
    if max_train_rows is not None:
        train = train.select(range(min(max_train_rows, len(train))))
    test = select_split(raw, test_split, source, "--data.test_split", max_eval_rows)
    return train, val and with_row_numbers(val), test and with_row_numbers(test)


def materialize(stream: datasets.IterableDataset, max_rows: int | None) -> datasets.Dataset:
    """The first ``max_rows`` rows of a stream (all when None) as an in-memory map-style split, for evaluation."""
    rows = list(stream.take(max_rows) if max_rows is not None else stream)
    if not rows:
        raise ValueError("the evaluation split is empty")
    return with_row_numbers(datasets.Dataset.from_list(rows, features=stream.features))


def check_columns(split: datasets.Dataset | datasets.IterableDataset, columns: Sequence[str], where: str) -> None:
    """Raise if a column is missing, naming it and the columns that exist (a stream of unknown columns passes)."""
    found = split.column_names
    if found is None:
        return
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; columns found: {[c for c in found if c != ROW]}. "
                         f"Set the --data.*column* options to the dataset's column names.")


def arrow_columns(split: datasets.Dataset, columns: Sequence[str]) -> pa.Table:
    """The split's ``columns`` as one Arrow table, rows in the split's order.

    A split carved by ``val_size`` is a view (an index mapping) of the file's table; HF's row-order read of such a view
    took 14 s per million rows here, one Arrow ``take`` of the mapping takes 0.3 s.
    """
    table = split.data.table.select(list(columns))
    indices = split._indices  # None unless the split is a view: select, shuffle, train_test_split
    return table if indices is None else table.take(indices.column(0))


def check_texts(split: datasets.Dataset, columns: Sequence[str], where: str) -> None:
    """Raise on None or blank texts, naming the first rows and columns: such a row would train on nothing.

    Column-wise in Arrow (about 1 s per million rows and column), not row by row in Python.
    """
    table = arrow_columns(split, [*columns, ROW])
    for column in columns:
        values = table.column(column)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0)
            bad = pc.indices_nonzero(pc.fill_null(blank, True))
        else:  # numbers, lists, all-null columns: nothing in them is text
            bad = pa.array(range(len(values)))
        if len(bad):
            rows = table.column(ROW).take(bad[:5]).to_pylist()
            first = values.take(bad[:1]).to_pylist()[0]
            more = f" ({len(bad) - 1} more such rows: {', '.join(map(str, rows[1:]))}{', …' if len(bad) > 5 else ''})" \
                if len(bad) > 1 else ""
            raise ValueError(f"{where}: row {rows[0]}, column {column!r} has an empty or non-text value ({first!r})"
                             f"{more}. Remove or fill those rows.")


def text_value(row: dict, column: str, where: str) -> str:
    """A stream row's text, or :class:`BadRow` naming the row by its other values."""
    value = row.get(column)
    if isinstance(value, str) and value.strip():
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
            batches, so at most ``(world_size - 1) × batch_size`` rows are seen twice per epoch.
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
            raise ValueError(f"--data.batch_size must be ≥ 2 for in-batch negatives, got {batch_size}")
        if streaming and val_size is not None and not (isinstance(val_size, int) and val_size > 0):
            raise ValueError(f"--data.init_args.val_size must be a row count with streaming (a fraction needs the "
                             f"stream's length), got {val_size}")
        self.save_hyperparameters()  # with the subclass's own arguments
        self.splits: dict[str, datasets.Dataset] = {}
        self.train_source: TrainSource | None = None
        self.processor = None  # the model's tokenizer / image transform, taken from the LightningModule in setup
        self.streams: dict[str, dict[str, list]] = {}
        self.tasks: dict[str, list[RetrievalTask]] = {}
        self._eval_loader_cache: dict[tuple, list[DataLoader]] = {}
        self._epoch_report = EpochReport()

    def builtins(self) -> dict[str, Callable[[], datasets.DatasetDict]]:
        """``builtin:<name>`` datasets this datamodule can generate."""
        return {}

    @abstractmethod
    def check_split(self, name: str, split: datasets.Dataset, where: str) -> datasets.Dataset:
        """Check (and possibly filter) one map-style split; errors name ``where`` and the rows."""

    @abstractmethod
    def retrieval(self, stage: str, split_name: str) -> tuple[dict[str, list], list[RetrievalTask]]:
        """The evaluation streams and tasks of ``stage`` ("val" or "test") built from a prepared split."""

    @abstractmethod
    def stream_collator(self, stream: str, stage: str) -> Callable:
        """Evaluation items ``(id, value)`` of one stream → ``{"stream", "ids", "features"}``."""

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

    def encoded(self, split):
        """The split with columns that HF would decode (images) kept encoded: decoding happens in the workers."""
        return split

    def prepare_data(self) -> None:
        """Download and convert the data once per node (local rank 0): every rank's ``setup`` then reads the cache."""
        h = self.hparams
        if not h.streaming and not h.dataset.startswith("builtin:"):
            load_splits(h.dataset, self.builtins(), h.data_files)

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            self.processor = self.trainer.lightning_module.processor
        if self.splits:  # idempotent: fit, validate and test share the prepared data
            return
        h = self.hparams
        where = f"{h.dataset} ({{}} split)".format
        raw = load_splits(h.dataset, self.builtins(), h.data_files, streaming=h.streaming)
        if isinstance(raw, datasets.IterableDatasetDict):
            train, val, test = self._stream_splits(raw)
        else:
            train, val, test = pick_splits(raw, h.dataset, h.train_split, h.val_split, h.test_split, h.val_size,
                                           h.max_train_rows, h.max_eval_rows, h.seed)
        for name, split in (("validation", val), ("test", test)):
            if split is not None:
                self.splits[name] = self.check_split(name, self.encoded(split), where(name))
        if isinstance(train, datasets.Dataset):
            train = self.check_split("train", self.encoded(train), where("train"))
            self.splits["train"] = train
            if h.streaming:  # a built-in dataset, generated in memory: streamed all the same
                self.train_source = self._streaming_source(train.to_iterable_dataset(num_shards=min(len(train), 8)),
                                                           len(train))
            else:
                codes = self.row_codes(train) if h.no_duplicates else np.arange(len(train))[:, None]
                self.train_source = MapStyleSource(train, codes, h.batch_size, h.drop_last, h.seed,
                                                   self.train_collator())
        else:
            self.train_source = self._streaming_source(*train)
        for stage_name, split_name in (("val", "validation"), ("test", "test")):
            if split_name in self.splits:
                self.streams[stage_name], self.tasks[stage_name] = self.retrieval(stage_name, split_name)

    def _stream_splits(self, raw: datasets.IterableDatasetDict):
        """((train stream, its row count or None), validation, test): evaluation splits materialised, train not."""
        h = self.hparams
        if h.train_split not in raw:
            raise ValueError(f"--data.train_split {h.train_split!r}: split not found in {h.dataset!r}; splits found: "
                             f"{sorted(raw)}")
        train = self.encoded(raw[h.train_split])
        check_columns(train, self.train_columns, f"{h.dataset} (train split)")
        rows = count_rows(h.dataset, h.train_split, h.data_files)
        val = test = None
        if h.val_split is not None and h.val_split in raw:
            val = materialize(self.encoded(raw[h.val_split]), h.max_eval_rows)
        elif h.val_size:
            val = materialize(train, min(h.val_size, h.max_eval_rows or h.val_size))
            train = train.skip(h.val_size)
            rows = rows - h.val_size if rows is not None else None
        elif h.val_split is not None:
            raise ValueError(f"--data.val_split {h.val_split!r}: split not found in {h.dataset!r}; splits found: "
                             f"{sorted(raw)}. Set --data.val_size to hold out part of train, or --data.val_split null.")
        if h.test_split is not None:
            if h.test_split not in raw:
                raise ValueError(f"--data.test_split {h.test_split!r}: split not found in {h.dataset!r}; splits "
                                 f"found: {sorted(raw)}")
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
        return self.train_source.dataloader(epoch=epoch, rank=rank, world=world, options=self.loader_options())

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
        # pinned host batches copy to a GPU without a host-device sync per tensor
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": on_gpu}

    def rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _eval_loaders(self, stage: str) -> list[DataLoader]:
        # Built once and kept, with persistent workers: every evaluation of a fit (and the base-model one before it)
        # reuses the same worker processes. Reaping them after each evaluation took ~0.9 s per stream on the H100
        # machine (profiled), more than encoding 1,600 texts with BERT-base there.
        rank, world = self.rank()
        options = self.loader_options()
        key = (stage, rank, world, *options.values())
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

    def predict_dataloader(self) -> list[DataLoader]:
        """The evaluation streams (test split, else validation) to embed with ``train.py predict``."""
        if not self.streams:
            raise ValueError("nothing to predict: the dataset has no validation or test split")
        return self._eval_loaders("test" if "test" in self.streams else "val")

    def test_dataloader(self) -> list[DataLoader]:
        if "test" not in self.streams:
            raise ValueError("no test split: set --data.test_split to the name of the dataset's test split")
        return self._eval_loaders("test")


def _distinct(row: dict) -> tuple:
    """no_duplicates off: no row conflicts with another."""
    return (object(),)
