"""A run's plots, drawn from its ``metrics.csv``: the training loss (with the learning rate) and the evaluation curve.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: no global figure state
and no display, so this works headless and inside DataLoader workers or DDP processes.

Rebuild a run's plots: ``python -m reporting.plots runs/<name>/version_<n>``.
"""

import argparse
import math
import os
import sys
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from metrics.keys import MEAN_TASK, PRIMARY_METRIC, parse_metric_key
from reporting.metrics_log import MetricsLog, read_metrics

LOSS_PLOT = "training_loss.png"
SOURCE_COLORS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                 "tab:gray")  # a mixture's sources: not the learning rate's orange
EVAL_PLOT = "evaluation.png"
FIGSIZE = (8, 4.5)
DPI = 120
STEP_TICKS = [1, 2, 2.5, 5, 10]  # step ticks at 0, 10, 20 or 0, 250, 500, never 0, 6, 12
# the smoothing span (an EMA of weight w averages over about 2 / (1 - w) - 1 points) grows as 2·√n with n logged
# points: 10 over 25 points, 14 over 50, 140 over 5,000, so short runs keep their shape and long ones lose their noise
SMOOTHING_SPAN_PER_SQRT_POINT = 2
MIN_SMOOTHING_SPAN = 5
METRIC_LABELS = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "accuracy": "accuracy", "precision": "precision",
                 "recall": "recall"}


