"""The layout of a batch, declared once: the collators build these dicts; the model, the callbacks and the prediction
writer read them by the key constants below (the TypedDicts' fields, spelt once as strings)."""

from typing import TYPE_CHECKING, NotRequired, TypedDict

from torch import Tensor

if TYPE_CHECKING:
    from datamodules.sources import EpochReport

FEATURES = "features"
ROWS = "rows"
REPORT = "report"
STREAM = "stream"
IDS = "ids"
EMBEDDINGS = "embeddings"
SOURCE = "source"
LABELS = "labels"
# keys of an image column's features: pixels to embed, or rows of the model's table of (constant) image embeddings
PIXEL_VALUES = "pixel_values"
IMAGE_INDEX = "image_index"


class TrainBatch(TypedDict):
    """A training batch (``train_collator``)."""

    features: list[dict[str, Tensor]]  # one features dict per loss column: anchor, positive, negatives…
    rows: list[int | None]  # each row's ``__row__``, for messages about the batch (a non-finite loss)
    report: NotRequired["EpochReport"]  # a stream's: what its worker skipped since its last batch (not transferred)
    source: NotRequired[str]  # in a mixture of sources (datamodules.mixture): the source the batch's rows come from
    labels: NotRequired[Tensor]  # (B, n) the teacher's scores of each row (a distillation loss's), from score_column


class EvalBatch(TypedDict):
    """An evaluation batch of one stream (``stream_collator``)."""

    stream: str  # the stream's name, e.g. "query", "corpus", "caption", "image"
    ids: Tensor  # (B,) the items' positions in the stream
    features: dict[str, Tensor]  # tokens, or PIXEL_VALUES / IMAGE_INDEX


class Prediction(TypedDict):
    """What ``predict_step`` returns for an evaluation batch (``train.py predict`` writes it)."""

    stream: str
    ids: Tensor  # (B,)
    embeddings: Tensor  # (B, D) float32
