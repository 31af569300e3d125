"""What a `train.py fit` leaves behind: the exported model's card (numbers = the logged metrics of the exported
checkpoint), plots, config, logs a Lightning user expects, a quiet console and one summary at the end."""

import glob
import json
import os
import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from metrics.keys import parse_metric_key
from reporting.card import check_no_absolute_paths
from reporting.metrics_log import read_metrics
from tests.commands import ROOT, clip_recipe, logged_rows, run_train, text_recipe, train_args
from train import cli_main


def split_metric_key(key: str) -> tuple[str, str]:
    """(evaluation set, metric): how the card groups a key's value."""
    parsed = parse_metric_key(key)
    return parsed.set_name, parsed.metric


def text_args(data_dir: str, model_dir: str, extra=(), subcommand: str | None = "fit") -> list[str]:
    """2 epochs of 6 steps, logged every 2, into runs/text/version_N; the best checkpoint by nDCG@10 exported."""
    return train_args(*text_recipe(model_dir, data_dir), "--trainer.max_epochs=2", "--trainer.log_every_n_steps=2",
                      "--trainer.logger.name=text", "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
                      "--trainer.callbacks.monitor=val/dim_32_cosine_ndcg@10", "--trainer.callbacks.mode=max",
                      "--model.lr=3e-3", *extra, save_dir="runs", subcommand=subcommand)


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:300]
    return yaml.safe_load(match.group(1))


def card_numbers(card: str) -> dict[tuple[str, str], float]:
    """(set, metric) → value from the model-index of the front matter."""
    numbers = {}
    for result in front_matter(card)["model-index"][0]["results"]:
        for metric in result["metrics"]:
            numbers[(result["dataset"]["name"], metric["type"])] = metric["value"]
    return numbers


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir):
    from conftest import write_pairs_dir

    work = tmp_path_factory.mktemp("report-text")
    data = write_pairs_dir(work / "data")
    done = run_train(text_args(data, tiny_bert_dir), cwd=str(work))
    return work, os.path.join(str(work), "runs", "text", "version_0"), done


def test_the_text_card_loads_parses_and_says_what_was_logged(text_run):
    from sentence_transformers import SentenceTransformer

    work, run, done = text_run
    model_dir = os.path.join(run, "model")
    st = SentenceTransformer(model_dir, device="cpu")
    with open(os.path.join(model_dir, "README.md")) as f:
        card = f.read()
    meta = front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "loss:MatryoshkaLoss", "loss:MultipleNegativesRankingLoss",
            "dataset_size:48"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local directory is not a hub model
    # sentence-transformers' 5 widget examples from the validation split (20 rows), 4 texts each
    assert len(meta["widget"]) == 5 and all(len(w["sentences"]) == 3 for w in meta["widget"])
    check_no_absolute_paths(card)
    assert str(work) not in card and "site-packages" not in card

    # every number: the evaluation at the exported checkpoint's step, and the test of those weights
    report = json.load(open(os.path.join(run, "report.json")))
    checkpoint = glob.glob(os.path.join(run, "checkpoints", "epoch=*.ckpt"))
    assert len(checkpoint) == 1 and f"step={report['exported_step']}" in checkpoint[0]
    log = read_metrics(run)
    # the validation that evaluated the exported weights: the one whose step ends the checkpoint's epoch
    validations = [e for e in log.evaluations if not e.base]
    exported = [e for e in validations if e.step == report["exported_step"]]  # matched by step, as the card does
    assert exported
    at_step = exported[-1].metrics
    assert at_step["dim_32_cosine_ndcg@10"] == max(v.metrics["dim_32_cosine_ndcg@10"] for v in validations)
    numbers = card_numbers(card)
    expected = {}
    for key, value in at_step.items():
        expected[split_metric_key(key)] = value
    for key, value in log.test.items():
        name, metric = split_metric_key(key)
        expected[(f"test {name}", metric)] = value
    assert len(numbers) == len(expected) > 0
    for (name, metric), value in expected.items():
        shown = [v for (n, m), v in numbers.items() if m == metric and n.replace(" ", "_") == name.replace(" ", "_")]
        assert shown == [pytest.approx(value, abs=1e-12)], (name, metric)
    # each the float32 it was logged as, spelt shortest (0.708), not the float64 CSVLogger widened it to
    logged = {np.float32(float(v)) for row in logged_rows(run) for k, v in row.items()
              if k.startswith(("val/", "test/")) and v}
    assert {np.float32(v) for v in numbers.values()} <= logged
    assert all(repr(v) == str(np.float32(v)) for v in numbers.values()), numbers
    # the markdown table shows them rounded
    best = at_step["dim_32_cosine_ndcg@10"]
    assert re.search(rf"\| \*\*cosine_ndcg@10\*\*\s*\| \*\*{round(best, 4)}\*\*", card)
    # the architecture block is what sentence-transformers prints for the export; the plots are linked and there
    assert str(st) in card
    for plot in ("training_loss.png", "evaluation.png"):
        assert os.path.isfile(os.path.join(run, plot)) and os.path.isfile(os.path.join(model_dir, plot))
        assert f"]({plot})" in card


