"""One timed ``train.py fit`` process of a CLIP demo benchmark, what its metrics.csv says, and the demo's data as
COCO-size JPEG files."""

import csv
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from metrics.keys import PRIMARY_METRIC, metric_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NDCG = metric_key("val", "shapes-eval", None, PRIMARY_METRIC)  # the CLIP demo's caption→image nDCG@10


def fit(flags: list[str], epochs: int, out: str) -> dict:
    """Run ``train.py fit`` with ``flags`` for ``epochs`` (no progress bar, no test, logs under ``out``): the whole
    process's seconds, the median logged training pairs/s, the logged training losses and the last caption→image
    nDCG@10 (None without evaluation)."""
    command = [sys.executable, os.path.join(ROOT, "train.py"), "fit", *flags, "--trainer.max_epochs", str(epochs),
               "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", out,
               "--test_after_fit", "false"]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        sys.exit(run.stderr[-3000:])
    (path,) = glob.glob(os.path.join(out, "**", "metrics.csv"), recursive=True)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["train/samples_per_s"]) for r in rows if r.get("train/samples_per_s")]
    evaluations = [r[NDCG] for r in rows if r.get(NDCG)]
    return {"seconds": seconds, "pairs_per_s": statistics.median(rates), "ndcg": evaluations[-1] if evaluations else None,
            "losses": [float(r["train/loss"]) for r in rows if r.get("train/loss")]}


def coco_size_imagefolder(root: str, rows: int, seed: int = 42) -> None:
    """The built-in shapes (the demo's captions) as 640×480 JPEG files in an imagefolder with ``metadata.jsonl``."""
    from datamodules.shapes import make_shapes

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.jsonl"), "w") as meta:
        for i, row in enumerate(make_shapes(rows, seed=seed, image_size=240)):
            pixels = np.asarray(row["image"].resize((640, 480), Image.BILINEAR), dtype=np.float32)
            pixels += rng.normal(0, 6, pixels.shape)  # grain: what makes a photo's JPEG large and slow to decode
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
            with open(os.path.join(root, f"{i:05d}.jpg"), "wb") as f:
                f.write(buffer.getvalue())
            meta.write(json.dumps({"file_name": f"{i:05d}.jpg", "caption": row["caption"]}) + "\n")


def alternate(runs: dict, epochs: int, rounds: int, tmp: str) -> dict[str, list[dict]]:
    """Run each of ``runs`` (name → ``run(epochs, out)`` returning ``fit``'s dict) once for 1 uncounted epoch, then
    ``rounds`` times in turn for ``epochs``, printing each result as it ends: every run's results, by name."""
    for name, run in runs.items():
        run(1, os.path.join(tmp, f"warm-{name}"))
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            results[name].append(run(epochs, os.path.join(tmp, f"{name}-{r}")))
            last = results[name][-1]
            ndcg = "" if last.get("ndcg") is None else f", nDCG@10 {last['ndcg']}"
            print(f"round {r + 1} {name}: {last['seconds']:.1f} s, {last['pairs_per_s']:.1f} pairs/s{ndcg}", flush=True)
    return results


def ratio(results: dict[str, list[dict]], a: str, b: str, key: str) -> float:
    """Median over rounds of run ``a``'s figure over run ``b``'s (seconds: b over a, so that > 1 means a is faster)."""
    pairs = zip(results[a], results[b])
    return statistics.median(y[key] / x[key] if key == "seconds" else x[key] / y[key] for x, y in pairs)
