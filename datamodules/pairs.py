"""Question–passage pairs (plus optional hard-negative columns) → tokenised batches for in-batch negatives."""

import logging
from collections.abc import Callable

import datasets
import numpy as np
import pyarrow as pa
import torch

from datamodules.base import RetrievalDataModule
from datamodules.batches import FEATURES, IDS, LABELS, ROWS, STREAM, EvalBatch, TrainBatch
from datamodules.builtin_datasets import Builtins, pair_builtins
from datamodules.checks import check_columns, check_texts, text_value, value_codes
from datamodules.contract import RetrievalTask, TrainingTexts
from datamodules.locations import ROW, Where
from datamodules.sources import BadRow
from datamodules.splits import arrow_columns

log = logging.getLogger(__name__)


class PairCollator:
    """Rows → one tokenised batch per loss column; runs in DataLoader workers. ``prompts``: each column's prompt
    where the data sets one (else the model's prompt of the column's role)."""

    def __init__(self, processor: Callable, columns: list[str], roles: list[str],
                 prompts: dict[str, str] | None = None, score_column: str | None = None) -> None:
        self.processor, self.columns, self.roles, self.prompts = processor, columns, roles, prompts or {}
        self.score_column = score_column

    def __call__(self, rows: list[dict]) -> TrainBatch:
        batch: TrainBatch = {FEATURES: [self.processor([r[c] for r in rows], role, **_prompt(self.prompts, c))
                                        for c, role in zip(self.columns, self.roles)],
                             ROWS: [r.get(ROW) for r in rows]}  # for messages about the batch (a non-finite loss)
        if self.score_column is not None:
            batch[LABELS] = torch.tensor([r[self.score_column] for r in rows], dtype=torch.float32)
        return batch


class StreamCollator:
    """(id, text) items of one evaluation stream → ``{"stream", "ids", "features"}``."""

    def __init__(self, processor: Callable, stream: str, role: str, prompt: str | None = None) -> None:
        self.processor, self.stream, self.role, self.prompt = processor, stream, role, prompt

    def __call__(self, items: list[tuple[int, str]]) -> EvalBatch:
        ids, texts = zip(*items)
        prompt = {} if self.prompt is None else {"prompt": self.prompt}
        return {STREAM: self.stream, IDS: torch.tensor(ids), FEATURES: self.processor(list(texts), self.role, **prompt)}


def _prompt(prompts: dict[str, str], column: str) -> dict:
    """The processor's ``prompt`` argument for ``column``: none where the data sets no prompt for it."""
    return {"prompt": prompts[column]} if column in prompts else {}


