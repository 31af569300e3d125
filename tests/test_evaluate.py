"""`train.py validate`, `test` and `predict` write into the fit run they evaluate (`<run>/<subcommand>/version_N`),
never a new `version_N` beside the fit runs, quietly (no Lightning warning about checkpoint callbacks), and leave no
folder when they fail; `python -m reporting` on such a folder names the run to pass instead."""

import glob
import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import write_pairs_dir
from test_report import text_args
from tests.commands import run_train
from train import cli_main

QUICK = ["--trainer.max_steps=2", "--test_after_fit=false", "--export.dirpath=null"]


def tree(folder) -> dict[str, str | None]:
    """Every file and folder under ``folder`` → the hash of the file's contents (None for a folder)."""
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else None
            for p in glob.glob(os.path.join(folder, "**"), recursive=True)}


def warnings_in(stderr: str) -> list[str]:
    """The warnings Python printed (``file.py:123: message``)."""
    return [line for line in stderr.splitlines() if re.search(r"\.py:\d+: ", line)]


class Fitted(NamedTuple):
    work: Path  # the working folder of every command
    run: Path  # the fit run: <work>/runs/text/version_0
    args: list[str]  # the recipe's flags (no subcommand)


class Evaluated(NamedTuple):
    work: Path
    run: Path
    fit_tree: dict[str, str | None]  # tree(run) before the evaluations
    done: dict[str, subprocess.CompletedProcess]  # subcommand → its process
    args: list[str]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_bert_dir) -> Fitted:
    """One fit run, in this process (the evaluations are what is under test): the run folder a train.py fit writes,
    sooner."""
    work = tmp_path_factory.mktemp("evaluate")
    data = write_pairs_dir(work / "data", train=16, validation=8, test=8)
    args = text_args(data, tiny_bert_dir, QUICK, subcommand=None)
    cli_main(["fit", *args, f"--trainer.logger.save_dir={work / 'runs'}"])
    return Fitted(work, work / "runs" / "text" / "version_0", args)


@pytest.fixture(scope="module")
def evaluated(fitted) -> Evaluated:
    """Each evaluation of the fit run, naming its checkpoint each way --ckpt_path can."""
    work, run, args = fitted
    fit_tree = tree(run)
    done = {subcommand: run_train([subcommand, *args, "--ckpt_path", ckpt], cwd=str(work))
            for subcommand, ckpt in [("validate", "runs/text/version_0/checkpoints/last.ckpt"),
                                     ("test", "runs/text/version_0"), ("predict", "last")]}
    return Evaluated(work, run, fit_tree, done, args)


def test_evaluations_write_into_the_run_they_evaluate(evaluated):
    work, run = evaluated.work, evaluated.run
    assert sorted(os.listdir(work / "runs" / "text")) == ["version_0"]  # no version_N that looks like a fit run
    assert {name: digest for name, digest in tree(run).items() if name.split(os.sep)[0] not in (
        "validate", "test", "predict")} == evaluated.fit_tree  # the fit's metrics.csv, checkpoints… untouched
    assert "val/dim_32_cosine_ndcg@10" in (run / "validate" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "test/dim_32_cosine_ndcg@10" in (run / "test" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert sorted(os.listdir(run / "predict" / "version_0" / "predictions")) == [
        "corpus.npy", "corpus.parquet", "query.npy", "query.parquet"]
    # what --ckpt_path last looks through: the fit run alone
    assert glob.glob(str(work / "runs" / "text" / "*" / "checkpoints" / "last.ckpt")) == [
        str(run / "checkpoints" / "last.ckpt")]


@pytest.mark.slow  # one more process
def test_a_second_validate_keeps_the_first_s_results(evaluated):
    work, run = evaluated.work, evaluated.run
    first = run / "validate" / "version_0" / "metrics.csv"
    results = first.read_text()
    run_train(["validate", *evaluated.args, "--ckpt_path", "last"], cwd=str(work))
    assert first.read_text() == results == (run / "validate" / "version_1" / "metrics.csv").read_text()
    assert sorted(os.listdir(work / "runs" / "text")) == ["version_0"]


def test_evaluations_print_no_warning_about_checkpoint_callbacks(evaluated):
    for name, done in evaluated.done.items():
        assert "callbacks used to create the checkpoint" not in done.stderr, name
        assert "dirpath has changed" not in done.stderr, name
        assert warnings_in(done.stderr) == [], name


def test_validate_and_test_print_litembed_s_table_not_lightning_s(evaluated):
    """Lightning's table listed every logged metric twice, cut at 80 columns; fit's compact table instead."""
    for name, column in (("validate", "validation"), ("test", "test")):
        console = evaluated.done[name].stdout + evaluated.done[name].stderr
        assert re.search(rf"^metric +{column}$", console, re.M), console[-2000:]
        assert re.search(r"^dim_32_cosine_ndcg@10 +\d\.\d{4}$", console, re.M)
        assert "DataLoader 0" not in console and "━━━" not in console  # Lightning's results table


def test_a_checkpoint_loads_without_a_trainer(fitted, tiny_bert_dir):
    from lightning_modules.text import TextEmbeddingModule
    from lightning_modules.text_encoder import TextEncoder
    from losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    module = TextEmbeddingModule.load_from_checkpoint(  # the injected encoder and loss are not hyperparameters
        fitted.run / "checkpoints" / "last.ckpt", map_location="cpu",
        encoder=TextEncoder(tiny_bert_dir, max_length=32), loss=MatryoshkaLoss(MultipleNegativesRankingLoss(), [32, 8]))
    assert module.history and module.global_step == 0  # the evaluations it carries; no trainer attached


@pytest.mark.parametrize("ckpt_path", ["runs/text/version_0",
                                       pytest.param(None, marks=pytest.mark.slow)])  # the same code, one more process
def test_an_evaluation_that_fails_leaves_no_folder(fitted, tiny_bert_dir, ckpt_path):
    """A split the data lacks is found after Lightning made the log folder (and wrote config.yaml into it)."""
    work, run = fitted.work, fitted.run
    before = tree(work / "runs")
    save_dir = "runs" if ckpt_path else "elsewhere"
    args = text_args(str(work / "data"), tiny_bert_dir, [*QUICK, "--data.test_split=nope",
                                                         f"--trainer.logger.save_dir={save_dir}"], subcommand="test")
    done = run_train(args + (["--ckpt_path", ckpt_path] if ckpt_path else []), cwd=str(work), returncode=2)
    assert done.stderr.splitlines()[-1].startswith("error: --data.init_args.test_split 'nope': split not found")
    assert tree(work / "runs") == before and not (work / "elsewhere").exists()


@pytest.mark.parametrize("folder, message", [
    ("runs/text/version_0/validate/version_0", "{folder} is the folder of a train.py validate of the fit run "
                                               "{run}, not a fit run; pass {run}"),
    ("base/text/predict/version_3", "{folder} is the folder of a train.py predict (of no fit run's checkpoint), not a "
                                    "fit run; pass the folder of a fit run (runs/<name>/version_<n>)"),
    ("runs/text/version_0", "{folder} exported no model (--export.dirpath null): there is no card to write; pass "
                            "the folder of a fit run that exported (runs/<name>/version_<n>)"),
])
def test_reporting_an_evaluation_or_a_run_without_export_names_the_folder_to_pass(evaluated, capsys, folder, message):
    from reporting.__main__ import main

    work, run = evaluated.work, evaluated.run
    path = work / folder
    path.mkdir(parents=True, exist_ok=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(folder=path, run=run)}\n"
