"""The CLIP seed recipe's architecture (ViT-L/14, random init: no weights download) trained in bf16 on a GPU: training
pairs/s, model FLOP utilisation (MFU) and peak memory at each ``--batch-size``, against sentence-transformers' trainer
at equal batch (``--reference st``).

litembed runs configs/clip_vit_l14_coco.yaml unchanged but for the model (random init from CLIP ViT-L/14's config),
the data (built-in shapes at 224 px), the batch size and the number of steps. sentence-transformers (ST) trains the
same initial weights (seeded as ``train.py fit`` seeds them, saved with litembed's exporter) on the same training
pairs (the datamodule's own split, as bench/st_clip.py takes it) with the recipe's settings, as the seed card's script
did: ``SentenceTransformerTrainer``, ``MultipleNegativesRankingLoss`` (scale 20, cosine), no-duplicates batches, bf16,
fused AdamW (lr 2e-5, no weight decay), linear schedule after 10 % warm-up, gradient norm clipped at 1; its DataLoader
workers are ``--st-workers`` (the card ran with 0: every image is decoded in the training process).

Pairs/s is measured from the end of optimizer step ``--warmup-steps`` to the end of step ``--steps`` (the device
synchronised at both ends): CUDA start-up, cuBLAS/cuDNN autotuning, allocator growth and DataLoader start-up fall in
the warm-up steps. The old figure (the whole ``trainer.fit`` call, first step included) is printed beside it.

Model FLOPs per training pair (MFU's numerator, as PaLM counts it: the backward pass costs twice the forward; the
recomputation of gradient checkpointing is not counted)::

    F_pair  = 3 · (F_image + F_text)
    F_tower(L, d, f, T) = 2 · L · (4·d² + 2·d·f) · T        matmuls: q, k, v, o and the MLP's two, on every token
                        + 2 · 2 · L · T² · d                 attention: QKᵀ and (attention weights)·V, every layer
    F_image = F_tower(24, 1024, 4096, 257)                   T = (224/14)² patches + 1 class token = 257
            + 2 · (3·14²·1024) · 256                         the patch embedding, a matmul on the 256 patches
            + 2 · 1024 · 768                                 the projection, on the pooled token
    F_text  = F_tower(12, 768, 3072, T_text) + 2 · 768 · 768

with ``T_text`` the padded caption length of each batch (the HF processor pads to the batch's longest caption, at
most 77; both trainers pad alike), averaged over the measured steps. For ViT-L/14, F_image = 162.03 GFLOP and
F_text = 13.30 GFLOP at 77 tokens, so F_pair = 525.98 GFLOP at 77 tokens (494.26 GFLOP at 16). Left out (< 0.1 %):
embedding lookups, norms, softmax, activations, the loss's B × B similarities. MFU = pairs/s · F_pair / peak, with
the peak ``--peak-tflops`` (H100 SXM bf16 dense: 989 TFLOP/s).

    python bench/clip_seed_gpu.py --steps 20                                     # batch 16 + a retrieval evaluation
    python bench/clip_seed_gpu.py --batch-size 16,64,256 --reference st --st-workers 0,4 --no-eval
    python bench/clip_seed_gpu.py --tiny --batch-size 4,8 --steps 6 --warmup-steps 2 --reference st   # CPU smoke run
"""

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from datamodules.batches import FEATURES  # noqa: E402
from train import cli_main  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "clip_vit_l14_coco.yaml")
VIT_L_14 = {  # openai/clip-vit-large-patch14's CLIPConfig
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "max_position_embeddings": 77, "vocab_size": 49408},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                      "image_size": 224, "patch_size": 14},
}
VAL_ROWS = 256  # the validation carve of the built-in shapes (the retrieval evaluation's captions and images)


def tower_flops(layers: int, width: int, intermediate: int, tokens: float) -> float:
    """Forward FLOPs of a transformer's blocks: the six matmuls on every token plus QKᵀ and attention × V."""
    return 2 * layers * (4 * width * width + 2 * width * intermediate) * tokens + 4 * layers * tokens ** 2 * width


