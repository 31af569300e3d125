"""How a retrieval metric is named in the logs, and the names it is spelled with.

A key is ``<stage>/<set>_<metric>``, with ``_base`` appended for the model before training (logged at step 0)::

    val/dim_384_cosine_ndcg@10           a Matryoshka dim of a text model (its one task is unnamed)
    val/shapes-eval_cosine_ndcg@10       a named task (CLIP: one per direction), the full embedding
    test/shapes-eval_dim_64_dot_map@100  a named task at a Matryoshka dim
    val/cosine_ndcg@10                   an unnamed task, the full embedding
    val/dim_32_cosine_ndcg@10_base       the base model

The evaluation set ``<set>`` joins the task's name and ``dim_<n>`` with ``_``, leaving out what is empty; the metric
``<similarity>_<name>@<k>`` comes from ``metrics.functional.information_retrieval_metrics``. Without its stage
(``dim_384_cosine_ndcg@10``) a key is what ``reporting.metrics_log.MetricsLog`` holds and the card shows.
:func:`metric_key` is the one place a key is spelled and :func:`parse_metric_key` the one place it is read.
"""

import re
from dataclasses import dataclass

# The similarities litembed trains with (losses.MultipleNegativesRankingLoss) and evaluates with
# (metrics.functional.information_retrieval_metrics): one implementation each, named as sentence-transformers names
# its score functions, so an exported model's similarity_fn_name and the metric keys read the same.
SIMILARITIES = ("cosine", "dot")
# sentence-transformers' score functions its evaluators write into keys (``SimilarityFunction``): the parser reads a
# key of any of them, though litembed computes only its own SIMILARITIES
ST_SIMILARITIES = (*SIMILARITIES, "euclidean", "manhattan")
PRIMARY_METRIC = "cosine_ndcg@10"  # the progress bar's, the plot's and, unless a monitor says otherwise, the card's
STAGES = ("val", "test")
TRAIN_LOSS = "train/loss"  # the training loss over all batches, as sentence-transformers' trainer logs ``loss``
MEAN_TASK = "mean"  # the evaluation set of the mean over the tasks of a mixture's sources: no source takes the name
BASE_SUFFIX = "_base"

# a similarity prefix at the start of the key or right after a '_' (set names may hold '_' and '-', metrics do not
# start anywhere else); the last such prefix starts the metric, so a set named "dot_products" stays a set
_SIMILARITY_PREFIX = re.compile(rf"(?:^|(?<=_))(?:{'|'.join(ST_SIMILARITIES)})_")
# a dim as metric_key spells it (no leading zero, never 0): every set it matches is spelled back the same
_MATRYOSHKA_SET = re.compile(r"(?:(.*)_)?dim_([1-9]\d*)")


@dataclass(frozen=True)
class MetricKey:
    """A metric key's parts (:func:`parse_metric_key`); ``str()`` spells it back.

    Attributes:
        stage: ``val``, ``test``, or empty for a key without its stage.
        task: the retrieval task's name, empty for a datamodule's one unnamed task.
        dim: the Matryoshka dim evaluated, None for the full embedding.
        metric: the similarity and metric, e.g. ``cosine_ndcg@10``.
        base: the model before training.
    """

    stage: str
    task: str
    dim: int | None
    metric: str
    base: bool = False

    @property
    def set_name(self) -> str:
        """The evaluation set: ``dim_384``, ``shapes-eval``, ``shapes-eval_dim_64`` or empty."""
        return _set_name(self.task, self.dim)

    @property
    def name(self) -> str:
        """The key without its stage, e.g. ``dim_384_cosine_ndcg@10``."""
        return metric_key("", self.task, self.dim, self.metric, base=self.base)

    def __str__(self) -> str:
        return metric_key(self.stage, self.task, self.dim, self.metric, base=self.base)


def metric_key(stage: str, task: str, dim: int | None, metric: str, *, base: bool = False) -> str:
    """Spell a metric key.

    Args:
        stage: ``val`` or ``test``; empty: no stage prefix (``dim_384_cosine_ndcg@10``).
        task: the retrieval task's name (``datamodules.contract.RetrievalTask.name``), may be empty.
        dim: the Matryoshka dim evaluated; None (or 0) for the full embedding.
        metric: e.g. ``cosine_ndcg@10``.
        base: the model before training: ``_base`` appended.

    Returns:
        e.g. ``val/dim_384_cosine_ndcg@10``, ``val/shapes-eval_cosine_ndcg@10`` or ``val/cosine_ndcg@10``.
    """
    set_name = _set_name(task, dim)
    return f"{stage + '/' if stage else ''}{set_name + '_' if set_name else ''}{metric}{BASE_SUFFIX if base else ''}"


def stage_of(key: str) -> str | None:
    """The evaluation stage a logged key belongs to (``val/…`` → "val", ``test/…`` → "test"), None for any other key
    (``train/loss``, ``epoch``). A monitor such as ``val/loss`` has a stage without being a retrieval metric key."""
    stage, slash, _ = key.partition("/")
    return stage if slash and stage in STAGES else None


def parse_metric_key(key: str) -> MetricKey:
    """Read a metric key back into its parts: the inverse of :func:`metric_key`.

    A ``val/`` or ``test/`` prefix is the stage (a key without one has an empty stage), a ``_base`` suffix marks the
    base model, and the metric starts at the last similarity (``cosine_``, ``dot_``, ``euclidean_``,
    ``manhattan_``) at the start or after a ``_``; what comes before it is the set, whose ``_dim_<n>`` or ``dim_<n>``
    ending is the dim.

    Args:
        key: e.g. ``val/dim_384_cosine_ndcg@10``, ``shapes-eval-image2text_cosine_mrr@10`` or ``cosine_ndcg@10``.

    Returns:
        e.g. ``MetricKey(stage="val", task="", dim=384, metric="cosine_ndcg@10")``.

    Raises:
        ValueError: if no part of ``key`` starts with a similarity.
    """
    stage = stage_of(key) or ""
    name = key.partition("/")[2] if stage else key
    base = name.endswith(BASE_SUFFIX)
    name = name.removesuffix(BASE_SUFFIX)
    starts = [match.start() for match in _SIMILARITY_PREFIX.finditer(name)]
    if not starts:
        raise ValueError(f"{key!r} is not a retrieval metric key: expected '<set>_<similarity>_<metric>' with a "
                         f"similarity in {ST_SIMILARITIES}, e.g. 'dim_384_cosine_ndcg@10'")
    set_name, metric = name[: starts[-1]].removesuffix("_"), name[starts[-1] :]
    matryoshka = _MATRYOSHKA_SET.fullmatch(set_name)
    task, dim = (matryoshka.group(1) or "", int(matryoshka.group(2))) if matryoshka else (set_name, None)
    return MetricKey(stage, task, dim, metric, base)


def _set_name(task: str, dim: int | None) -> str:
    return "_".join(part for part in (task, f"dim_{dim}" if dim else "") if part)


def source_loss_key(source: str) -> str:
    """The training loss of one source of a mixture: ``train/<source>_loss``."""
    return f"train/{source}_loss"


def loss_source(key: str) -> str | None:
    """The source whose training loss ``key`` is (``source_loss_key``'s inverse); None for another key."""
    if key.startswith("train/") and key.endswith("_loss") and key != TRAIN_LOSS:
        return key[len("train/"):-len("_loss")] or None
    return None