def test_the_run_leaves_config_lr_and_throughput_logs_and_a_summary(text_run):
    work, run, done = text_run
    assert os.path.isfile(os.path.join(run, "config.yaml"))
    with open(os.path.join(run, "metrics.csv")) as f:
        header = f.readline()
    assert "lr-AdamW" in header and "train/samples_per_s" in header
    out = done.stdout + done.stderr
    assert "💡" not in out and "DeprecationWarning" not in out and "FutureWarning" not in out
    summary = done.stdout[done.stdout.rindex("Run folder:"):]
    for line in ("Model:", "Model card:", "Best checkpoint:", "Plots:", "Metrics:"):
        assert line in summary
    assert "runs/text/version_0/model/README.md" in summary


def test_the_logged_loss_is_the_mean_over_the_logging_window_as_in_sentence_transformers(text_run, tiny_bert_dir,
                                                                                      monkeypatch):
    """The same run logged at every step: each row of the run logged every 2 steps is the mean of its 2 steps' losses
    (ST's trainer logs ``loss`` so), and every row sits at the optimizer steps taken: 2, 4, …, not 1, 3, …"""
    work, run, _ = text_run
    every_step = os.path.join(str(work), "every-step")
    os.makedirs(every_step)
    monkeypatch.chdir(every_step)  # in this process: text_run is the train.py process; this run only logs more
    cli_main(text_args(os.path.join(str(work), "data"), tiny_bert_dir, ["--trainer.log_every_n_steps=1",
                                                                           "--test_after_fit=false",
                                                                           "--export.dirpath=null"]))
    per_step = {int(r["step"]): float(r["train/loss"])
                for r in logged_rows(os.path.join(every_step, "runs", "text", "version_0")) if r.get("train/loss")}
    assert sorted(per_step) == list(range(1, 13))  # 6 steps an epoch, 2 epochs, numbered from 1
    windowed = {int(r["step"]): float(r["train/loss"]) for r in logged_rows(run) if r.get("train/loss")}
    assert sorted(windowed) == [2, 4, 6, 8, 10, 12]
    for step, loss in windowed.items():
        assert loss == pytest.approx((per_step[step - 1] + per_step[step]) / 2, rel=1e-6), step
    assert len({round(v, 6) for v in windowed.values()}) > 1  # not one value repeated


def test_one_step_numbering_in_checkpoint_console_metrics_card_and_plots(text_run):
    """The step of the exported checkpoint is the same number in its file name, the console, metrics.csv, the card's
    bold row and the curves the plots draw: the optimizer steps taken, as sentence-transformers numbers them."""
    work, run, done = text_run
    report = json.load(open(os.path.join(run, "report.json")))
    step = report["exported_step"]
    (checkpoint,) = glob.glob(os.path.join(run, "checkpoints", "epoch=*.ckpt"))
    assert checkpoint.endswith(f"-step={step}.ckpt")
    console = done.stdout + done.stderr
    assert re.search(rf"^metric +base model +step {step}$", console, re.M), console[-2000:]
    log = read_metrics(run)  # what the plots draw
    validations = [e for e in log.evaluations if not e.base]
    assert [e.step for e in validations] == [6, 12]  # at the end of each 6-step epoch: the steps taken
    assert step in [e.step for e in validations]  # the validation the card shows for the exported weights
    assert {p.step for p in log.train} <= {e.step for e in validations} | {2, 4, 8, 10}
    card = open(os.path.join(run, "model", "README.md")).read()
    bold = re.findall(r"^\| \*\*[\d.]+\*\* +\| \*\*(\d+)\*\* ", card, re.M)
    assert bold == [str(step)], card[card.index("### Training Logs"):][:1500]
    # a step the loss and an evaluation share is one row of the card's table, not two
    table = card[card.index("### Training Logs"):card.index("* The bold row")].splitlines()[3:]
    assert [row.split("|")[2].strip(" *") for row in table].count(str(step)) == 1


