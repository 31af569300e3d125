"""Loading splits from a hub name, a local directory or file, or a built-in generator; eval task description."""

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import lightning as L
from torch.utils.data import DataLoader

from datamodules.sampler import NoDuplicatesBatchSampler

log = logging.getLogger(__name__)

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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
    source: str, builtins: dict[str, Callable[[], datasets.DatasetDict]], data_files: dict[str, str] | None = None
) -> datasets.DatasetDict:
    """Read a dataset from ``builtin:<name>``, a .jsonl/.json/.csv/.parquet file, a local directory or a hub name.

    A single file becomes the ``train`` split. A directory goes through HF datasets' split inference: name validation
    files ``validation`` (``eval`` files land in the ``test`` split) or pass ``data_files``.
    """
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in builtins:
            raise ValueError(f"--data.dataset: unknown built-in dataset {name!r}; built-ins: {sorted(builtins)}")
        return builtins[name]()
    if data_files is not None:
        return datasets.load_dataset(source, data_files=data_files)
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in FILE_FORMATS:
            raise ValueError(f"--data.dataset {source!r}: unsupported file type {ext!r}; use one of {sorted(FILE_FORMATS)}")
        return datasets.load_dataset(FILE_FORMATS[ext], data_files={"train": source})
    if os.path.isdir(source):
        return datasets.load_dataset(source)
    try:
        return datasets.load_dataset(source)
    except Exception as err:  # offline, misspelt or private: all surface here
        raise ValueError(
            f"--data.dataset {source!r} is not a file, not a directory and could not be loaded from the hub "
            f"({type(err).__name__}: {err}). Check the path, or pass a local .jsonl/.csv/.parquet file or directory."
        ) from err


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
    """(train, validation, test). Without a validation split, ``val_size`` rows (count, or fraction if < 1) of train
    are held out, shuffled by ``seed``; the row caps apply afterwards (first rows, as HF's ``split="train[:n]"``)."""
    train = select_split(raw, train_split, source, "--data.train_split")
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
    return train, val, select_split(raw, test_split, source, "--data.test_split", max_eval_rows)


def check_columns(split: datasets.Dataset, columns: Sequence[str], where: str) -> None:
    """Raise if a column is missing, naming it and the columns that exist."""
    missing = [c for c in columns if c not in split.column_names]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; columns found: {split.column_names}. "
                         f"Set the --data.*column* options to the dataset's column names.")


def check_texts(split: datasets.Dataset, columns: Sequence[str], where: str) -> None:
    """Raise on the first None or blank text, naming the row and column: such a row would train on nothing."""
    for column in columns:
        for row, value in enumerate(split[column]):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: row {row}, column {column!r} has an empty or non-text value ({value!r}). "
                                 f"Remove or fill that row.")


class RetrievalDataModule(L.LightningDataModule):
    """Shared options and plumbing: splits, batching, the model's processor, DDP rank, evaluation streams' loaders.

    Subclasses fill ``self.streams[stage]`` ({stream name: values}) and ``self.tasks[stage]`` in ``setup`` and
    implement ``stream_collator``. Each rank evaluates every world_size-th item of every stream; the model's
    collectors gather and reorder them.

    Args:
        dataset: where the data comes from (see the subclass).
        data_files: explicit ``{split: file}`` for ``dataset`` (a format name such as ``json`` or ``parquet``, or a
            directory).
        train_split: name of the training split.
        val_split: name of the validation split; None to skip validation.
        test_split: name of the test split; None when there is none.
        val_size: hold out this many rows (or fraction, if < 1) of train as validation when ``val_split`` is absent.
        max_train_rows: keep only the first rows of train (after carving validation).
        max_eval_rows: keep only the first rows of validation and test.
        batch_size: pairs per device per step; in-batch negatives need at least 2.
        eval_batch_size: items per evaluation batch.
        no_duplicates: never put a value (text, image) twice in one batch (ST's ``BatchSamplers.NO_DUPLICATES``): a
            duplicate would be a false negative.
        drop_last: drop the last, smaller batch of an epoch.
        num_workers: DataLoader worker processes per device, where tokenisation and image decoding run. None: up to
            4 per GPU (they prepare batches while the GPU computes), none when training on the CPU (there a worker
            takes a core from the model: on 2 cores one worker cut MiniLM training from 11.7 to 10 pairs/s).
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
        num_workers: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"--data.batch_size must be ≥ 2 for in-batch negatives, got {batch_size}")
        self.save_hyperparameters()  # with the subclass's own arguments
        self.splits: dict[str, datasets.Dataset] = {}
        self.processor = None  # the model's tokenizer / image transform, taken from the LightningModule in setup
        self.streams: dict[str, dict[str, list]] = {}
        self.tasks: dict[str, list[RetrievalTask]] = {}
        self._eval_loader_cache: dict[tuple, list[DataLoader]] = {}

    def builtins(self) -> dict[str, Callable[[], datasets.DatasetDict]]:
        """``builtin:<name>`` datasets this datamodule can generate."""
        return {}

    def prepare_split(self, name: str, split: datasets.Dataset, where: str) -> datasets.Dataset:
        """Check (and possibly filter) one split; errors name ``where``."""
        raise NotImplementedError

    def retrieval(self, stage: str, split_name: str) -> tuple[dict[str, list], list[RetrievalTask]]:
        """The evaluation streams and tasks of ``stage`` ("val" or "test") built from a prepared split."""
        raise NotImplementedError

    def stream_collator(self, stream: str, stage: str):
        raise NotImplementedError

    def row_values(self) -> list[tuple]:
        """Each training row's values (text, image key): rows sharing one never meet in a batch."""
        raise NotImplementedError

    def train_collator(self):
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        train = self.splits["train"]
        # without no_duplicates every row is its own key: plain shuffled batches, sharded the same way
        values = self.row_values() if h.no_duplicates else [(i,) for i in range(len(train))]
        rank, world = self.rank()
        sampler = NoDuplicatesBatchSampler(values, h.batch_size, drop_last=h.drop_last, seed=h.seed,
                                           num_replicas=world, rank=rank)
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)  # len() of this epoch
        return DataLoader(train, batch_sampler=sampler, collate_fn=self.train_collator(), **self.loader_options())

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            self.processor = self.trainer.lightning_module.processor
        if self.splits:  # idempotent: fit, validate and test share the prepared data
            return
        h = self.hparams
        raw = load_splits(h.dataset, self.builtins(), h.data_files)
        splits = pick_splits(raw, h.dataset, h.train_split, h.val_split, h.test_split, h.val_size,
                             h.max_train_rows, h.max_eval_rows, h.seed)
        for name, split in zip(("train", "validation", "test"), splits):
            if split is not None:
                self.splits[name] = self.prepare_split(name, split, f"{h.dataset} ({name} split)")
        for stage_name, split_name in (("val", "validation"), ("test", "test")):
            if split_name in self.splits:
                self.streams[stage_name], self.tasks[stage_name] = self.retrieval(stage_name, split_name)

    @property
    def equal_batch_sizes(self) -> bool:
        """Whether every training batch on every rank has ``batch_size`` rows (what a cross-device gather needs)."""
        return self.hparams.drop_last

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
