"""LiT-style training (image tower locked): the cached tower vs recomputing it every step, on the CLIP demo recipe.

Each run is a fresh ``python train.py fit --config configs/demo/clip.yaml --model.init_args.lock_image true``
process (the built-in shapes, 2,500 training pairs at 64 px, evaluation of 500 pairs after every epoch), alternating
recomputed, cached, recomputed, cached… after one uncounted warm-up pair; figures are medians, the ratio the median of
the rounds' ratios. "Recomputed" (``--model.init_args.cache_locked_image_tower false``) decodes, preprocesses and
embeds every image of every batch with the frozen tower, as sentence-transformers' trainer and open_clip's
``--lock-image`` do; "cached" embeds each distinct image once. Both log the same losses and metrics (tests/
test_tower_cache.py proves it bit for bit).

    python bench/locked_tower.py                 # 3 epochs, 2 rounds
    python bench/locked_tower.py --epochs 15 --rounds 1
"""

import argparse
import csv
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fit(cached: bool, epochs: int, out: str) -> dict:
    command = [sys.executable, os.path.join(ROOT, "train.py"), "fit", "--config", "configs/demo/clip.yaml",
               "--model.init_args.lock_image", "true", "--model.init_args.cache_locked_image_tower", str(cached).lower(),
               "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", out, "--test_after_fit", "false"]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        sys.exit(run.stderr[-3000:])
    (path,) = glob.glob(os.path.join(out, "**", "metrics.csv"), recursive=True)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["train/samples_per_s"]) for r in rows if r.get("train/samples_per_s")]
    final = [r for r in rows if r.get("val/shapes-eval_cosine_ndcg@10")][-1]["val/shapes-eval_cosine_ndcg@10"]
    return {"seconds": seconds, "pairs_per_s": statistics.median(rates), "ndcg": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fit(False, 1, os.path.join(tmp, "warm-recomputed"))
        fit(True, 1, os.path.join(tmp, "warm-cached"))
        rows = {"recomputed": [], "cached": []}
        for r in range(args.rounds):
            for name in rows:
                rows[name].append(fit(name == "cached", args.epochs, os.path.join(tmp, f"{name}-{r}")))
                print(f"round {r + 1} {name}: {rows[name][-1]}", flush=True)
    print(f"\nCLIP demo recipe, image tower locked, {args.epochs} epochs, {args.rounds} rounds (medians)")
    print("| run | whole process (s) | training pairs/s | final caption→image nDCG@10 |")
    print("|---|--:|--:|--:|")
    for name, runs in rows.items():
        print(f"| {name} | {statistics.median(r['seconds'] for r in runs):.1f} | "
              f"{statistics.median(r['pairs_per_s'] for r in runs):.1f} | {runs[0]['ndcg']} |")
    whole = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(rows["recomputed"], rows["cached"]))
    rate = statistics.median(b["pairs_per_s"] / a["pairs_per_s"] for a, b in zip(rows["recomputed"], rows["cached"]))
    print(f"cached / recomputed: {whole:.2f}× whole process, {rate:.2f}× training pairs/s; same metrics: "
          f"{all(a['ndcg'] == b['ndcg'] for a, b in zip(rows['recomputed'], rows['cached']))}")


if __name__ == "__main__":
    main()
