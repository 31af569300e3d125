"""Counts host-device synchronisations per training step on CUDA and says whose code made each one.

Runs a few bf16 training steps of a text recipe (random-init BERT-base, Matryoshka over 4 dims, fused AdamW,
gradient clipping) through Lightning with ``torch.cuda.set_sync_debug_mode("warn")`` switched on after warm-up,
and attributes each synchronising call to the innermost frame outside torch: litembed, lightning or transformers.

    python bench/sync_probe.py --tokenizer <dir with tokenizer files>
"""

import argparse
import collections
import os
import sys
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from bench.text_speed import BERT_BASE  # noqa: E402
from datamodules.stdlib_pairs import stdlib_docstring_pairs  # noqa: E402
from train import cli_main  # noqa: E402


def origin() -> str:
    """The innermost stack frame that is not torch's own: who asked for the synchronising operation."""
    stack = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename and "sync_probe" not in f.filename]
    if not stack:
        return "autograd engine (backward pass, no Python frame)"
    torch_frame = f"{os.path.basename(stack[-1].filename)}:{stack[-1].lineno} {stack[-1].name}"
    for frame in reversed(stack):
        path = frame.filename
        if "site-packages/torch/" in path:
            continue
        package = ("litembed" if path.startswith(ROOT) else "lightning" if "/lightning" in path
                   else "transformers" if "/transformers/" in path else os.path.basename(path))
        where = os.path.relpath(path, ROOT) if path.startswith(ROOT) else os.path.basename(path)
        return f"{package}: {where}:{frame.lineno} {frame.name} (via {torch_frame})"
    return f"torch: {torch_frame}"


class Probe(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.counts, self.steps = warmup, collections.Counter(), 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.steps += 1
        if trainer.global_step == trainer.max_steps:  # count training steps only, not the teardown after them
            torch.cuda.set_sync_debug_mode(0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    import tempfile

    from transformers import AutoTokenizer, BertConfig, BertModel

    with tempfile.TemporaryDirectory() as root:
        BertModel(BertConfig(**BERT_BASE)).save_pretrained(f"{root}/model")
        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(f"{root}/model")
        stdlib_docstring_pairs(seed=0).select(range(32 * args.steps)).to_json(f"{root}/train.jsonl")
        probe = Probe(warmup=3)
        cli = cli_main([
            "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed",
            f"--trainer.max_steps={args.steps}", "--trainer.gradient_clip_val=1.0", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--model=lightning_modules.text.TextEmbeddingModule",
            "--model.encoder=lightning_modules.text_encoder.TextEncoder", f"--model.encoder.model_name_or_path={root}/model",
            "--model.encoder.max_length=256", "--export.dirpath=null", "--model.evaluate_before_training=false",
            "--model.loss=losses.MatryoshkaLoss", "--model.loss.loss=losses.MultipleNegativesRankingLoss",
            "--model.loss.dims=[768, 384, 256, 128]",
            "--data=datamodules.pairs.PairDataModule", f"--data.dataset={root}/train.jsonl", "--data.val_split=null",
            "--data.batch_size=32",
        ], run=False)
        cli.trainer.callbacks.append(probe)
        seen = collections.Counter()
        original = warnings.showwarning

        def record(message, category, *a, **k):
            if "synchronizing" in str(message).lower() or "sync" in str(message).lower():
                seen[origin()] += 1
            else:
                original(message, category, *a, **k)

        warnings.showwarning = record
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        torch.cuda.set_sync_debug_mode(0)
    print(f"\n{torch.cuda.get_device_name()}: host-device synchronisations in {probe.steps} training steps after warm-up")
    for where, n in seen.most_common():
        print(f"{n / max(probe.steps, 1):6.1f} per step  {where}")
    if not seen:
        print("none")


if __name__ == "__main__":
    main()
