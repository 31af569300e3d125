"""Bad input to train.py: one short message on stderr, exit code 2, naming the flag as --print_config spells it.

Every flag a message names is typed back in with a good value, to prove the CLI accepts it.
"""

import argparse
import os
import re

import pytest
import torch
import yaml

from cli_errors import constructor_error
from tests.commands import ROOT, run_train, train_args
from train import cli_main

TEXT = os.path.join(ROOT, "configs", "demo", "text.yaml")
CLIP = os.path.join(ROOT, "configs", "demo", "clip.yaml")
OPTIMIZER_FLAGS = {"--model.init_args.lr": "1.0e-04", "--model.init_args.weight_decay": "0.01",
                   "--model.init_args.betas": "[0.9, 0.98]", "--model.init_args.eps": "1.0e-06",
                   "--model.init_args.lr_schedule": "cosine", "--model.init_args.warmup_ratio": "0.05"}


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that should have failed writes nothing into the checkout


def fails(capsys, *args: str, subcommand: str = "fit", fast_dev_run: bool = True) -> str:
    """``train.py <subcommand> *args`` must exit with code 2 and a short message and no traceback; returns the
    message. ``fast_dev_run``: in a run that writes nothing (no logger, no checkpoint)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand, *args, f"--trainer.fast_dev_run={int(fast_dev_run)}", "--data.init_args.num_workers=0"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert len((out + err).strip().splitlines()) < 15 and "Traceback" not in err, out + err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, err
    return message[0].removeprefix("error: ")


def builds(config: str, *args: str):
    """The CLI parses ``args`` and builds the model, data module and trainer from them (nothing runs)."""
    return cli_main(["--config", config, *args], run=False)


def printed_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("bad, message, good", [
    ("--data.init_args.batch_size=0", "--data.init_args.batch_size must be ≥ 2 for in-batch negatives, got 0",
     "--data.init_args.batch_size=8"),
    ("--model.init_args.loss.init_args.dims=[384, 1000]", "--model.init_args.loss.init_args.dims: 1000 is larger "
     "than the model's embedding size 384", "--model.init_args.loss.init_args.dims=[384, 100]"),
    ("--model.init_args.loss.init_args.weights=[1, 2]", "--model.init_args.loss.init_args.weights must have one "
     "entry per dim: 2 weights for 4 dims", "--model.init_args.loss.init_args.weights=[1, 1, 0.5, 0.5]"),
    ("--model.init_args.loss.init_args.loss.init_args.scale=-1",  # the inner loss of MatryoshkaLoss
     "--model.init_args.loss.init_args.loss.init_args.scale must be > 0",
     "--model.init_args.loss.init_args.loss.init_args.scale=50"),
    ("--model.init_args.encoder.init_args.pooling=bogus", "--model.init_args.encoder.init_args.pooling must be one "
     "of ('cls', 'mean', 'lasttoken'), got 'bogus'", "--model.init_args.encoder.init_args.pooling=cls"),
    ("--model.init_args.lr=-1", "--model.init_args.lr must be > 0, got -1.0", "--model.init_args.lr=1.0e-4"),
], ids=["batch_size", "matryoshka_dims", "matryoshka_weights", "inner_loss_scale", "pooling", "lr"])
def test_constructor_error_is_one_line_naming_the_flag(capsys, bad, message, good):
    assert fails(capsys, "--config", TEXT, bad).startswith(message)
    flag, value = good.split("=")
    assert builds(TEXT, good).config[flag.removeprefix("--")] == yaml.safe_load(value)


def test_uncached_hub_model_offline_names_it_and_a_local_directory(tiny_bert_dir):
    flag = "--model.init_args.encoder.init_args.model_name_or_path"
    run = run_train(["fit", "--config", TEXT, flag, "some/uncached-model"], cwd=os.getcwd(), returncode=2)
    assert len((run.stdout + run.stderr).strip().splitlines()) < 15 and "Traceback" not in run.stderr, run.stderr
    assert (f"error: {flag} 'some/uncached-model' is neither a local path nor in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE=1 forbids downloading it: point at a local copy ({flag} /path/to/dir) or run once with "
            f"HF_HUB_OFFLINE=0 to cache it") in run.stderr
    cli = builds(TEXT, flag, tiny_bert_dir, "--model.init_args.loss.init_args.dims=[32, 16]")
    assert cli.model.encoder.name == tiny_bert_dir


def test_uncached_clip_model_offline_names_it(capsys, tmp_path):
    from lightning_modules.clip_backends import TransformersClip
    from tests.tiny import TINY_HF_CLIP_CONFIG

    flag = "--model.init_args.encoder.init_args.model_name_or_path"
    message = fails(capsys, "--config", CLIP, f"{flag}=openai/some-uncached-clip")
    assert message.startswith(f"{flag} 'openai/some-uncached-clip' is neither a local path nor in the Hugging Face "
                              f"cache") and f"({flag} /path/to/dir)" in message
    backend = TransformersClip(config=TINY_HF_CLIP_CONFIG)
    backend.model.save_pretrained(tmp_path / "clip")
    backend.processor.hf_processor.save_pretrained(tmp_path / "clip")
    assert builds(CLIP, flag, str(tmp_path / "clip")).model.encoder.embedding_dim == 32


@pytest.mark.parametrize("key, typo, parent", [
    ("max_length", "max_lenght", "model.init_args.encoder.init_args of lightning_modules.text_encoder.TextEncoder"),
    ("batch_size", "batch_sise", "data.init_args of datamodules.pairs.PairDataModule"),
])
def test_config_key_typo_names_the_file_and_the_closest_key(capsys, tmp_path, key, typo, parent):
    with open(TEXT) as f:
        text = f.read()
    assert f"    {key}: " in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace(f"    {key}: ", f"    {typo}: "))
    assert fails(capsys, "--config", str(path)) == f"{path}: unknown key '{typo}' under {parent}; did you mean '{key}'?"


def test_flag_typo_suggests_the_flag(capsys):
    assert fails(capsys, "--config", TEXT, "--data.init_args.batch_sise=3") == (
        "--data.init_args.batch_sise is not an option of datamodules.pairs.PairDataModule; did you mean "
        "--data.init_args.batch_size?")
    assert printed_config(capsys, "--config", TEXT, "--data.init_args.batch_size=3")["data"]["init_args"]["batch_size"] == 3


def test_wrong_type_names_the_flag(capsys):
    assert fails(capsys, "--config", TEXT, "--data.init_args.batch_size=abc") == (
        "--data.init_args.batch_size: Expected a <class 'int'>. Got value: abc")


@pytest.mark.parametrize("args", [
    ["--optimizer", "torch.optim.SGD"],
    ["--optimizer.lr=0.1"],
    ["--lr_scheduler=torch.optim.lr_scheduler.StepLR"],
    "config",
], ids=["optimizer", "optimizer_arg", "lr_scheduler", "config_file"])
def test_optimizer_flags_are_refused_naming_the_model_flags(capsys, tmp_path, args):
    if args == "config":
        (tmp_path / "sgd.yaml").write_text("optimizer:\n  class_path: torch.optim.SGD\n")
        args = ["--config", str(tmp_path / "sgd.yaml")]
    message = fails(capsys, "--config", TEXT, *args)
    which = "lr_scheduler" if "lr_scheduler" in args[0] else "optimizer"
    assert message.startswith(f"--{which}: litembed builds its own optimiser (AdamW")
    assert re.findall(r"--model\.init_args\.\w+", message) == list(OPTIMIZER_FLAGS)


def test_the_optimizer_flags_named_are_accepted(capsys):
    model = printed_config(capsys, "--config", TEXT, *(f"{k}={v}" for k, v in OPTIMIZER_FLAGS.items()))["model"]
    assert {k: model["init_args"][k.rsplit(".", 1)[1]] for k in OPTIMIZER_FLAGS} == {
        k: yaml.safe_load(v) for k, v in OPTIMIZER_FLAGS.items()}


MOVED_WHY = ("the export's options are one group, --export.dirpath (the folder, null: no export), --export.title, "
             "--export.model_id, --export.language and --export.license")
NONFINITE_WHY = ("the guard against non-finite steps is a callback of fit (callbacks.nonfinite), no longer an argument "
                 "of the model")


@pytest.mark.parametrize("args, message", [
    (["--card.title=Mine"], f"--card.title was renamed --export.title: {MOVED_WHY}"),
    (["--card.license", "mit"], f"--card.license was renamed --export.license: {MOVED_WHY}"),
    (["--model.export_dir=null"], f"--model.export_dir was renamed --export.dirpath: {MOVED_WHY}"),
    (["--model.init_args.export_dir=out"], f"--model.init_args.export_dir was renamed --export.dirpath: {MOVED_WHY}"),
    ("card:\n  title: Mine\n", f"{{file}}: key 'card' at the top level was renamed 'export': {MOVED_WHY}"),
    ("model:\n  init_args:\n    export_dir: null\n",
     f"{{file}}: key 'export_dir' under model.init_args was renamed 'export.dirpath' (at the top level): {MOVED_WHY}"),
], ids=["card_flag", "card_flag_space", "export_dir_short", "export_dir", "card_key", "export_dir_key"])
def test_the_export_options_of_earlier_versions_are_refused_with_their_new_names(capsys, tmp_path, args, message):
    if isinstance(args, str):
        (tmp_path / "old.yaml").write_text(args)
        args, message = ["--config", str(tmp_path / "old.yaml")], message.format(file=tmp_path / "old.yaml")
    assert fails(capsys, "--config", TEXT, *args) == message


@pytest.mark.parametrize("args, message", [
    (["--model.max_nonfinite_steps=3"],
     f"--model.max_nonfinite_steps was renamed --max_nonfinite_steps: {NONFINITE_WHY}"),
    (["--model.init_args.max_nonfinite_steps", "3"],
     f"--model.init_args.max_nonfinite_steps was renamed --max_nonfinite_steps: {NONFINITE_WHY}"),
    ("model:\n  init_args:\n    max_nonfinite_steps: 3\n",
     f"{{file}}: key 'max_nonfinite_steps' under model.init_args was renamed 'max_nonfinite_steps' (at the top level): "
     f"{NONFINITE_WHY}"),
], ids=["flag", "flag_space", "key"])
def test_the_model_s_nonfinite_limit_of_earlier_versions_is_refused_with_its_new_name(capsys, tmp_path, args, message):
    test_the_export_options_of_earlier_versions_are_refused_with_their_new_names(capsys, tmp_path, args, message)


def test_the_nonfinite_limit_is_a_top_level_option(capsys):
    assert printed_config(capsys, "--config", TEXT, "--max_nonfinite_steps=3")["max_nonfinite_steps"] == 3
    assert "max_nonfinite_steps" not in printed_config(capsys, "--config", TEXT)["model"]["init_args"]


def test_the_new_export_flags_named_are_accepted(capsys):
    config = printed_config(capsys, "--config", TEXT, "--export.dirpath=out", "--export.title=Mine",
                            "--export.model_id=me/mine", "--export.language=[de]", "--export.license=mit",
                            "--export.usage_images=[a.png, https://example.com/b.png]")
    assert config["export"] == {"dirpath": "out", "title": "Mine", "model_id": "me/mine", "language": ["de"],
                                "license": "mit", "usage_images": ["a.png", "https://example.com/b.png"],
                                "adapters": "merged"}


def test_print_config_still_works_and_has_no_optimizer(capsys):
    config = printed_config(capsys, "--config", TEXT)
    assert config["model"]["init_args"]["encoder"]["init_args"]["pooling"] == "mean"
    assert "optimizer" not in config and "lr_scheduler" not in config


def test_a_bug_keeps_its_traceback():
    """A constructor failing for a reason other than a litembed ValueError is not bad input: no short message."""
    try:
        try:
            {}["missing"]
        except KeyError as bug:
            raise ValueError("Does not validate against any of the Union subtypes") from bug
    except ValueError as err:
        assert constructor_error(err, {}) is None


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory) -> str:
    """A checkpoint of a few CLIP steps (a tiny random CLIP), as train.py fit writes them."""
    from test_predict import clip_args, fit_checkpoint

    return fit_checkpoint(tmp_path_factory.mktemp("clip-fit"), clip_args())[1]


@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_a_ckpt_path_that_is_not_a_checkpoint_is_named_before_anything_runs(capsys, tmp_path, clip_checkpoint,
                                                                             subcommand):
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    assert fails(capsys, "--config", TEXT, "--ckpt_path", str(notes), subcommand=subcommand) == (
        f"--ckpt_path {notes} is not a checkpoint (12 bytes, not the zip archive torch.save writes); pass <run folder>/"
        f"checkpoints/last.ckpt or the run folder of a train.py fit run"
        + (", or drop --ckpt_path to start a new run" if subcommand == "fit" else ""))
    cut = tmp_path / "cut.ckpt"  # a copy cut short: a full disk, a killed copy
    data = open(clip_checkpoint, "rb").read()
    cut.write_bytes(data[:len(data) // 2])
    message = fails(capsys, "--config", TEXT, "--ckpt_path", str(cut), subcommand=subcommand)
    assert message.startswith(f"--ckpt_path {cut} is truncated or corrupt ({len(data) // 2:,} bytes: ")
    assert "use an intact copy, or pass <run folder>/checkpoints/last.ckpt" in message
    pickled = tmp_path / "model.pt"  # torch.save of Python objects: torch would advise loading with weights_only=False
    torch.save(argparse.Namespace(weights=torch.ones(2)), pickled)
    assert fails(capsys, "--config", TEXT, "--ckpt_path", str(pickled), subcommand=subcommand).startswith(
        f"--ckpt_path {pickled} is not a checkpoint train.py wrote: it holds Python objects that loading would have to "
        f"run, not only tensors and plain values; pass <run folder>/checkpoints/last.ckpt")
    weights = tmp_path / "weights.pt"
    torch.save({"encoder.weight": torch.ones(2)}, weights)
    assert fails(capsys, "--config", TEXT, "--ckpt_path", str(weights), subcommand=subcommand).startswith(
        f"--ckpt_path {weights} is not a Lightning checkpoint (a torch file without a state_dict); pass <run folder>/")
    assert fails(capsys, "--config", TEXT, "--ckpt_path", clip_checkpoint, subcommand=subcommand) == (
        f"--ckpt_path {clip_checkpoint} is a checkpoint of lightning_modules.clip.CLIPEmbeddingModule while the recipe "
        f"builds lightning_modules.text.TextEmbeddingModule (--model); pass a checkpoint of a TextEmbeddingModule run, "
        f"or the recipe that trained this one")
    assert not (tmp_path / "runs").exists()  # refused before the run folder


def test_a_ckpt_path_of_the_recipes_model_passes_the_check(clip_checkpoint):
    from test_predict import clip_args

    cli_main(train_args(*clip_args(), "--ckpt_path", clip_checkpoint, "--trainer.logger=false", subcommand="validate"))


def test_a_save_dir_that_cannot_hold_the_run_folder_is_refused_at_start_up(capsys, tmp_path):
    (tmp_path / "afile").write_text("")  # a folder below a file: not writable even for root, unlike a chmod
    save_dir = tmp_path / "afile" / "runs"
    message = fails(capsys, "--config", TEXT, f"--trainer.logger.init_args.save_dir={save_dir}", fast_dev_run=False)
    assert message == (f"--trainer.logger.init_args.save_dir {save_dir}: cannot write the run folder there (Not a "
                       f"directory: {save_dir}); pass a folder you can write to")
    config = printed_config(capsys, "--config", TEXT, f"--trainer.logger.init_args.save_dir={tmp_path}")
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path)
