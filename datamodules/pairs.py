"""Question–passage pairs (plus optional hard-negative columns) → tokenised batches for in-batch negatives."""

import logging
from collections.abc import Callable

import datasets
import torch
from torch.utils.data import DataLoader

from datamodules.common import RetrievalDataModule, RetrievalTask, check_columns, check_texts, load_splits, pick_splits
from datamodules.sampler import NoDuplicatesBatchSampler
from datamodules.stdlib_pairs import stdlib_docstring_pairs

log = logging.getLogger(__name__)


class PairCollator:
    """Rows → one tokenised batch per loss column; runs in DataLoader workers."""

    def __init__(self, processor: Callable, columns: list[str], roles: list[str]) -> None:
        self.processor, self.columns, self.roles = processor, columns, roles

    def __call__(self, rows: list[dict]) -> dict:
        return {"features": [self.processor([r[c] for r in rows], role) for c, role in zip(self.columns, self.roles)]}


class StreamCollator:
    """(id, text) items of one evaluation stream → ``{"stream", "ids", "features"}``."""

    def __init__(self, processor: Callable, stream: str, role: str) -> None:
        self.processor, self.stream, self.role = processor, stream, role

    def __call__(self, items: list[tuple[int, str]]) -> dict:
        ids, texts = zip(*items)
        return {"stream": self.stream, "ids": torch.tensor(ids), "features": self.processor(list(texts), self.role)}


class PairDataModule(RetrievalDataModule):
    """Reads (anchor, positive[, negatives…]) text pairs and serves training batches and retrieval evaluation.

    Evaluation follows sentence-transformers' InformationRetrievalEvaluator: the queries are the distinct
    ``query_column`` texts of the eval split, the corpus the distinct ``corpus_column`` texts, and each query's
    relevant documents are the passages it is paired with.

    Args:
        dataset: ``builtin:stdlib-docstrings`` (offline, generated from Python's standard library), a .jsonl, .json,
            .csv or .parquet file, a local directory of such files (split names from file names), or a hub dataset name.
        data_files: explicit ``{split: file}`` for ``dataset`` (a format name such as ``json`` or a directory).
        columns: the loss columns in order: anchor, positive, then hard negatives (like ST, order matters, names don't).
        query_column: eval query column; default ``columns[0]``.
        corpus_column: eval corpus column; default ``columns[1]``.
        train_split: name of the training split.
        val_split: name of the validation split; None to skip validation.
        test_split: name of the test split; None when there is none.
        val_size: hold out this many rows (or fraction, if < 1) of train as validation when ``val_split`` is absent.
        corpus_from_train: add the training split's passages to the evaluation corpus (distractors).
        max_train_rows: keep only the first rows of train (after carving validation).
        max_eval_rows: keep only the first rows of validation and test.
        batch_size: pairs per device per step; in-batch negatives need at least 2.
        eval_batch_size: texts per evaluation batch.
        no_duplicates: never put a text twice in one batch (ST's ``BatchSamplers.NO_DUPLICATES``): a duplicate would be
            a false negative.
        drop_last: drop the last, smaller batch of an epoch.
        num_workers: DataLoader worker processes (tokenisation runs there).
        seed: seed of the batch order (shuffled anew every epoch) and of the validation carve.
    """

    def __init__(
        self,
        dataset: str = "builtin:stdlib-docstrings",
        data_files: dict[str, str] | None = None,
        columns: list[str] = ["anchor", "positive"],
        query_column: str | None = None,
        corpus_column: str | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        val_size: int | float | None = None,
        corpus_from_train: bool = False,
        max_train_rows: int | None = None,
        max_eval_rows: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        no_duplicates: bool = True,
        drop_last: bool = False,
        num_workers: int = 2,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"--data.batch_size must be ≥ 2 for in-batch negatives, got {batch_size}")
        if len(columns) < 2:
            raise ValueError(f"--data.columns needs at least an anchor and a positive column, got {columns}")
        self.save_hyperparameters()
        self.columns = list(columns)
        self.query_column = query_column or self.columns[0]
        self.corpus_column = corpus_column or self.columns[1]
        self.splits: dict[str, datasets.Dataset] = {}

    def builtins(self) -> dict:
        return {"stdlib-docstrings": lambda: datasets.DatasetDict({"train": stdlib_docstring_pairs(seed=self.hparams.seed)})}

    def setup(self, stage: str | None = None) -> None:
        self.attach_processor()
        if self.splits:
            return
        h = self.hparams
        raw = load_splits(h.dataset, self.builtins(), h.data_files)
        train, val, test = pick_splits(raw, h.dataset, h.train_split, h.val_split, h.test_split, h.val_size,
                                       h.max_train_rows, h.max_eval_rows, h.seed)
        eval_columns = list(dict.fromkeys([self.query_column, self.corpus_column]))
        for name, split, columns in (("train", train, self.columns), ("validation", val, eval_columns),
                                     ("test", test, eval_columns)):
            if split is not None:
                where = f"{h.dataset} ({name} split)"
                check_columns(split, columns, where)
                check_texts(split, columns, where)
                self.splits[name] = split
        for stage_name, split in (("val", val), ("test", test)):
            if split is not None:
                self.streams[stage_name], self.tasks[stage_name] = self._retrieval_streams(split, train)

    def _retrieval_streams(self, split: datasets.Dataset, train: datasets.Dataset):
        queries: dict[str, int] = {}
        corpus: dict[str, int] = {}
        relevant: list[set[int]] = []
        for q_text, d_text in zip(split[self.query_column], split[self.corpus_column]):
            d = corpus.setdefault(d_text, len(corpus))
            q = queries.setdefault(q_text, len(queries))
            if q == len(relevant):
                relevant.append(set())
            relevant[q].add(d)
        if self.hparams.corpus_from_train:
            for d_text in train[self.corpus_column]:
                corpus.setdefault(d_text, len(corpus))
        streams = {"query": list(queries), "corpus": list(corpus)}
        return streams, [RetrievalTask("", "query", "corpus", relevant)]

    def stream_collator(self, stream: str, stage: str) -> StreamCollator:
        return StreamCollator(self.processor, stream, "query" if stream == "query" else "document")

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        train = self.splits["train"]
        if h.no_duplicates:
            row_values = list(zip(*(train[c] for c in self.columns)))
        else:  # unique keys: plain shuffled batches with the same DDP sharding
            row_values = [(i,) for i in range(len(train))]
        rank, world = self.rank()
        sampler = NoDuplicatesBatchSampler(row_values, h.batch_size, drop_last=h.drop_last, seed=h.seed,
                                           num_replicas=world, rank=rank)
        roles = ["query" if c == self.query_column else "document" for c in self.columns]
        return DataLoader(train, batch_sampler=sampler, collate_fn=PairCollator(self.processor, self.columns, roles),
                          num_workers=h.num_workers, persistent_workers=h.num_workers > 0)