def test_the_card_and_plots_are_rebuilt_from_the_run_folder(text_run):
    work, run, done = text_run
    card_path = os.path.join(run, "model", "README.md")
    before = open(card_path).read()
    os.remove(card_path)
    os.remove(os.path.join(run, "evaluation.png"))
    rebuilt = subprocess.run([sys.executable, "-m", "reporting", run], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert open(card_path).read() == before
    assert os.path.isfile(os.path.join(run, "evaluation.png"))


@pytest.mark.slow  # a whole process rebuilding the card (~18 s)
def test_a_run_folder_without_report_json_gets_its_card_from_config_metrics_and_export(text_run, tmp_path):
    """The card step's failure (or a deletion) leaves no report.json: the rebuild it prints still works, from what the
    folder holds, and says what the card lacks; its numbers are the test metrics of the exported weights."""
    work, run, done = text_run
    copy = shutil.copytree(run, tmp_path / "version_0")
    os.remove(copy / "report.json")
    os.remove(copy / "model" / "README.md")
    rebuilt = subprocess.run([sys.executable, "-m", "reporting", str(copy)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (f"The report.json of {copy} was rebuilt from config.yaml, metrics.csv and the export, so the card lacks "
            f"what only the training process knew: the datasets' statistics and samples, the versions, the hardware "
            f"and hours, which validation evaluated the exported weights") in rebuilt.stderr
    with open(copy / "model" / "README.md") as f:
        card = f.read()
    with open(os.path.join(run, "model", "README.md")) as f:
        original = front_matter(f.read())
    rebuilt_meta = front_matter(card)
    assert rebuilt_meta["model-index"][0]["name"] == original["model-index"][0]["name"]
    assert {k: rebuilt_meta.get(k) for k in ("base_model", "library_name")} == {
        k: original.get(k) for k in ("base_model", "library_name")}
    assert rebuilt_meta["tags"] == [t for t in original["tags"] if not t.startswith("dataset_size:")]
    test = read_metrics(str(copy)).test
    assert test and {(name.replace(" ", "_"), metric): value for (name, metric), value in card_numbers(card).items()} \
        == {split_metric_key(key): value for key, value in test.items()}
    assert json.loads((copy / "report.json").read_text())["not_recorded"]  # saved, to edit and rebuild


@pytest.mark.parametrize("folder, message", [
    ("empty", "{folder} is not a run folder: it holds neither report.json nor config.yaml. A run folder is what "
              "train.py fit writes (runs/<name>/version_<n>): config.yaml, metrics.csv, report.json and the exported "
              "model (model/); pass one"),
    ("missing", "{folder}: no such folder; pass a run folder (runs/<name>/version_<n>)"),
])
def test_reporting_a_folder_that_is_not_a_run_says_what_a_run_folder_holds(tmp_path, capsys, folder, message):
    from reporting.__main__ import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / folder)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(folder=tmp_path / folder)}\n"


def test_the_card_counts_an_unreadable_image_training_skipped_instead_of_failing():
    """An image training skips (on_bad_image: skip) made the card's dataset statistics raise, so report.json was never
    written and the printed rebuild command failed on the folder."""
    from lightning.pytorch.utilities.parsing import AttributeDict
    from PIL import Image

    from reporting.collect import _dataset_info

    png = io.BytesIO()
    Image.new("RGB", (8, 6)).save(png, format="PNG")

    class Data:
        hparams = AttributeDict(dataset="builtin:shapes", image_column="image")
        base_dir = None

        def head(self, split, rows):
            return [{"image": {"bytes": png.getvalue()}, "caption": "a"},
                    {"image": {"bytes": b"not an image"}, "caption": "b"}], 2

        def split_columns(self, split):
            return ["image", "caption"]

    info = _dataset_info(Data(), "train", Data().head("train", 2))
    assert info["types"]["image"] == "image (PNG)"
    assert info["details"]["image"][:2] == ["unreadable (skipped in training): 1 of 2", "mode: RGB (1)"]
    assert [row["image"] for row in info["samples"]] == ["<PNG image mode=RGB size=8x6>", "<unreadable image>"]


@pytest.mark.parametrize("flag", [  # a whole process each (~8 s): one in the default suite
    "--trainer.max_steps", pytest.param("--trainer.max_epochs", marks=pytest.mark.slow),
    pytest.param("--trainer.limit_train_batches", marks=pytest.mark.slow)])
def test_a_fit_that_trains_nothing_is_refused_before_anything_loads(tmp_path, pairs_dir, flag):
    done = run_train(text_args(pairs_dir, "no/such-model", [f"{flag}=0"]), cwd=str(tmp_path), returncode=2)
    assert done.stderr.splitlines()[-1] == (f"error: {flag} 0 trains nothing, and fit would export the base model as if fine-tuned; "
                           f"set {flag} above 0, or evaluate the base model with python train.py validate (or test) "
                           f"and the same arguments")
    assert "Traceback" not in done.stderr and not os.path.exists(tmp_path / "runs")


@pytest.mark.slow  # a whole process (~9 s)
def test_the_refusal_s_advice_evaluates_the_base_model(tmp_path, pairs_dir, tiny_bert_dir):
    done = run_train(text_args(pairs_dir, tiny_bert_dir, ["--trainer.max_epochs=0"], subcommand="validate"),
                     cwd=str(tmp_path))
    assert re.search(r"^metric +validation$", done.stdout + done.stderr, re.M)  # litembed's table
    with open(tmp_path / "runs" / "text" / "validate" / "version_0" / "metrics.csv") as f:  # not a fit run's folder
        assert "val/dim_32_cosine_ndcg@10" in f.readline().split(",")
    assert os.listdir(tmp_path / "runs" / "text") == ["validate"]


@pytest.mark.parametrize("accumulate", [1, pytest.param(2, marks=pytest.mark.slow)])  # a fit each (~10 s)
def test_max_steps_inside_an_epoch_validates_and_exports_the_final_weights(tmp_path, pairs_dir, tiny_bert_dir,
                                                                         accumulate, monkeypatch):
    """48 training rows in batches of 8: 6 batches an epoch; max_steps 2 stops inside the first one."""
    monkeypatch.chdir(tmp_path)  # in this process: what is under test is what the run leaves in its folder
    cli_main(text_args(pairs_dir, tiny_bert_dir, ["--trainer.max_steps=2", "--test_after_fit=false",
                                                  f"--trainer.accumulate_grad_batches={accumulate}"]))
    run = tmp_path / "runs" / "text" / "version_0"
    rows = logged_rows(str(run))
    trained = [r["step"] for r in rows if r.get("train/loss")]
    validated = [r["step"] for r in rows if r.get("val/dim_32_cosine_ndcg@10")]
    assert validated == [trained[-1]]  # the weights the run ended with (logged at their last training step)
    report = json.loads((run / "report.json").read_text())
    assert [int(s) for s in validated] == [report["exported_step"]] == [2]  # the card shows that validation


def test_a_monitor_the_run_never_logs_is_refused_before_training(tmp_path, pairs_dir, tiny_bert_dir):
    """Lightning stopped at the end of the first validation, an epoch in; the monitor is known at the start."""
    args = text_args(pairs_dir, tiny_bert_dir, ["--trainer.callbacks.init_args.monitor=val/dim_384_cosine_ndcg@10"])
    done = run_train(args, cwd=str(tmp_path), returncode=2)
    assert done.stderr.splitlines()[-1] == (
        "error: the monitor 'val/dim_384_cosine_ndcg@10' of trainer.callbacks' ModelCheckpoint is not a metric this run "
        "logs, so the first validation would stop the run: its validation logs 30 metrics, the closest "
        "val/dim_8_cosine_ndcg@10, val/dim_32_cosine_ndcg@10, val/dim_8_cosine_mrr@10; set the callback's monitor to "
        "one of them (init_args.monitor in the config file; --trainer.callbacks.init_args.monitor sets the last "
        "callback listed), e.g. val/dim_32_cosine_ndcg@10")
    assert "Traceback" not in done.stderr
    assert not glob.glob(str(tmp_path / "runs" / "text" / "*" / "checkpoints" / "*"))  # not one step trained


def test_tensorboard_logs_into_the_run_folder(tmp_path, tiny_bert_dir, monkeypatch):
    pytest.importorskip("tensorboard")
    from conftest import write_pairs_dir

    data = write_pairs_dir(tmp_path / "data", train=16, validation=8, test=8)
    monkeypatch.chdir(tmp_path)  # in this process: what is under test is what the run leaves in its folder
    cli_main(text_args(data, tiny_bert_dir, ["--tensorboard=true", "--trainer.max_steps=2", "--export.dirpath=null"]))
    run = tmp_path / "runs" / "text" / "version_0"
    assert glob.glob(str(run / "events.out.tfevents.*")) and (run / "metrics.csv").is_file()
    assert not (tmp_path / "runs" / "text" / "version_1").exists()
    # every logger gets what metrics.csv gets, at the same steps: the base model's metrics too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    tags = set(events.Tags()["scalars"])
    columns = {k for row in logged_rows(str(run)) for k, v in row.items() if v and k not in ("step", "epoch")}
    assert "val/dim_32_cosine_ndcg@10_base" in tags and columns <= tags
    assert [e.step for e in events.Scalars("val/dim_32_cosine_ndcg@10_base")] == [0]
    assert [e.step for e in events.Scalars("train/loss")] == [2]
    assert [e.step for e in events.Scalars("val/dim_32_cosine_ndcg@10")] == [2]


def test_a_clip_run_gets_a_card_too(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    args = train_args(*clip_recipe(), "--trainer.logger.name=clip", "--model.lr=2e-5", "--data.builtin_rows=48",
                      "--data.val_size=16", "--data.val_name=shapes-eval", "--model.learn_logit_scale=true",
                      "--export.usage_images=[assets/desk.jpg, https://example.com/cake.png]", save_dir="runs")
    monkeypatch.chdir(tmp_path)  # in this process: what is under test is what the run leaves in its folder
    cli_main(args)
    run = tmp_path / "runs" / "clip" / "version_0"
    model = SentenceTransformer(str(run / "model"), device="cpu")
    card = (run / "model" / "README.md").read_text()
    # the loss's scale is the model's, learned: logged while training, and the exported value in the card
    scales = [float(r["train/logit_scale"]) for r in logged_rows(str(run)) if r.get("train/logit_scale")]
    assert len(scales) == 4 and scales[0] != scales[-1]  # 32 training pairs in batches of 8, logged at every step
    learned = model[0].model.logit_scale.exp().item()
    loss_block = card[card.index("with these parameters"):][:400]
    assert f'"scale": {round(learned, 4)},' in loss_block and '"scale_learned": true' in loss_block
    assert '"scale": 20.0' not in card
    check_no_absolute_paths(card)
    meta = front_matter(card)
    names = {r["dataset"]["name"] for r in meta["model-index"][0]["results"]}
    assert {"shapes-eval", "shapes-eval-image2text"} <= {n.replace(" ", "-") for n in names} | names
    assert "image (PNG)" in card and "radford2021learning" in card
    # the images the user named for the usage snippet (--export.usage_images)
    assert ("images = [\n    Image.open('assets/desk.jpg'),\n"
            "    Image.open(urlopen('https://example.com/cake.png')),\n]"
            in card and "# [3, 2]" in card)


def test_usage_images_on_a_text_model_are_refused(tmp_path, pairs_dir, tiny_bert_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli_main(text_args(pairs_dir, tiny_bert_dir, ["--export.usage_images=[photo.jpg]", "--trainer.max_steps=1"]))
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --export.usage_images: TextEmbeddingModule embeds texts only; its card's usage snippet encodes "
        "sentences (leave the option out)")

