"""LiT-style training (image tower locked) on the CLIP demo recipe: litembed with the tower cached, litembed
recomputing it every step, and sentence-transformers' trainer with the same tower frozen.

Each run is a fresh process on the same work: the recipe's random-init CLIP, 2,500 training pairs of the built-in
shapes, batches of 64, the recipe's optimiser and schedule, CPU fp32. The images are files as in a real dataset: the
shapes written as COCO-size JPEGs (640×480, ~100 KB; ``bench/fits.py``) in an imagefolder, which each run reads and
the processor resizes to the model's 64 px; ``--images shapes`` trains on the built-in 64 px images instead (nothing
to decode). "Recomputed" (``train.py fit --config
configs/demo/clip.yaml --model.init_args.lock_image true --model.init_args.cache_locked_image_tower false
--data.init_args.preprocess_cache_gb 0``) decodes, preprocesses and embeds every image of every batch with the frozen
tower, as ST's trainer and open_clip's
``--lock-image`` do; "cached" (``… true``) embeds each distinct image once. "st" is bench/st_clip.py: ST 6.2's
``SentenceTransformerTrainer`` on the same rows with the same hyperparameters, the vision tower and projection frozen
(its docstring lists them). Cached and recomputed log the same losses (tests/test_tower_cache.py proves it bit for bit;
the table checks it).

All three only train, since ST's run has no evaluator: litembed runs with ``--trainer.limit_val_batches 0
--model.init_args.evaluate_before_training false`` (no evaluation), ``--trainer.enable_checkpointing false
--trainer.callbacks []`` (no checkpoint: the recipe's ModelCheckpoint monitors a metric no longer logged) and
``--export.dirpath null`` (no export), ST with ``eval_strategy="no", save_strategy="no"``. Whole-process
time is then start-up, data generation and training alike (cached also embeds the 500 held-out validation images into
its table: the datamodule still carves them). Training pairs/s is the median of the logged rates of the
last 20 steps (litembed's ``train/samples_per_s``; st_clip.py measures ST's the same way); the loss column is the
mean of the losses logged (every 10th step's), alike in all three: ST's is close to litembed's, not bit-equal (the
same initial weights and batches, as litembed's no-duplicates sampler forms ST's; other kernels and reductions).

The runs alternate recomputed, cached, st… after one uncounted warm-up of each (1 epoch); figures are medians over
the rounds, each ratio the median of the rounds' ratios. The ST model directory is written once, before the runs.

    python bench/locked_tower.py                 # 3 epochs, 2 rounds, COCO-size JPEG files
    python bench/locked_tower.py --images shapes # the built-in 64 px images
    python bench/locked_tower.py --epochs 15 --rounds 1
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import fits  # noqa: E402
from bench.st_clip import build_model  # noqa: E402

RUNS = ("recomputed", "cached", "st")
TRAIN_ONLY = ["--trainer.limit_val_batches", "0", "--model.init_args.evaluate_before_training", "false",
              "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
              "--export.dirpath", "null"]


def fit(run: str, epochs: int, out: str, st_model: str, dataset: str | None) -> dict:
    """One fresh process of ``run``: its whole-process seconds, median training pairs/s and losses."""
    data = ["--data.init_args.dataset", dataset] if dataset else []
    if run != "st":
        return fits.fit(["--config", "configs/demo/clip.yaml", *data, "--model.init_args.lock_image", "true",
                         "--model.init_args.cache_locked_image_tower", str(run == "cached").lower(),
                         *(["--data.init_args.preprocess_cache_gb", "0"] if run == "recomputed" else []),
                         *TRAIN_ONLY], epochs, out)
    command = [sys.executable, os.path.join(fits.ROOT, "bench", "st_clip.py"), st_model, "--epochs", str(epochs),
               *(["--dataset", dataset] if dataset else [])]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=fits.ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"st failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "pairs_per_s": result["pairs_per_s"], "losses": result["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", choices=["jpeg", "shapes"], default="jpeg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        st_model = os.path.join(tmp, "st-model")
        build_model(st_model)
        dataset = None
        if args.images == "jpeg":
            dataset = os.path.join(tmp, "images")
            fits.coco_size_imagefolder(dataset, 3000)
        rows = fits.alternate({run: functools.partial(fit, run, st_model=st_model, dataset=dataset) for run in RUNS},
                              args.epochs, args.rounds, tmp)
    print(f"\nCLIP demo recipe on {args.images} images, image tower locked, training only: {args.epochs} epochs, "
          f"{args.rounds} rounds, medians")
    print("| run | whole process (s) | training pairs/s | mean logged train loss |")
    print("|---|--:|--:|--:|")
    for run, runs in rows.items():
        print(f"| {run} | {statistics.median(r['seconds'] for r in runs):.1f} | "
              f"{statistics.median(r['pairs_per_s'] for r in runs):.1f} | {statistics.mean(runs[0]['losses']):.3f} |")
    for a, b in (("cached", "recomputed"), ("cached", "st"), ("recomputed", "st")):
        print(f"{a} / {b}: {fits.ratio(rows, a, b, 'seconds'):.2f}× whole process, "
              f"{fits.ratio(rows, a, b, 'pairs_per_s'):.2f}× training pairs/s")
    print(f"cached and recomputed logged the same losses: "
          f"{all(a['losses'] == b['losses'] for a, b in zip(rows['recomputed'], rows['cached']))}")


if __name__ == "__main__":
    main()
