"""A run's metrics log: the rows litembed writes to every logger, and ``metrics.csv`` (Lightning's CSVLogger) read
back as training curve, learning rate and evaluations.

CSVLogger writes one row per ``log_metrics`` call, so rows are sparse (one metric group per row, the other cells
empty), and it sorts the header alphabetically. litembed logs:

- ``train/loss`` (the mean since the previous row) every ``log_every_n_steps`` optimizer steps, with the learning
  rates ``lr-<Optimizer>[/pg<i>]`` (``callbacks.training_log``);
- ``val/<set>_<similarity>_<metric>``, where ``<set>`` is an evaluation set (``dim_384``, ``shapes-eval``,
  ``shapes-eval_dim_384``, or empty: ``val/cosine_ndcg@10``), and the model before training as the same keys with a
  ``_base`` suffix at step 0;
- ``test/<set>_<similarity>_<metric>`` after fit.

``metrics.keys`` spells and reads these keys.

Every row's ``step`` is the number of optimizer steps taken (:func:`log_row`), as in sentence-transformers' logs and
the checkpoints' names. Columns other loggers add are ignored. A resumed run truncates the file to the checkpoint's
step and appends, so steps increase; a step that still appears twice keeps its last value.
"""

import csv
import math
import os
import re
from dataclasses import dataclass, field, replace

import numpy as np

from metrics.keys import PRIMARY_METRIC, STAGES, TRAIN_LOSS, MetricKey, loss_source, metric_key, parse_metric_key

METRICS_FILE = "metrics.csv"
_LR_EXTRA = ("-momentum", "-weight_decay")  # LearningRateMonitor's log_momentum / log_weight_decay columns


@dataclass
class TrainPoint:
    """One logged training loss."""

    step: int
    epoch: int | None
    loss: float


@dataclass
class Evaluation:
    """The validation metrics logged at one optimizer step (``base``: the model before training, at step 0)."""

    step: int
    epoch: int | None
    metrics: dict[str, float]
    base: bool = False


@dataclass
class MetricsLog:
    """What a run logged, in step order.

    Attributes:
        train: training losses.
        lr: ``(step, learning rate)`` of the first ``lr-`` column (the first parameter group: the weights that decay).
        evaluations: validation metrics keyed without the ``val/`` prefix (``dim_384_cosine_ndcg@10``); the base
            model, when logged, comes first.
        test: test metrics keyed without the ``test/`` prefix, last value of each.
        source_losses: a mixture's training loss per source (``train/<source>_loss``), by source name.
    """

    train: list[TrainPoint] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    source_losses: dict[str, list[TrainPoint]] = field(default_factory=dict)

    def primary_keys(self, metric: str = PRIMARY_METRIC) -> list[str]:
        """Keys of ``metric`` for each evaluation set (validation or test), tasks by name, a task's dims largest first.

        CSVLogger sorts its header, so the file keeps no order of its own (it puts ``dim_128`` before ``dim_64`` and
        both before ``dim_384``, and ``shapes-eval-image2text`` before ``shapes-eval``); sorting the task names puts a
        task before its variants (``shapes-eval``, then ``shapes-eval-image2text``), as the datamodules list them.

        Args:
            metric: a metric name with its similarity, e.g. ``cosine_ndcg@10``.

        Returns:
            e.g. ``["dim_384_cosine_ndcg@10", "dim_256_cosine_ndcg@10"]``, ``["shapes-eval_cosine_ndcg@10",
            "shapes-eval-image2text_cosine_ndcg@10"]`` or ``["cosine_ndcg@10"]``.
        """
        keys = [key for evaluation in self.evaluations for key in evaluation.metrics] + list(self.test)
        sets = {(parsed.task, parsed.dim) for parsed in map(_parsed, keys) if parsed and parsed.metric == metric}
        # a task's name, then its Matryoshka dims, largest first
        return [metric_key("", task, dim, metric) for task, dim in sorted(sets, key=lambda s: (s[0], -(s[1] or 0)))]


def _parsed(key: str) -> MetricKey | None:
    try:
        return parse_metric_key(key)
    except ValueError:  # not a retrieval metric: another callback's value (a loss), a learning rate
        return None


def metrics_path(path_or_run_dir: str) -> str:
    """The ``metrics.csv`` of a run folder, or the path itself when it is a file."""
    return os.path.join(path_or_run_dir, METRICS_FILE) if os.path.isdir(path_or_run_dir) else path_or_run_dir


