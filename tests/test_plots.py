"""The metrics-log reader and the run plots, on hand-made ``metrics.csv`` files laid out as Lightning's CSVLogger
writes them: sparse rows, an alphabetically sorted header, the base model's ``_base`` keys at step 0, ``lr-``
columns from LearningRateMonitor, test keys after fit, and a column from some other logger."""

import csv
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from matplotlib.image import imread

from reporting.metrics_log import Evaluation, MetricsLog, TrainPoint, read_metrics
from reporting.plots import EVAL_PLOT, LOSS_PLOT, ema, main, metric_label, plotted_keys, smoothing_weight, write_plots

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(directory: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as CSVLogger does: the union of keys, sorted, as header; a missing key is an empty cell."""
    directory.mkdir(parents=True, exist_ok=True)
    header = sorted(set().union(*rows))
    with open(directory / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return directory


def val_row(step: int, epoch: int | None, sets: dict[str, float], stage: str = "val", suffix: str = "") -> dict:
    """One evaluation row: every set's summary metrics, accuracy@1 at ``value - 0.1``, nDCG@10 at ``value``."""
    row = {"step": step} if epoch is None else {"epoch": epoch, "step": step}
    for name, value in sets.items():
        prefix = f"{stage}/{name + '_' if name else ''}"
        row.update({f"{prefix}cosine_accuracy@1{suffix}": value - 0.1, f"{prefix}cosine_ndcg@10{suffix}": value})
    return row


def train_row(step: int, epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "step": step, "train/loss": loss, "train/nonfinite_steps": 0.0}


def text_rows() -> list[dict]:
    """Two Matryoshka dims, two param groups, a test after fit, and a column from another logger."""
    return [
        val_row(0, None, {"dim_384": 0.5, "dim_256": 0.4}, suffix="_base"),
        {"step": 0, "lr-AdamW/pg1": 0.0, "lr-AdamW/pg2": 0.0},
        {"step": 4, "lr-AdamW/pg1": 1e-5, "lr-AdamW/pg2": 2e-5},
        train_row(4, 0, 3.0),
        {"step": 9, "lr-AdamW/pg1": 2e-5, "lr-AdamW/pg2": 4e-5},
        train_row(9, 0, 2.0),
        {"step": 9, "grad_norm": 7.5},
        val_row(10, 0, {"dim_384": 0.7, "dim_256": 0.6}),
        train_row(14, 1, 1.0),
        val_row(20, 1, {"dim_384": 0.8, "dim_256": 0.75}),
        val_row(20, 1, {"dim_384": 0.79, "dim_256": 0.74}, stage="test"),
    ]


def clip_rows() -> list[dict]:
    """A CLIP run: one set per retrieval direction, no Matryoshka, one unnamed param group."""
    directions = {"shapes-eval": 0.3, "shapes-eval-image2text": 0.35}
    return [
        val_row(0, None, directions, suffix="_base"),
        {"step": 3, "lr-AdamW": 5e-4},
        train_row(3, 0, 4.0),
        val_row(8, 0, {name: value + 0.3 for name, value in directions.items()}),
    ]


def test_read_text_run(tmp_path):
    log = read_metrics(str(write_metrics(tmp_path / "run", text_rows())))
    assert log.train == [TrainPoint(4, 0, 3.0), TrainPoint(9, 0, 2.0), TrainPoint(14, 1, 1.0)]
    assert log.lr == [(0, 0.0), (4, 1e-5), (9, 2e-5)]
    assert log.evaluations == [
        Evaluation(0, None, {"dim_256_cosine_accuracy@1": pytest.approx(0.3), "dim_256_cosine_ndcg@10": 0.4,
                             "dim_384_cosine_accuracy@1": 0.4, "dim_384_cosine_ndcg@10": 0.5}, base=True),
        Evaluation(10, 0, {"dim_256_cosine_accuracy@1": pytest.approx(0.5), "dim_256_cosine_ndcg@10": 0.6,
                           "dim_384_cosine_accuracy@1": pytest.approx(0.6), "dim_384_cosine_ndcg@10": 0.7}),
        Evaluation(20, 1, {"dim_256_cosine_accuracy@1": 0.65, "dim_256_cosine_ndcg@10": 0.75,
                           "dim_384_cosine_accuracy@1": pytest.approx(0.7), "dim_384_cosine_ndcg@10": 0.8}),
    ]
    assert log.test == {"dim_256_cosine_accuracy@1": 0.64, "dim_256_cosine_ndcg@10": 0.74,
                        "dim_384_cosine_accuracy@1": pytest.approx(0.69), "dim_384_cosine_ndcg@10": 0.79}
    # the header lists dim_256 first (sorted); the largest dim leads
    assert log.primary_keys() == ["dim_384_cosine_ndcg@10", "dim_256_cosine_ndcg@10"]
    assert log.primary_keys("cosine_accuracy@1") == ["dim_384_cosine_accuracy@1", "dim_256_cosine_accuracy@1"]


def test_read_accepts_the_csv_path(tmp_path):
    directory = write_metrics(tmp_path / "run", text_rows())
    assert read_metrics(str(directory / "metrics.csv")) == read_metrics(str(directory))


def test_read_clip_run(tmp_path):
    log = read_metrics(str(write_metrics(tmp_path / "run", clip_rows())))
    assert log.train == [TrainPoint(3, 0, 4.0)]
    assert log.lr == [(3, 5e-4)]
    assert [(e.step, e.epoch, e.base) for e in log.evaluations] == [(0, None, True), (8, 0, False)]
    assert log.evaluations[1].metrics["shapes-eval-image2text_cosine_ndcg@10"] == pytest.approx(0.65)
    assert log.test == {}
    assert log.primary_keys() == ["shapes-eval_cosine_ndcg@10", "shapes-eval-image2text_cosine_ndcg@10"]


def test_read_run_without_matryoshka(tmp_path):
    rows = [val_row(0, None, {"": 0.2}, suffix="_base"), train_row(4, 0, 1.5), val_row(5, 0, {"": 0.6}),
            val_row(5, 0, {"": 0.55}, stage="test")]
    log = read_metrics(str(write_metrics(tmp_path / "run", rows)))
    assert log.evaluations == [Evaluation(0, None, {"cosine_accuracy@1": 0.1, "cosine_ndcg@10": 0.2}, base=True),
                               Evaluation(5, 0, {"cosine_accuracy@1": 0.5, "cosine_ndcg@10": 0.6})]
    assert log.test == {"cosine_accuracy@1": pytest.approx(0.45), "cosine_ndcg@10": 0.55}
    assert log.primary_keys() == ["cosine_ndcg@10"]
    assert log.lr == []


def test_duplicated_steps_keep_the_last_value(tmp_path):
    rows = [val_row(0, None, {"dim_64": 0.1}, suffix="_base"), val_row(0, None, {"dim_64": 0.2}, suffix="_base"),
            train_row(4, 0, 3.0), {"step": 4, "lr-AdamW/pg1": 1.0}, val_row(5, 0, {"dim_64": 0.3}),
            train_row(4, 0, 2.5), {"step": 4, "lr-AdamW/pg1": 2.0}, val_row(5, 0, {"dim_64": 0.4}),
            train_row(9, 0, 1.0), val_row(9, 0, {"dim_64": 0.5}, stage="test"),
            val_row(9, 0, {"dim_64": 0.6}, stage="test")]
    log = read_metrics(str(write_metrics(tmp_path / "run", rows)))
    assert log.train == [TrainPoint(4, 0, 2.5), TrainPoint(9, 0, 1.0)]
    assert log.lr == [(4, 2.0)]
    assert [(e.step, e.base, e.metrics["dim_64_cosine_ndcg@10"]) for e in log.evaluations] == [(0, True, 0.2),
                                                                                                (5, False, 0.4)]
    assert log.test["dim_64_cosine_ndcg@10"] == 0.6


def test_lr_is_the_first_param_group(tmp_path):
    rows = [{"step": 1, "lr-AdamW/pg10": 3.0, "lr-AdamW/pg2": 2.0, "lr-AdamW/pg1": 1.0, "lr-AdamW/pg1-momentum": 0.9},
            train_row(1, 0, 1.0)]
    assert read_metrics(str(write_metrics(tmp_path / "run", rows))).lr == [(1, 1.0)]


def test_primary_keys_order_tasks_by_name_and_dims_largest_first():
    log = MetricsLog(evaluations=[Evaluation(5, 0, {"b_dim_64_cosine_ndcg@10": 0.5, "b_dim_128_cosine_ndcg@10": 0.6,
                                                    "a_dim_64_cosine_ndcg@10": 0.5, "b_cosine_mrr@10": 0.1})],
                     test={"b_dim_128_cosine_ndcg@10": 0.6, "a-x_dim_64_cosine_ndcg@10": 0.1})
    assert log.primary_keys() == ["a_dim_64_cosine_ndcg@10", "a-x_dim_64_cosine_ndcg@10", "b_dim_128_cosine_ndcg@10",
                                  "b_dim_64_cosine_ndcg@10"]


def test_read_metrics_errors_name_the_place(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics log at .*missing.*CSVLogger"):
        read_metrics(str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.csv").write_text("epoch,step,train/loss\n0,1,0.5\n0,2,oops\n")
    with pytest.raises(ValueError, match=r"line 3, column 'train/loss': 'oops' is not a number"):
        read_metrics(str(tmp_path / "bad"))
    (tmp_path / "nostep.csv").write_text("epoch,loss\n0,0.5\n")
    with pytest.raises(ValueError, match="has no 'step' column"):
        read_metrics(str(tmp_path / "nostep.csv"))


def assert_png(path: str) -> None:
    with open(path, "rb") as file:
        assert file.read(8) == PNG_MAGIC
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn, not a blank canvas


def mixture_rows() -> list[dict]:
    """A mixture of two sources (Matryoshka dims 64 and 32): each source's sets, their mean, each source's loss."""
    sets = {f"{name}_dim_{dim}": value - dim / 1000 for name, value in (("qa", 0.6), ("trip", 0.4), ("mean", 0.5))
            for dim in (64, 32)}
    return [
        val_row(0, None, sets, suffix="_base"),
        {**train_row(1, 0, 3.0), "train/qa_loss": 3.0},
        {**train_row(2, 0, 4.0), "train/trip_loss": 4.0},
        {**train_row(3, 0, 2.5), "train/qa_loss": 2.5},
        val_row(3, 0, {name: value + 0.2 for name, value in sets.items()}),
    ]


def test_a_mixture_plots_one_line_per_source(tmp_path):
    log = read_metrics(str(write_metrics(tmp_path / "mixture", mixture_rows())))
    assert {name: [p.loss for p in points] for name, points in log.source_losses.items()} == {
        "qa": [3.0, 2.5], "trip": [4.0]}
    assert [p.loss for p in log.train] == [3.0, 4.0, 2.5]
    # each source's curve and the mean's at the largest dim, not one per dim
    assert plotted_keys(log, "cosine_ndcg@10") == ["qa_dim_64_cosine_ndcg@10", "trip_dim_64_cosine_ndcg@10",
                                                   "mean_dim_64_cosine_ndcg@10"]
    assert len(plotted_keys(read_metrics(str(write_metrics(tmp_path / "text", text_rows()))),
                            "cosine_ndcg@10")) == 2  # a single dataset: every dim, as before


@pytest.mark.parametrize("rows", [text_rows, clip_rows, mixture_rows], ids=["text", "clip", "mixture"])
def test_write_plots(tmp_path, rows):
    directory = write_metrics(tmp_path / "run", rows())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # drawing must be quiet
        paths = write_plots(str(directory))
    assert paths == [str(directory / LOSS_PLOT), str(directory / EVAL_PLOT)]
    for path in paths:
        assert_png(path)


def test_write_plots_from_a_given_log(tmp_path):
    """A non-finite loss (a skipped step) and a constant zero learning rate draw without a warning."""
    log = MetricsLog(train=[TrainPoint(step, 0, math.nan if step == 50 else 1 / step) for step in range(1, 200)],
                     lr=[(step, 0.0) for step in range(1, 200)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_plots(str(tmp_path), log) == [str(tmp_path / LOSS_PLOT)]
    assert_png(str(tmp_path / LOSS_PLOT))


def test_write_plots_draws_only_what_was_logged(tmp_path):
    train_only = write_metrics(tmp_path / "train", [train_row(4, 0, 3.0), train_row(9, 0, 2.0)])
    assert write_plots(str(train_only)) == [str(train_only / LOSS_PLOT)]
    assert not (train_only / EVAL_PLOT).exists()
    base_only = write_metrics(tmp_path / "base", [val_row(0, None, {"dim_64": 0.3}, suffix="_base")])
    assert write_plots(str(base_only)) == [str(base_only / EVAL_PLOT)]
    assert not (base_only / LOSS_PLOT).exists()
    assert write_plots(str(tmp_path / "empty"), MetricsLog()) == []


def test_ema():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no pull toward 0
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.5 * 0.5 * 1 + 0.5 * 3) / 0.75])
    smoothed = ema([math.nan, 1.0, math.inf, 3.0], 0.5)
    assert math.isnan(smoothed[0]) and smoothed[1:] == pytest.approx([1.0, 1.0, 7 / 3])


def test_smoothing_weight_grows_with_the_series():
    assert smoothing_weight(4) == pytest.approx(1 - 2 / 6)  # the minimum span of 5 points
    assert smoothing_weight(25) == pytest.approx(1 - 2 / 11)
    assert smoothing_weight(5000) == pytest.approx(1 - 2 / (2 * math.sqrt(5000) + 1))


@pytest.mark.parametrize(("metric", "label"), [("cosine_ndcg@10", "nDCG@10"), ("dot_mrr@10", "MRR@10"),
                                               ("cosine_map@100", "MAP@100"), ("cosine_recall@5", "recall@5")])
def test_metric_label(metric, label):
    assert metric_label(metric) == label


def test_cli(tmp_path):
    directory = write_metrics(tmp_path / "run", text_rows())
    result = subprocess.run([sys.executable, "-m", "reporting.plots", str(directory)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(directory / LOSS_PLOT), str(directory / EVAL_PLOT)]
    assert result.stderr == ""
    for path in result.stdout.split():
        assert_png(path)


def test_cli_names_a_missing_log(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no metrics log at" in capsys.readouterr().err