def pair_flops(config: dict, text_tokens: float) -> dict[str, float]:
    """Model FLOPs of one training pair (forward + backward = 3 × forward) for a HF ``CLIPConfig`` dict.

    Args:
        config: ``CLIPConfig`` kwargs with ``vision_config``, ``text_config`` and ``projection_dim``.
        text_tokens: the caption's padded length.

    Returns:
        ``image`` and ``text`` (forward FLOPs of each tower) and ``pair`` (3 × their sum).
    """
    v, t, projection = config["vision_config"], config["text_config"], config["projection_dim"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    image = (tower_flops(v["num_hidden_layers"], v["hidden_size"], v["intermediate_size"], patches + 1)
             + 2 * 3 * v["patch_size"] ** 2 * v["hidden_size"] * patches + 2 * v["hidden_size"] * projection)
    text = (tower_flops(t["num_hidden_layers"], t["hidden_size"], t["intermediate_size"], text_tokens)
            + 2 * t["hidden_size"] * projection)
    return {"image": image, "text": text, "pair": 3 * (image + text)}


def now() -> float:
    """The wall clock once the device has finished the work queued so far."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None


def caption_length(columns: list[dict]) -> int:
    """The padded token length of the batch's caption column (the one holding ``input_ids``)."""
    for features in columns:
        if "input_ids" in features:
            return features["input_ids"].shape[1]
    raise RuntimeError(f"no caption column (input_ids) among the batch's features {[sorted(f) for f in columns]}")


class Window:
    """The measured window of one run: the clock at the end of step ``warmup`` and of step ``steps``, and the padded
    caption length of every step in between."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: float | None = None
        self.end: float | None = None
        self.lengths: list[int] = []

    def step_ended(self, step: int) -> None:
        if step == self.warmup:
            self.start = now()
        elif step == self.steps:
            self.end = now()

    def figures(self, batch_size: int, config: dict, peak_tflops: float) -> dict:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the run ended before step {self.steps}: it had fewer batches than --steps")
        measured = self.lengths[self.warmup:self.steps]
        rate = (self.steps - self.warmup) * batch_size / (self.end - self.start)
        flops = statistics.mean(pair_flops(config, n)["pair"] for n in measured)
        return {"pairs_per_s": rate, "text_tokens": statistics.mean(measured), "gflop_per_pair": flops / 1e9,
                "mfu": rate * flops / (peak_tflops * 1e12), "peak_gib": peak_gib()}


class LitWindow(Callback):
    """``Window`` fed by Lightning's hooks (the global step is the number of optimizer steps done)."""

    def __init__(self, window: Window) -> None:
        self.window = window

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.window.lengths.append(caption_length(batch[FEATURES]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.window.step_ended(trainer.global_step)


def data_overrides(args, batch_size: int) -> dict:
    """The recipe's ``data.init_args`` changes: built-in shapes at the model's image size, enough rows for ``--steps``
    batches, a validation carve, no test split, no row caps."""
    # the train stream is 8 shards read by up to 4 workers: each worker needs at least a batch of rows; 2 batches
    # to spare keep both trainers' no-duplicates batching (shapes captions repeat past 3,456 rows) within one epoch
    return {"dataset": "builtin:shapes", "image_size": args.config["vision_config"]["image_size"],
            "image_id_column": "image_id", "builtin_rows": batch_size * max(args.steps + 2, 8) + VAL_ROWS,
            "val_size": VAL_ROWS, "test_split": None, "batch_size": batch_size, "max_train_rows": None,
            "max_eval_rows": None}


def recipe_config(args) -> str:
    """The recipe with the model swapped for a random init of ``args.config``, written to a temporary YAML file."""
    with open(RECIPE) as f:
        recipe = yaml.safe_load(f)
    recipe["model"]["init_args"]["encoder"]["init_args"] = {"config": args.config}  # random init, same architecture
    if args.gradient_checkpointing:
        recipe["model"]["init_args"]["gradient_checkpointing"] = True
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(recipe, config)
    config.close()
    return config.name


def run_litembed(args, batch_size: int):
    """Fit the recipe for ``--steps`` steps at ``batch_size``. Returns the figures and the CLI (for an evaluation)."""
    data = data_overrides(args, batch_size)
    cli = cli_main([
        "--config", args.recipe_file,
        "--model.init_args.evaluate_before_training=false", "--export.dirpath=null",
        *[f"--data.init_args.{k}={'null' if v is None else v}" for k, v in data.items()],
        *([f"--data.init_args.num_workers={args.workers}"] if args.workers is not None else []),
        f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ], run=False)
    window = Window(args.warmup_steps, args.steps)
    cli.trainer.callbacks.append(LitWindow(window))
    reset_memory()
    start = now()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    whole = args.steps * batch_size / (now() - start)
    figures = {**window.figures(batch_size, args.config, args.peak_tflops), "whole_fit_pairs_per_s": whole}
    return figures, cli


def evaluate(cli) -> str:
    """One retrieval evaluation of the fitted model on the validation carve, both directions; what it printed."""
    trainer, module = cli.trainer, cli.model
    trainer.limit_val_batches = 1.0
    collected = {}
    original = module._compute_retrieval

    def spy(stage):  # record where the metrics ran
        collected.update({name: c.compute().device for name, c in module._collectors.items()})
        return original(stage)

    module._compute_retrieval = spy
    start = time.perf_counter()
    metrics = trainer.validate(module, datamodule=cli.datamodule, verbose=False)[0]
    seconds = time.perf_counter() - start
    key = module.main_metric("val")
    return (f"eval: {VAL_ROWS} captions + {VAL_ROWS} images, both directions, {seconds:.1f} s; embeddings on "
            f"{set(map(str, collected.values()))}; {key} {metrics[key]:.4f}")


def build_st_model(args, directory: str) -> None:
    """Save the random init ``train.py fit`` starts from (seeded alike) where ``SentenceTransformer`` loads it."""
    from lightning_modules.clip_backends import TransformersClip

    with open(RECIPE) as f:
        seed = yaml.safe_load(f)["seed_everything"]
    torch.manual_seed(seed)
    TransformersClip(config=args.config).save(directory)


def st_training_pairs(args, batch_size: int):
    """The training split litembed fits on at ``batch_size`` (image, caption), via bench/st_clip.py."""
    from bench.st_clip import training_pairs

    with open(RECIPE) as f:
        data = yaml.safe_load(f)["data"]["init_args"]
    return training_pairs({**data, **data_overrides(args, batch_size)})


def run_st(args, model_dir: str, pairs, batch_size: int, workers: int) -> dict:
    """Train the saved model with ST's trainer for ``--steps`` steps at ``batch_size``, as the seed card's script."""
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback

    window = Window(args.warmup_steps, args.steps)

    class CaptionLengths(MultipleNegativesRankingLoss):
        """ST's loss, noting each batch's padded caption length for the FLOP count."""

        def forward(self, sentence_features, labels):
            sentence_features = list(sentence_features)
            window.lengths.append(caption_length(sentence_features))
            return super().forward(sentence_features, labels)

    class StepClock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs) -> None:
            window.step_ended(state.global_step)

    with open(RECIPE) as f:
        recipe = yaml.safe_load(f)
    module, trainer_args = recipe["model"]["init_args"], recipe["trainer"]
    cuda = torch.cuda.is_available()
    reset_memory()
    model = SentenceTransformer(model_dir, device="cuda" if cuda else "cpu")
    loss = CaptionLengths(model, scale=module["loss"]["init_args"]["scale"])  # cosine similarity: ST's default
    with tempfile.TemporaryDirectory() as out:
        targs = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=args.steps,
            learning_rate=module["lr"], weight_decay=module["weight_decay"], adam_beta1=module["betas"][0],
            adam_beta2=module["betas"][1], adam_epsilon=module["eps"], lr_scheduler_type=module["lr_schedule"],
            warmup_steps=module["warmup_ratio"],  # transformers 5: a float below 1 is a ratio of all steps
            max_grad_norm=trainer_args["gradient_clip_val"], bf16=trainer_args["precision"].startswith("bf16"),
            optim="adamw_torch_fused", batch_sampler=BatchSamplers.NO_DUPLICATES, dataloader_num_workers=workers,
            gradient_checkpointing=args.gradient_checkpointing, use_cpu=not cuda, seed=recipe["seed_everything"],
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10 ** 6)
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=pairs, loss=loss,
                                             callbacks=[StepClock()])
        trainer.train()
    return window.figures(batch_size, args.config, args.peak_tflops)