def read_metrics(path_or_run_dir: str) -> MetricsLog:
    """Read a run's metrics log.

    Args:
        path_or_run_dir: the ``metrics.csv`` or the run folder holding it (``runs/<name>/version_<n>``).

    Returns:
        The log, every list in step order.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file has no ``step`` column or a cell is not a number, naming the line and column.
    """
    path = metrics_path(path_or_run_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics log at {path}: pass a run folder written by Lightning's CSVLogger "
                                f"(runs/<name>/version_<n>, holding {METRICS_FILE}) or the csv file itself")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        if "step" not in columns:
            raise ValueError(f"{path} has no 'step' column (columns: {columns[:8]}): it is not a CSVLogger metrics "
                             f"log")
        lr_column = _lr_column(columns)
        sources = {column: name for column in columns if (name := loss_source(column))}
        source_losses: dict[str, dict[int, TrainPoint]] = {name: {} for name in sources.values()}
        evaluated = {column: route for column in columns if (route := _evaluation_column(column))}
        train: dict[int, TrainPoint] = {}
        lr: dict[int, float] = {}
        evaluations: dict[int, Evaluation] = {}
        base: dict[str, float] = {}
        test: dict[str, float] = {}
        for row in reader:
            cell = _Cells(path, reader.line_num, row)
            step = cell.whole("step")
            if step is None:
                raise ValueError(f"{path} line {reader.line_num}: empty 'step' cell (CSVLogger writes one in every "
                                 f"row): the file is damaged")
            epoch = cell.whole("epoch")
            # dicts keyed by step: a repeated step overwrites, so its last value wins
            if (loss := cell.number(TRAIN_LOSS)) is not None:
                train[step] = TrainPoint(step, epoch, loss)
            for column, name in sources.items():
                if (loss := cell.number(column)) is not None:
                    source_losses[name][step] = TrainPoint(step, epoch, loss)
            if lr_column is not None and (rate := cell.number(lr_column)) is not None:
                lr[step] = rate
            for column, (stage, key, is_base) in evaluated.items():
                if (value := cell.number(column)) is None:
                    continue
                value = as_logged(value)
                if stage == "test":
                    test[key] = value
                elif is_base:
                    base[key] = value
                else:
                    evaluation = evaluations.setdefault(step, Evaluation(step, epoch, {}))
                    evaluation.metrics[key] = value
                    evaluation.epoch = epoch if epoch is not None else evaluation.epoch
    ordered = [evaluations[step] for step in sorted(evaluations)]
    if base:
        ordered.insert(0, Evaluation(0, None, base, base=True))
    return MetricsLog(train=[train[step] for step in sorted(train)], lr=sorted(lr.items()), evaluations=ordered,
                      test=test, source_losses={name: [points[step] for step in sorted(points)]
                                                for name, points in sorted(source_losses.items())})


def _evaluation_column(column: str) -> tuple[str, str, bool] | None:
    """``(stage, key without the stage, base model?)`` of a ``val/`` or ``test/`` column, None for another column.
    A column no metric key parses (another callback's ``val/loss``) keeps its name after the stage."""
    parsed = _parsed(column)
    if parsed is None:
        stage, slash, key = column.partition("/")
        return (stage, key, False) if slash and stage in STAGES else None
    if parsed.stage == "val":
        return "val", replace(parsed, base=False).name, parsed.base
    # only validation evaluates the base model: a test key is kept whole
    return ("test", parsed.name, False) if parsed.stage == "test" else None


def as_logged(value: float) -> float:
    """A metric as it was logged: Lightning logs a float32, CSVLogger writes the float64 it widens to
    (``0.7080000042915344``); this is the shortest decimal that reads back as that float32 (``0.708``), the number a
    model card shows where sentence-transformers' shows its float64 (its tables round both to 4 decimals)."""
    return float(str(np.float32(value)))


def _lr_column(columns: list[str]) -> str | None:
    """The first parameter group's learning-rate column (``lr-AdamW/pg1`` before ``lr-AdamW/pg2`` and ``/pg10``)."""
    candidates = [c for c in columns if c.startswith("lr-") and not c.endswith(_LR_EXTRA)]
    return min(candidates, key=_natural, default=None)


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class _Cells:
    """Typed access to one CSV row's cells; an empty or missing cell is None, a bad one an error naming its place."""

    def __init__(self, path: str, line: int, row: dict[str, str | None]) -> None:
        self.path, self.line, self.row = path, line, row

    def number(self, column: str) -> float | None:
        text = (self.row.get(column) or "").strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{self.path} line {self.line}, column {column!r}: {text!r} is not a number") from None

    def whole(self, column: str) -> int | None:
        value = self.number(column)
        if value is None:
            return None
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{self.path} line {self.line}, column {column!r}: {value!r} is not a whole number")
        return int(value)


def log_row(trainer, metrics: dict[str, float], step: int | None = None) -> None:
    """One row to every logger at ``step`` (default: the optimizer steps taken), with the epoch, on disk at once: a
    checkpoint written after it is never resumed without it."""
    if not metrics:
        return
    row = {**metrics, "epoch": trainer.current_epoch}
    for logger in trainer.loggers:
        logger.log_metrics(row, step=trainer.global_step if step is None else step)
        logger.save()
