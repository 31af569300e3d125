"""The data↔model contract, pointing one way: the model hands the datamodule what it needs once, through
``datamodule.connect(model.data_needs())`` (``train.py`` calls it right after building both, as litgpt's data modules
take a tokenizer through ``connect``); the model reads from the datamodule only what ``RetrievalData`` declares.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch.utils.data import DataLoader


@dataclass(frozen=True)
class DataNeeds:
    """What the model hands the datamodule (``EmbeddingModule.data_needs()``).

    Args:
        processor: the model's weights-free tokenizer / image transform, which the collators call in the DataLoader
            workers (``TextProcessor``; CLIP's ``tokenize`` and ``image_transform``).
        constant_towers: towers whose embeddings the model looks up by number instead of computing (a cached locked
            image tower: ``{"image"}``): their batches carry table rows instead of pixels.
    """

    processor: Callable
    constant_towers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RetrievalTask:
    """One retrieval evaluation: queries of one stream against the corpus of another.

    ``relevant[q]`` holds the ids (row positions) in ``corpus_stream`` that answer query ``q`` of ``query_stream``.
    The module encodes every stream once and scores all tasks (and all Matryoshka dims) from those embeddings.
    ``source``: in a mixture, the training source whose validation data the task is; with tasks of several sources
    the module also logs their mean (``metrics.keys.MEAN_TASK``).
    """

    name: str
    query_stream: str
    corpus_stream: str
    relevant: list[set[int]]
    source: str = ""


@dataclass(frozen=True)
class TrainingTexts:
    """Every training row's texts as the model reads them (prompts prepended), for models that embed the training
    set ahead of training (a guided loss's guide: ``lightning_modules.guide``).

    ``rows[i]`` is row i's ``__row__`` (what a training batch's ``rows`` hold); ``columns[c][i]`` its text of loss
    column c (anchor, positive, negatives…).
    """

    rows: list[int]
    columns: list[list[str]]


class RetrievalData(Protocol):
    """What the model and litembed's callbacks may read from the datamodule (``RetrievalDataModule`` provides it)."""

    def retrieval_tasks(self, stage: str) -> list[RetrievalTask]:
        """The evaluation tasks of ``stage`` ("val", "test"); none without that split."""

    def val_dataloader(self) -> list[DataLoader]:
        """One evaluation loader per stream of the validation split (the base model's evaluation runs them)."""

    @property
    def training_sources(self) -> list[str]:
        """The names of a mixture's training sources (``TrainBatch["source"]``); empty for one dataset."""

    def has_teacher_scores(self, source: str | None = None) -> bool:
        """Whether the training batches (of ``source`` in a mixture) carry a teacher's scores
        (``TrainBatch["labels"]``), which a distillation loss reads."""

    def training_texts(self, source: str | None = None) -> TrainingTexts | None:
        """The training rows' texts (of ``source`` in a mixture), by ``__row__``; None where they are not all known
        ahead (streamed data) or the data is not text."""

    @property
    def equal_batch_sizes(self) -> bool:
        """Whether every training batch on every rank has ``batch_size`` rows (what a cross-device gather needs)."""

    def training_rows(self, positions: list[int], total: int | None = None, source: str | None = None) -> str | None:
        """Training rows (a batch's ``rows``, of its ``source`` in a mixture) as a user finds them: ``"lines 70, 91 of
        data/train.jsonl"``, and how many of ``total`` are not named (``callbacks.nonfinite``)."""

    def report_epoch(self, epoch: int) -> None:
        """Log what the training stream skipped or read twice in the epoch that ended (``callbacks.data_report``)."""


class ImageTableData(RetrievalData, Protocol):
    """What a model with a constant image tower also reads: the images of its table of embeddings."""

    def image_table_loader(self) -> DataLoader:
        """This rank's share of the table's images, as evaluation batches of the stream "image" (ids: table rows)."""
