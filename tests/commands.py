"""One builder for ``train.py`` command lines, one way to run them as users do, one reader of what a run logs.

A test names its recipe and what it changes::

    args = train_args(*text_recipe(model_dir, data_dir), "--trainer.max_steps=2", save_dir=tmp_path)
    cli_main(args)                      # in this process
    run_train(args, cwd=tmp_path)       # a whole `python train.py fit …` process
    logged_rows(tmp_path)               # its metrics.csv

Importable as ``tests.commands`` without the tests' conftest.
"""

import csv
import glob
import json
import os
import subprocess
import sys

from tests.tiny import TINY_HF_CLIP_CONFIG, TINY_OPEN_CLIP_CFG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
# offline; the checkout importable from any working folder (tests.send_signal and tests.failing_io are callbacks and
# plugins a run names); no inherited warning filters: a test reads the warnings a run prints
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}, "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ROOT}
WALL_CLOCK = {"train/samples_per_s"}  # a rate measured on the clock: never equal between two runs
# for a run whose export no assertion reads: the export's card loads the model in a Python process of its own (seconds)
NO_EXPORT = "--export.dirpath=null"


def text_recipe(model_dir: str, data_dir: str) -> list[str]:
    """A text model (``model_dir``) on a pairs folder with a test split: Matryoshka over MNRL at dims 32 and 8."""
    return ["--model=lightning_modules.text.TextEmbeddingModule",
            "--model.encoder=lightning_modules.text_encoder.TextEncoder",
            f"--model.encoder.model_name_or_path={model_dir}", "--model.encoder.max_length=32", "--model.lr=1e-3",
            "--model.loss=losses.MatryoshkaLoss", "--model.loss.loss=losses.MultipleNegativesRankingLoss",
            "--model.loss.dims=[32, 8]", "--data=datamodules.pairs.PairDataModule", f"--data.dataset={data_dir}",
            "--data.test_split=test", "--data.batch_size=8", "--data.num_workers=0"]


def clip_recipe(backend: str = "transformers") -> list[str]:
    """A tiny random-init CLIP (``transformers`` or ``open_clip``) on the built-in shapes: 96 rows of 32 px, 32 of
    them for validation."""
    encoder = {"transformers": ["--model.encoder=lightning_modules.clip_backends.TransformersClip",
                                f"--model.encoder.config={json.dumps(TINY_HF_CLIP_CONFIG)}"],
               "open_clip": ["--model.encoder=lightning_modules.clip_backends.OpenClip",
                             f"--model.encoder.model_cfg={json.dumps(TINY_OPEN_CLIP_CFG)}"]}[backend]
    return ["--model=lightning_modules.clip.CLIPEmbeddingModule", *encoder, "--model.lr=1e-3",
            "--data=datamodules.image_captions.ImageCaptionDataModule", "--data.builtin_rows=96",
            "--data.image_size=32", "--data.val_size=32", "--data.batch_size=8", "--data.num_workers=0"]


def train_args(*flags: str, save_dir=None, subcommand: str | None = "fit") -> list[str]:
    """``subcommand`` (None: none, for ``cli_main(…, run=False)``), then seed 0 on the CPU for 1 epoch, every step
    logged, no progress bar, a CSVLogger into ``save_dir`` (when given), then ``flags`` (a recipe's, then the test's
    own). A ``--key=value`` flag whose key is already set replaces that flag where it stands; any other is appended,
    as is a flag given as two words (``--ckpt_path``, ``last``)."""
    base = ["--seed_everything=0", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger"]
    if save_dir is not None:
        base.append(f"--trainer.logger.save_dir={save_dir}")
    args: list[str] = [] if subcommand is None else [subcommand]
    where: dict[str, int] = {}
    for flag in [*base, *flags]:
        key = flag.split("=", 1)[0] if flag.startswith("--") and "=" in flag else None
        if key in where:
            args[where[key]] = flag
            continue
        if key is not None:
            where[key] = len(args)
        args.append(flag)
    return args


def train_command(args: list[str]) -> list[str]:
    """``python train.py *args`` with this interpreter."""
    return [sys.executable, TRAIN, *args]


def run_train(args: list[str], cwd=ROOT, returncode: int | None = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py *args`` as users do and return the finished process, having checked its exit code (unless
    ``returncode`` is None); a hang fails the test instead of blocking the suite."""
    done = subprocess.run(train_command(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if returncode is not None:
        assert done.returncode == returncode, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def logged_rows(folder) -> list[dict[str, str]]:
    """The rows of ``folder/metrics.csv``, or of the one metrics.csv below ``folder``."""
    path = os.path.join(folder, "metrics.csv")
    if not os.path.isfile(path):
        (path,) = glob.glob(os.path.join(folder, "**", "metrics.csv"), recursive=True)
    with open(path, newline="") as file:
        return list(csv.DictReader(file))