def attempt(run, *run_args) -> dict:
    """``run(*run_args)``, or ``{"error": "out of memory"}`` when the device ran out (the next run still goes)."""
    try:
        return run(*run_args)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        reset_memory()


def describe(name: str, batch_size: int, f: dict) -> str:
    if "error" in f:
        return f"{name} batch {batch_size}: {f['error']}"
    peak = "" if f["peak_gib"] is None else f"; peak {f['peak_gib']:.1f} GiB"
    whole = f"; whole fit {f['whole_fit_pairs_per_s']:.1f}" if "whole_fit_pairs_per_s" in f else ""
    return (f"{name} batch {batch_size}: {f['pairs_per_s']:.1f} pairs/s after warm-up{whole}; "
            f"{f['text_tokens']:.1f} caption tokens, {f['gflop_per_pair']:.4g} GFLOP/pair, MFU {100 * f['mfu']:.1f} %"
            f"{peak}")


def table(results: list[tuple[int, str, dict]]) -> str:
    """Markdown rows: every run, with litembed's pairs/s over each ST run's at the same batch."""
    lines = ["| batch | trainer | pairs/s | litembed ÷ this | GFLOP/pair | MFU | peak GiB |", "|--:|---|--:|--:|--:|--:|--:|"]
    ours = {b: f for b, name, f in results if name == "litembed"}
    for batch, name, f in results:
        if "error" in f:
            lines.append(f"| {batch} | {name} | {f['error']} | | | | |")
            continue
        lit = ours.get(batch, {})
        ratio = f"{lit['pairs_per_s'] / f['pairs_per_s']:.2f}×" if name != "litembed" and "pairs_per_s" in lit else ""
        peak = "" if f["peak_gib"] is None else f"{f['peak_gib']:.1f}"
        lines.append(f"| {batch} | {name} | {f['pairs_per_s']:.1f} | {ratio} | {f['gflop_per_pair']:.4g} | "
                     f"{100 * f['mfu']:.1f} % | {peak} |")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", default="16", help="batch sizes, comma separated (each run is its own fit)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run, warm-up included")
    p.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of pairs/s")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--reference", choices=["none", "st"], default="none",
                   help="st: also train with sentence-transformers' trainer at each batch size")
    p.add_argument("--st-workers", default="0", help="ST DataLoader workers, comma separated (the seed card: 0)")
    p.add_argument("--workers", type=int, default=None, help="litembed DataLoader workers (default: the recipe's)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="litembed's --model.init_args.gradient_checkpointing (and ST's gradient_checkpointing)")
    p.add_argument("--no-eval", action="store_true", help="skip the retrieval evaluation after the first fit")
    p.add_argument("--tiny", action="store_true", help="a 2-layer CLIP at 32 px instead of ViT-L/14 (CPU smoke run)")
    args = p.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_size.split(",")]
    args.st_worker_counts = [int(w) for w in args.st_workers.split(",")]
    if not 0 < args.warmup_steps < args.steps:
        p.error(f"--warmup-steps must be between 1 and --steps - 1 ({args.steps - 1}), got {args.warmup_steps}")
    if args.tiny:
        from tests.tiny import TINY_HF_CLIP_CONFIG
        args.config = TINY_HF_CLIP_CONFIG
    else:
        args.config = VIT_L_14
    return args


