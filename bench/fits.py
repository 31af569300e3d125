"""One timed ``train.py fit`` process of a CLIP demo benchmark, and what its metrics.csv says."""

import csv
import glob
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NDCG = "val/shapes-eval_cosine_ndcg@10"


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