class PairDataModule(RetrievalDataModule):
    """Reads (anchor, positive[, negatives…]) text pairs and serves training batches and retrieval evaluation.

    Evaluation follows sentence-transformers' InformationRetrievalEvaluator: the queries are the distinct
    ``query_column`` texts of the eval split, the corpus the distinct ``corpus_column`` texts, and each query's
    relevant documents are the passages it is paired with.

    Args:
        dataset: ``builtin:stdlib-docstrings`` (offline, generated from Python's standard library), a .jsonl, .json,
            .csv or .parquet file, a local directory of such files (split names from file names), or a hub dataset name.
        columns: the loss columns in order: anchor, positive, then hard negatives (like ST, order matters, names don't).
        query_column: eval query column; default ``columns[0]``.
        corpus_column: eval corpus column; default ``columns[1]``.
        corpus_from_train: add the training split's passages to the evaluation corpus (distractors).
        score_column: a column of teacher scores for distillation (``losses.MarginMSELoss``,
            ``losses.DistillKLDivLoss``): per row, a list of the teacher's scores of the first column against each of
            the others ([positive, negatives…]; sentence-transformers' n-tuple-scores format, as ``mine.py
            --output_scores`` writes it), or MarginMSE's margins; the batches carry them to the loss.
        prompts: text prepended to the texts of this data, by column (``{"anchor": "query: ", "positive":
            "passage: "}``), in training and evaluation (the query column's prompt for the queries, the corpus
            column's for the corpus), in place of the model's prompt for the column's role
            (``--model.init_args.encoder.init_args.prompts``, which the exported model keeps). As
            sentence-transformers' ``prompts`` training argument; per source in a mixture (``sources``), so each
            source can carry its own instructions.
        **kwargs: split, streaming, batching and loader options of ``RetrievalDataModule``.
    """

    def __init__(
        self,
        dataset: str = "builtin:stdlib-docstrings",
        columns: list[str] = ["anchor", "positive"],
        query_column: str | None = None,
        corpus_column: str | None = None,
        corpus_from_train: bool = False,
        prompts: dict[str, str] | None = None,
        score_column: str | None = None,
        **kwargs,
    ) -> None:
        if len(columns) < 2:
            raise ValueError(f"--data.init_args.columns needs at least an anchor and a positive column, got {columns}")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"--data.init_args.columns names {repeated} more than once, got {columns}: a column is "
                             f"one role (anchor, positive, or a hard negative); name each once")
        if corpus_from_train and kwargs.get("streaming"):
            raise ValueError("--data.init_args.corpus_from_train needs the whole training split in memory; it cannot be "
                             "combined with --data.init_args.streaming true")
        super().__init__(dataset, **kwargs)
        self.columns = list(columns)
        self.query_column = query_column or self.columns[0]
        self.corpus_column = corpus_column or self.columns[1]
        unknown = sorted(set(prompts or {}) - {*self.columns, self.query_column, self.corpus_column})
        if unknown:
            raise ValueError(f"--data.init_args.prompts names {unknown}, which are not columns of the data "
                             f"({', '.join(dict.fromkeys([*self.columns, self.query_column, self.corpus_column]))}): "
                             f"key each prompt by the column whose texts it precedes")
        self.prompts = dict(prompts or {})
        if score_column is not None and score_column in self.columns:
            raise ValueError(f"--data.init_args.score_column {score_column!r} is one of --data.init_args.columns "
                             f"{self.columns}: the scores are a column of their own, not a text the model embeds")
        self.score_column = score_column

    def builtins(self) -> Builtins:
        return pair_builtins(self.hparams.seed)

    @property
    def train_columns(self) -> list[str]:
        return self.columns

    def split_columns(self, name: str) -> list[str]:
        if name == "train":
            return self.columns + ([self.score_column] if self.score_column else [])
        return list(dict.fromkeys([self.query_column, self.corpus_column]))

    def text_columns(self, name: str) -> list[str]:
        return [c for c in self.split_columns(name) if c != self.score_column]

    def has_teacher_scores(self, source: str | None = None) -> bool:
        if self.sources:
            return source in self.sources and self.sources[source].has_teacher_scores()
        return self.score_column is not None

    def check_split(self, name: str, split: datasets.Dataset, where: Where) -> datasets.Dataset:
        check_columns(split, self.split_columns(name), where)
        check_texts(split, self.text_columns(name), where)
        if name == "train" and self.score_column is not None:
            kind = split.features[self.score_column]
            dtype = getattr(getattr(kind, "feature", kind), "dtype", "")  # a list of numbers, or a number
            if not dtype.startswith(("int", "uint", "float")):
                raise ValueError(f"{where}: --data.init_args.score_column {self.score_column!r} holds {kind}, not "
                                 f"numbers: a row's teacher scores are a list of numbers ([positive, negatives…])")
            self._check_scores(split, where)
        return split

    def _check_scores(self, split: datasets.Dataset, where: Where) -> None:
        """Every training row has as many teacher scores as the first, none missing or NaN (a batch of them is one
        tensor): the rows that do not are named."""
        import pyarrow.compute as pc

        column = arrow_columns(split, [self.score_column]).column(0).combine_chunks()
        if pa_list(column.type):
            lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
            flat = pc.list_flatten(column)
            bad_value = pc.fill_null(pc.is_nan(pc.cast(flat, "float64")), True).to_numpy(zero_copy_only=False)
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            bad_in_row = np.bincount(parents[bad_value], minlength=len(column))  # missing or NaN scores, per row
            bad = (lengths != lengths[0]) | (lengths <= 0) | (bad_in_row > 0)
        else:
            bad = pc.fill_null(pc.is_nan(pc.cast(column, "float64")), True).to_numpy(zero_copy_only=False)
        if bad.any():
            positions = np.flatnonzero(bad)
            rows = where.rows([int(r) for r in np.asarray(split[ROW])[positions[:10]]], total=len(positions))
            raise ValueError(f"{where}: {len(positions)} row(s) have missing, NaN or a different number of teacher "
                             f"scores in --data.init_args.score_column {self.score_column!r} than the first row: "
                             f"{rows}. Give every row one score per candidate column (or its margins)")

    def retrieval(self, stage: str, split_name: str) -> tuple[dict[str, list], list[RetrievalTask]]:
        split = self.splits[split_name]
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
            for d_text in self.splits["train"][self.corpus_column]:
                corpus.setdefault(d_text, len(corpus))
        streams = {"query": list(queries), "corpus": list(corpus)}
        return streams, [RetrievalTask("", "query", "corpus", relevant)]

    def stream_collator(self, stream: str, stage: str) -> StreamCollator:
        column = self.query_column if stream == "query" else self.corpus_column
        return StreamCollator(self.processor, stream, "query" if stream == "query" else "document",
                              self.prompts.get(column))

    def row_codes(self, split: datasets.Dataset) -> np.ndarray:
        # a text is the same value in any column (ST compares each row's set of strings)
        table = arrow_columns(split, self.columns)
        return value_codes([[table.column(c) for c in self.columns]])

    def admit(self, row: dict) -> tuple:
        where = f"{self.hparams.dataset} (train stream)"
        if self.score_column is not None:
            scores = row.get(self.score_column)
            numbers = scores if isinstance(scores, list) else [scores]
            if not numbers or not all(isinstance(n, (int, float)) and n == n for n in numbers):
                raise BadRow(f"{where}: row {row.get(ROW)}: --data.init_args.score_column {self.score_column!r} "
                             f"holds {scores!r}, not the teacher's scores (numbers)")
        return tuple(text_value(row, column, where) for column in self.columns)

    def train_collator(self) -> PairCollator:
        return PairCollator(self.processor, self.columns, self._roles(), self.prompts, self.score_column)

    def _roles(self) -> list[str]:
        """Each training column's role for the model's prompts: the query column's "query", the others "document"."""
        return ["query" if c == self.query_column else "document" for c in self.columns]

    def training_texts(self, source: str | None = None) -> TrainingTexts | None:
        if self.sources:
            return self.sources[source].training_texts() if source in self.sources else None
        if self.hparams.streaming or "train" not in self.splits:
            return None
        split = self.splits["train"]
        table = arrow_columns(split, [ROW, *self.columns])
        columns = [self.processor.prompted(table.column(c).to_pylist(), role, self.prompts.get(c))
                   for c, role in zip(self.columns, self._roles())]
        return TrainingTexts(table.column(ROW).to_pylist(), columns)


def pa_list(kind) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
