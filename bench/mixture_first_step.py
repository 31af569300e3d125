"""Time to first step and host memory of a streamed mixture: ``train.py fit`` of the bge seed recipe (tiny random-init
model) on 10 streamed sources of 100,000 QA pairs each (``--data.init_args.sources``, ``--data.init_args.streaming
true``), against the same recipe streaming 1 source of 1,000 pairs, so that imports and model loading cancel out.

Each source is a folder of its own (train.jsonl, plus validation.jsonl of 1,000 pairs, which setup reads whole as it
does for one source). Measured at the first training batch and at batch 100 (by then proportional sampling has drawn
every one of 10 equal sources with probability > 0.999, so every source's shuffle buffer and window are filled):
seconds since the process started, and the process's peak RSS (VmHWM; ``num_workers 0``: the whole set-up runs in it),
medians of ``--repeat`` runs. At batch 100 the times differ by the steps trained (the baseline's epoch ends at batch
31): compare memory there, time at the first batch.

    python bench/mixture_first_step.py                       # 10 × 100k against 1 × 1k
    python bench/mixture_first_step.py --sources 3 --rows 20000
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from first_step import command, models, probe, text_data  # noqa: E402 (bench/ on the path)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--rows", type=int, default=100_000, help="training pairs per source")
    p.add_argument("--baseline-rows", type=int, default=1000, help="pairs of the one-source baseline")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the medians are printed")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "litembed-first-step"))
    return p.parse_args()


def source_dirs(root: str, rows: int, count: int) -> list[str]:
    """``count`` folders of their own, each holding (links to) the same ``rows`` pairs and validation file."""
    data, _ = text_data(root, rows)
    dirs = []
    for k in range(count):
        directory = f"{root}/text-{rows}-source-{k}"
        os.makedirs(directory, exist_ok=True)
        for name in ("train.jsonl", "validation.jsonl"):
            if not os.path.exists(f"{directory}/{name}"):
                os.symlink(f"{data}/{name}", f"{directory}/{name}")
        dirs.append(directory)
    return dirs


def median_of(runs: int, args: list[str], at: int) -> dict:
    results = [measure(args, at) for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in ("seconds", "peak_rss_mb")}


def measure(args: list[str], at: int) -> dict:
    result = probe(args, ROOT, at)
    if "error" in result:
        raise SystemExit(result["error"])
    return result


def main() -> None:
    a = parse()
    os.makedirs(a.data_dir, exist_ok=True)
    bert, _ = models(a.data_dir)
    baseline_data, _ = text_data(a.data_dir, a.baseline_rows)
    one = [*command("text", "stream", baseline_data, bert, "", ROOT), "--data.init_args.batch_size=32"]
    dirs = source_dirs(a.data_dir, a.rows, a.sources)
    sources = {f"s{k}": {"dataset": d} for k, d in enumerate(dirs)}
    mixture = [*command("text", "stream", dirs[0], bert, "", ROOT, monitor="val/mean_dim_64_cosine_map@100"),
               "--data.init_args.batch_size=32",
               f"--data.init_args.sources={json.dumps(sources)}"]
    print("| run | at batch | time (s) | Δ (s) | peak RSS (MB) | Δ (MB) |\n|---|---:|---:|---:|---:|---:|")
    for at in (0, 100):
        base_at = min(at, a.baseline_rows // 32 - 1)  # the baseline's epoch may be shorter
        base, mix = median_of(a.repeat, one, base_at), median_of(a.repeat, mixture, at)
        for name, batch, r in ((f"1 source × {a.baseline_rows:,} pairs", base_at, base),
                               (f"{a.sources} sources × {a.rows:,} pairs", at, mix)):
            print(f"| {name} | {batch + 1} | {r['seconds']:.1f} | {r['seconds'] - base['seconds']:+.1f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - base['peak_rss_mb']:+.0f} |", flush=True)

if __name__ == "__main__":
    main()