def main() -> None:
    args = parse()
    args.recipe_file = recipe_config(args)
    results: list[tuple[int, str, dict]] = []
    header = evaluation = None
    with tempfile.TemporaryDirectory() as model_dir:
        if args.reference == "st":
            build_st_model(args, model_dir)
        for batch_size in args.batch_sizes:
            try:
                figures, cli = run_litembed(args, batch_size)
            except torch.OutOfMemoryError:
                figures, cli = {"error": "out of memory"}, None
            if cli is not None and header is None:
                optimizer = cli.trainer.optimizers[0]
                header = (f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; torch "
                          f"{torch.__version__}; precision {cli.trainer.precision}; fused AdamW: "
                          f"{optimizer.defaults.get('fused')}; params "
                          f"{sum(p.numel() for p in cli.model.parameters()) / 1e6:.0f} M; gradient checkpointing "
                          f"{args.gradient_checkpointing}; steps {args.steps} ({args.warmup_steps} warm-up); peak "
                          f"{args.peak_tflops:g} TFLOP/s")
                if not args.no_eval:
                    evaluation = evaluate(cli)
            del cli
            reset_memory()
            results.append((batch_size, "litembed", figures))
            print(describe("litembed", batch_size, figures), flush=True)
            if args.reference == "st":
                pairs = st_training_pairs(args, batch_size)
                for workers in args.st_worker_counts:
                    name = f"ST, {workers} workers"
                    results.append((batch_size, name, attempt(run_st, args, model_dir, pairs, batch_size, workers)))
                    print(describe(name, batch_size, results[-1][2]), flush=True)
    os.unlink(args.recipe_file)
    flops = pair_flops(args.config, args.config["text_config"]["max_position_embeddings"])
    print(f"\n{header or 'device: no fit reached its end'}")
    print(f"FLOPs per pair = 3 × (image {flops['image'] / 1e9:.5g} + text {flops['text'] / 1e9:.4g} GFLOP at "
          f"{args.config['text_config']['max_position_embeddings']} tokens) = {flops['pair'] / 1e9:.5g} GFLOP; "
          f"the table uses each run's padded caption length")
    print(table(results))
    if evaluation:
        print(evaluation)


if __name__ == "__main__":
    main()
