"""The base datamodule: options, Lightning's hooks (setup, loaders, the batch position a checkpoint keeps) and what a
subclass provides (the columns it checks, its evaluation streams and tasks, its collators)."""

import hashlib
import itertools
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from datamodules.batches import REPORT, SOURCE, STREAM
from datamodules.builtin_datasets import SEED, Builtins
from datamodules.checks import check_batches, check_columns, check_eval_size, check_files
from datamodules.contract import DataNeeds, RetrievalTask, TrainingTexts
from datamodules.loading import count_rows, load_splits
from datamodules.locations import Where
from datamodules.mixture import MixtureSource, StreamMixtureSource, build_sources, source_errors, source_flag, source_task
from datamodules.sources import EpochReport, MapStyleSource, StreamingSource, TrainSource
from datamodules.splits import HOLD_OUT, arrow_columns, check_val_size, materialize, pick_splits, select_split, \
    split_not_found

log = logging.getLogger(__name__)


class RetrievalDataModule(L.LightningDataModule, ABC):
    """Shared options and plumbing: splits, the training source, the model's processor, DDP rank, evaluation loaders.

    The model hands over what the data needs through ``connect(model.data_needs())`` (``datamodules.contract``),
    once, before ``setup``: ``train.py`` does so right after building both.

    Subclasses must say which columns a split needs and check them (``train_columns``, ``check_split``), turn a
    prepared split into evaluation streams and tasks (``retrieval``), give each training row's values that may not
    repeat in a batch (``row_codes`` column-wise for map-style data, ``admit`` row by row for a stream), and build the
    collators (``train_collator``, ``stream_collator``): abstract, so a subclass without one cannot be built. They may
    override the optional hooks, whose defaults serve one text per column: ``builtins``, ``split_columns``,
    ``text_columns``, ``encoded``, ``before_collation``, ``value_name`` and ``item_columns``. Each rank evaluates
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
        sources: train on several sources (``datamodules.mixture``): each source's name → its options, any of this
            datamodule's but ``sampling``, ``seed``, ``num_workers`` and ``eval_batch_size`` (the mixture's), plus a
            ``weight`` for weighted sampling. A source inherits every option it does not set from the recipe's
            (these), so ``--data.init_args.batch_size`` sets every source's; the recipe's own ``dataset`` is then
            only that default. Each batch comes from one source; each source's validation data is its own retrieval
            task (``val/<source>_…``), and their mean is logged as ``val/mean_…``.
        sampling: with ``sources``: ``proportional`` (each source's batches once per epoch, interleaved at random:
            sentence-transformers' default), ``round_robin`` (one batch of each source in turn until the smallest runs
            out) or ``weighted`` (each batch's source drawn by the sources' ``weight``; as many batches per epoch as
            all sources have; a source drawn more often than it has batches is read again, reshuffled, and logged).
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
        seed: int = SEED,
        sources: dict[str, dict] | None = None,
        sampling: str = "proportional",
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
        self.processor: Callable | None = None  # the model's tokenizer / image transform, handed over by connect
        self.streams: dict[str, dict[str, list]] = {}
        self.tasks: dict[str, list[RetrievalTask]] = {}
        self._eval_loader_cache: dict[tuple, list[DataLoader]] = {}
        self._epoch_report = EpochReport()
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches of it already trained), from a checkpoint
        self._files_checked = False  # prepare_data and setup both need the local files read before HF loads them
        self._batch_order: dict[str, object] | None = None
        self.source_name: str | None = None  # a source of a mixture: its name (set by the mixture)
        self.source_options: list[str] = []  # the options the source sets itself
        self.mixture_weight = 1.0
        # the sources of a mixture, each a datamodule of this class (datamodules.mixture.build_sources)
        self.sources: dict[str, RetrievalDataModule] = build_sources(self, sources, sampling)
        self._stream_owner: dict[str, dict[str, tuple[RetrievalDataModule, str]]] = {}  # mixture stream → source's

    def connect(self, needs: DataNeeds) -> None:
        """Take what the model hands the data (``model.data_needs()``): the processor the collators call. Subclasses
        that serve a model's constant towers read ``needs.constant_towers`` too."""
        self.processor = needs.processor
        for name, source in self.sources.items():
            with source_errors(name, source.source_options):
                source.connect(needs)

    def source_defaults(self, name: str, count: int) -> dict:
        """Options a source named ``name`` of ``count`` takes unless it sets them (before the recipe's)."""
        return {}

    def builtins(self) -> Builtins:
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
        """Evaluation items ``(id, value)`` of one stream → an ``EvalBatch`` (``datamodules.batches``)."""

    def before_collation(self) -> None:
        """Called by ``setup`` once the splits and evaluation streams are known, before any collator is built."""

    @abstractmethod
    def train_collator(self) -> Callable:
        """Training rows → a ``TrainBatch`` (``datamodules.batches``): one features dict per loss column."""

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
        """Read every local file of the splits in use once, before HF datasets does (``datamodules.checks.
        check_files``): a bad line fails the run at start-up, a stream's too, not when a worker reaches it."""
        h = self.hparams
        if self._files_checked or h.dataset.startswith("builtin:"):
            return
        roles = {split: name for name, split in (("test", h.test_split), ("validation", h.val_split),
                                                 ("train", h.train_split)) if split is not None}
        self._files_checked = check_files(h.dataset, h.data_files, roles, self.text_columns,
                                          announce=self.rank()[0] == 0)

    def prepare_data(self) -> None:
        """Download and convert the data once per node (local rank 0): every rank's ``setup`` then reads the cache."""
        h = self.hparams
        if self.sources:
            for name, source in self.sources.items():
                with source_errors(name, source.source_options):
                    source.prepare_data()
            return
        self.check_files()
        if not h.streaming and not h.dataset.startswith("builtin:"):
            load_splits(h.dataset, self.builtins(), h.data_files)

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            raise ValueError(f"{type(self).__name__} has no processor to build batches with: call "
                             f"datamodule.connect(model.data_needs()) before trainer.fit, validate, test or predict "
                             f"(as train.py does)")
        if self.splits or self.train_source is not None:  # idempotent: fit, validate and test share the prepared data
            return
        if self.sources:
            self._setup_sources(stage)
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
                self.train_source = self.stream_source()
            else:
                codes = self.row_codes(train) if h.no_duplicates else np.arange(len(train))[:, None]
                self.train_source = MapStyleSource(train, codes, h.batch_size, h.drop_last, h.seed,
                                                   self.train_collator())
                check_batches(train, codes, self.where["train"], h.batch_size, h.drop_last, h.seed, self.value_name,
                              warn=self.rank()[0] == 0)
        else:
            self.train_source = self._streaming_source(*train)

    def _setup_sources(self, stage: str | None) -> None:
        """Set every source up, then serve their evaluation streams and tasks under the mixture's names and their
        training batches through one ``MixtureSource``."""
        for name, source in self.sources.items():
            source.trainer = self.trainer
            with source_errors(name, source.source_options):
                source.setup(stage)
            for stage_name, streams in source.streams.items():
                names = {stream: f"{name}.{stream}" for stream in streams}
                for stream, qualified in names.items():
                    self.streams.setdefault(stage_name, {})[qualified] = streams[stream]
                    self._stream_owner.setdefault(stage_name, {})[qualified] = (source, stream)
                self.tasks.setdefault(stage_name, []).extend(
                    source_task(name, task, names) for task in source.tasks[stage_name])
        h = self.hparams
        weights = [source.mixture_weight for source in self.sources.values()] if h.sampling == "weighted" else None
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        if all(isinstance(source.train_source, MapStyleSource) for source in self.sources.values()):
            self.train_source = MixtureSource({name: source.train_source for name, source in self.sources.items()},
                                              h.sampling, h.seed, weights, accumulate)
            return
        # a source streams: the others join as streams of their prepared rows
        self.train_source = StreamMixtureSource({name: source.stream_source() for name, source in self.sources.items()},
                                                h.sampling, h.seed, weights, accumulate)

    def stream_source(self) -> StreamingSource:
        """The training source as a stream (``setup`` done): a map-style split is read as a stream of its rows."""
        if isinstance(self.train_source, StreamingSource):
            return self.train_source
        train = self.splits["train"]
        return self._streaming_source(train.to_iterable_dataset(num_shards=min(len(train), 8)), len(train))

    def _label(self, text: str) -> str:
        """``text`` as messages say it: a source of a mixture names itself first."""
        return f"source {self.source_name!r}: {text}" if self.source_name else text

    def _check_eval_size(self, split_name: str, streams: dict[str, list], tasks: list[RetrievalTask]) -> None:
        h, where = self.hparams, self.where[split_name]
        held_out = split_name == "validation" and bool(h.val_size) and where.file_split == h.train_split
        check_eval_size(split_name, streams, tasks, where, held_out, capped=h.max_eval_rows is not None,
                        warn=self.rank()[0] == 0)

    def _where(self, raw: datasets.DatasetDict | datasets.IterableDatasetDict) -> dict[str, Where]:
        """How messages name each split, its rows (by file and line) and the options naming its columns."""
        h = self.hparams
        flags: dict[str, str] = {}
        for key, value in h.items():  # the options that name columns: ``columns`` (a list) and ``*_column``
            names = value if key == "columns" else [value] if key.endswith("_column") and value else None
            for column in names or []:
                flags.setdefault(column, f"--data.init_args.{key}")
        label = self._label(h.dataset)
        where = {name: Where(f"{label} ({name} split)", h.dataset, split, h.data_files, flags)
                 for name, split in (("train", h.train_split), ("validation", h.val_split), ("test", h.test_split))
                 if split is not None}
        if h.val_size and (h.val_split is None or h.val_split not in raw):  # rows of the train files
            where["validation"] = Where(f"{label} (validation rows held out of the {h.train_split} split by "
                                        f"--data.init_args.val_size)", h.dataset, h.train_split, h.data_files, flags)
        return where

    def value_name(self, split: datasets.Dataset, row: int, column: int) -> str:
        """The value of ``row_codes(split)[row, column]`` for messages: by default ``train_columns[column]``'s."""
        name = self.train_columns[column]
        value = split[row][name]
        return f"{value[:60] + '…' if isinstance(value, str) and len(value) > 60 else value!r} (column {name!r})"

    def _stream_splits(self, raw: datasets.IterableDatasetDict):
        """((train stream, its row count or None), validation, test): evaluation splits materialised, train not."""
        h = self.hparams
        train = self.encoded(select_split(raw, h.train_split, h.dataset, "--data.init_args.train_split"))
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
            raise split_not_found("--data.init_args.val_split", h.val_split, h.dataset, raw, HOLD_OUT)
        if h.test_split is not None:
            test = materialize(self.encoded(select_split(raw, h.test_split, h.dataset, "--data.init_args.test_split")),
                               h.max_eval_rows)
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
            collate=self.train_collator(), where=self._label(f"{h.dataset} (train stream)"))

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
        if self._batch_order is None and self.sources:
            h = self.hparams
            accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
            order = {"--data.init_args.sampling": h.sampling, "--data.init_args.seed": h.seed,
                     "--trainer.accumulate_grad_batches (a step's batches come from one source)": accumulate,
                     "--data.init_args.sources (names, in order)": list(self.sources)}
            for name, source in self.sources.items():
                source.trainer = self.trainer
                for key, value in source.batch_order().items():
                    option = key.split(" ", 1)[0].removeprefix("--data.init_args.")
                    if option in source.source_options:
                        key = key.replace(f"--data.init_args.{option}", source_flag(name, option), 1)
                    order[f"source {name!r}: {key}"] = value
                if h.sampling == "weighted":
                    order[source_flag(name, "weight")] = source.mixture_weight
            self._batch_order = order
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
        if isinstance(batch, dict) and REPORT in batch:  # what a stream's worker skipped since its last batch
            owner = self.sources[batch[SOURCE]] if self.sources and SOURCE in batch else self
            owner._epoch_report.add(batch.pop(REPORT))
        return batch

    def training_rows(self, positions: list[int], total: int | None = None, source: str | None = None) -> str | None:
        """Training rows (``__row__`` values, of ``source`` in a mixture) as a user finds them (files and 1-based
        lines); None before ``setup``."""
        if self.sources:
            part = self.sources.get(source)
            rows = part.training_rows(positions, total) if part is not None else None
            return f"source {source!r}: {rows}" if rows else None
        where = self.where.get("train")
        return None if where is None else where.rows(positions, total=total)

    def report_epoch(self, epoch: int) -> None:
        """Log what this rank's stream skipped or read twice in the epoch that ended, then start counting anew (every
        source of a mixture, and which sources weighted sampling read again)."""
        for source in self.sources.values():
            source.trainer = self.trainer
            source.report_epoch(epoch)
        sampler = getattr(self.train_source, "sampler", None)
        if sampler is not None and any(sampler.rereads) and self.rank()[0] == 0:
            log.warning("epoch %d: weighted sampling drew more batches than a pass holds from %s: read again, "
                        "reshuffled", epoch, ", ".join(f"{name!r} ({count} more pass(es))" for name, count in
                                                       zip(self.sources, sampler.rereads) if count))
        report, self._epoch_report = self._epoch_report, EpochReport()
        rank = self.rank()[0]
        label = self._label("")
        if report.skipped:
            log.warning("%sepoch %d, rank %d: %d training row(s) skipped, e.g.:\n  %s", label, epoch, rank,
                        report.skipped, "\n  ".join(report.examples))
        if report.repeated_passes:
            log.warning("%sepoch %d, rank %d: a worker's shards ran out %d time(s) before the epoch's batches were "
                        "complete and were read again (more skipped rows or fewer shards than the others)", label,
                        epoch, rank, report.repeated_passes)

    @property
    def training_sources(self) -> list[str]:
        return list(self.sources)

    def has_teacher_scores(self, source: str | None = None) -> bool:
        """Whether the training batches (of ``source`` in a mixture) carry teacher scores; a subclass with a scores
        column says so."""
        return False

    def training_texts(self, source: str | None = None) -> TrainingTexts | None:
        """The training rows' texts by ``__row__`` (``datamodules.contract.TrainingTexts``); a text datamodule with
        map-style training data says; None otherwise."""
        return None

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
            owner, own_name = self._stream_owner.get(stage, {}).get(stream, (self, stream))
            collate = owner.stream_collator(own_name, stage)
            if owner is not self:
                collate = RenamedStream(collate, stream)
            # every rank gets the same number of items, at least one (a rank without a stream would skip the gather
            # that computes its metrics): the last ranks repeat a few first items, which the collector drops
            padded = -(-len(values) // world) * world
            items = [(i % len(values), values[i % len(values)]) for i in range(rank, padded, world)]
            # longest texts first, as ST's encode does: batches of similar length waste less padding
            items.sort(key=lambda item: -len(item[1]) if isinstance(item[1], str) else 0)
            loaders.append(DataLoader(items, batch_size=self.hparams.eval_batch_size,
                                      collate_fn=collate, **options))
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
        owner, own_name = self._stream_owner.get(stage, {}).get(stream, (self, stream))
        if owner is not self:
            return owner.item_columns(stage, own_name)
        return {"text": list(self.streams[stage][stream])}

    def test_dataloader(self) -> list[DataLoader]:
        if "test" not in self.streams:
            raise ValueError("no test split: set --data.init_args.test_split to the name of the dataset's test split")
        return self._eval_loaders("test")


class RenamedStream:
    """A source's evaluation collator whose batches carry the mixture's name of the stream."""

    def __init__(self, collate: Callable, stream: str) -> None:
        self.collate, self.stream = collate, stream

    def __call__(self, items):
        return {**self.collate(items), STREAM: self.stream}


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