def write_plots(run_dir: str, log: MetricsLog | None = None) -> list[str]:
    """Draw the run's plots into ``run_dir``.

    Args:
        run_dir: the run folder (``runs/<name>/version_<n>``); the PNGs are written there.
        log: the run's metrics; default: read from ``run_dir/metrics.csv``.

    Returns:
        Paths of the PNGs written: ``training_loss.png`` when a training loss was logged, ``evaluation.png`` when
        an evaluation was.
    """
    log = read_metrics(run_dir) if log is None else log
    title = _run_name(run_dir)
    written = []
    for name, draw in ((LOSS_PLOT, _draw_loss), (EVAL_PLOT, _draw_evaluation)):
        figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
        FigureCanvasAgg(figure)
        if draw(figure, log, title):
            path = os.path.join(run_dir, name)
            figure.savefig(path)
            written.append(path)
    return written


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard smooths); non-finite values are skipped.

    Args:
        values: the series.
        weight: the weight of the past, in [0, 1).

    Returns:
        One value per input: the average so far (NaN until the first finite value).
    """
    smoothed, average, total_weight = [], 0.0, 0.0
    for value in values:
        if math.isfinite(value):
            average = weight * average + (1 - weight) * value
            total_weight = weight * total_weight + (1 - weight)
        # dividing by the weight the points so far carry removes the pull toward the zero the average starts from
        smoothed.append(average / total_weight if total_weight else math.nan)
    return smoothed


def smoothing_weight(n_points: int) -> float:
    """The EMA weight whose span (≈ points averaged) is 2·√``n_points``, at least 5 points."""
    span = max(MIN_SMOOTHING_SPAN, SMOOTHING_SPAN_PER_SQRT_POINT * math.sqrt(n_points))
    return 1 - 2 / (span + 1)


def metric_label(metric: str) -> str:
    """Axis label of a metric name: ``cosine_ndcg@10`` → ``nDCG@10``."""
    name, _, k = metric.partition("_")[2].partition("@")
    return METRIC_LABELS.get(name, name) + (f"@{k}" if k else "")


def _draw_loss(figure: Figure, log: MetricsLog, title: str) -> bool:
    if not log.train:
        return False
    ax = figure.add_subplot()
    steps = [point.step for point in log.train]
    losses = [point.loss for point in log.train]
    if log.source_losses:  # a mixture: each source's loss (smoothed where it has points enough), all of them faint
        ax.plot(steps, losses, color="gray", alpha=0.35, linewidth=0.8, label="all sources (raw)")
        for index, (name, points) in enumerate(log.source_losses.items()):
            values = [p.loss for p in points]
            smoothed = ema(values, smoothing_weight(len(values))) if len(values) >= 3 else values
            ax.plot([p.step for p in points], smoothed, color=SOURCE_COLORS[index % len(SOURCE_COLORS)], linewidth=2,
                    marker="." if len(
                values) < 3 else None, label=name)
    else:
        ax.plot(steps, losses, color="tab:blue", alpha=0.45, linewidth=0.8, label="raw")
        if len(losses) >= 3:
            weight = smoothing_weight(len(losses))
            ax.plot(steps, ema(losses, weight), color="tab:blue", linewidth=2, label=f"smoothed (EMA {weight:.2f})")
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"Training loss — {title}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=STEP_TICKS))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if log.lr:
        lr_ax = ax.twinx()
        lr_ax.plot([s for s, _ in log.lr], [rate for _, rate in log.lr], color="tab:orange", linestyle="--",
                   linewidth=1.2, label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
        lr_ax.tick_params(axis="y", colors="tab:orange")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lr_ax.set_ylim(bottom=0)
        more_handles, more_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    return True


def _draw_evaluation(figure: Figure, log: MetricsLog, title: str) -> bool:
    metric = _plotted_metric(log)
    if not log.evaluations or metric is None:
        return False
    ax = figure.add_subplot()
    last_step = max([e.step for e in log.evaluations] + [p.step for p in log.train])
    # a little right of the last evaluation, whose markers the stars would hide
    test_step = last_step * 1.03
    keys = plotted_keys(log, metric)
    for index, key in enumerate(keys):
        color = f"C{index % 10}"
        set_name = parse_metric_key(key).set_name or "validation"
        points = [(e.step, e.metrics[key], e.base) for e in log.evaluations if key in e.metrics]
        if points:
            ax.plot([s for s, _, _ in points], [v for _, v, _ in points], color=color, marker="o", markersize=4,
                    label=set_name)
            base = [(s, v) for s, v, is_base in points if is_base]
            # the base model is the first point of the line; a hollow marker tells it from an evaluation at step 0
            ax.plot([s for s, _ in base], [v for _, v in base], linestyle="none", marker="o", markersize=7,
                    markerfacecolor="white", color=color)
        if key in log.test:
            ax.plot([test_step], [log.test[key]], linestyle="none", marker="*", markersize=12, color=color,
                    markeredgecolor="black", markeredgewidth=0.5)
    extra = []
    if any(e.base for e in log.evaluations):
        extra.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", color="gray",
                            label="base model (step 0)"))
    if any(key in log.test for key in keys):
        extra.append(Line2D([], [], linestyle="none", marker="*", markersize=12, color="gray",
                            markeredgecolor="black", markeredgewidth=0.5, label="test (after training)"))
    similarity = metric.partition("_")[0]
    ax.set(xlabel="optimizer step", ylabel=metric_label(metric),
           title=f"Evaluation: {metric_label(metric)} ({similarity}) — {title}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=STEP_TICKS))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles + extra, labels + [h.get_label() for h in extra], loc="best", fontsize="small")
    return True


def plotted_keys(log: MetricsLog, metric: str) -> list[str]:
    """The evaluation curves drawn: every set's (``MetricsLog.primary_keys``); for a mixture's sources, one line per
    source and one for their mean, at the largest Matryoshka dim."""
    keys = log.primary_keys(metric)
    parsed = [parse_metric_key(key) for key in keys]
    if not any(p.task == MEAN_TASK for p in parsed):
        return keys
    largest: dict[str, str] = {}
    for key, p in zip(keys, parsed):  # a task's dims come largest first
        largest.setdefault(p.task, key)
    return [largest[task] for task in sorted(largest, key=lambda t: (t == MEAN_TASK, t))]


def _plotted_metric(log: MetricsLog) -> str | None:
    """``cosine_ndcg@10``, or the first nDCG@10 of another similarity, or None when nothing can be drawn."""
    metrics = []
    for key in [k for e in log.evaluations for k in e.metrics] + list(log.test):
        try:
            metrics.append(parse_metric_key(key).metric)
        except ValueError:  # a metric another callback logged under val/ (a loss): not a retrieval curve
            continue
    if PRIMARY_METRIC in metrics:
        return PRIMARY_METRIC
    return next((m for m in metrics if m.endswith("_ndcg@10")), None)


def _run_name(run_dir: str) -> str:
    """``runs/demo-text/version_0`` → ``demo-text/version_0`` (the logger's name and version)."""
    parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
    return "/".join(parts[-2:])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reporting.plots RUN_DIR``: redraw a run's plots from its metrics log and print their paths."""
    parser = argparse.ArgumentParser(prog="python -m reporting.plots", description=main.__doc__)
    parser.add_argument("run_dir", help="the run folder holding metrics.csv (runs/<name>/version_<n>)")
    args = parser.parse_args(argv)
    try:
        paths = write_plots(args.run_dir)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if not paths:
        print(f"nothing to plot: {args.run_dir} logged no training loss and no evaluation", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
