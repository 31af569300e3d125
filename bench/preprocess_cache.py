"""Multi-epoch CLIP training with preprocessed images cached vs preprocessed every epoch, on the CLIP demo recipe.

Each run is a fresh ``python train.py fit --config configs/demo/clip.yaml`` process (both towers trained, 2,500
training pairs, evaluation of 500 pairs after every epoch) on image files: by default the built-in shapes written as
COCO-size JPEGs (640×480, quality 90, photo grain: ~100 KB, the decoding work of COCO's photos) in an imagefolder
with ``metadata.jsonl`` (``--images shapes``: the built-in 64 px images, which cost next to nothing to decode). The
processor resizes them to the model's 64 px. Runs alternate recomputed, cached, recomputed, cached… after one
uncounted warm-up pair; figures are medians, the ratio the median of the rounds' ratios. "Recomputed" (``--data.init_args.preprocess_cache_gb 0``) decodes and preprocesses every image
of every batch and every evaluation, as sentence-transformers' trainer and open_clip do; "cached" does it once per
image. Both log the same losses and metrics (tests/test_pixel_cache.py proves it bit for bit).

    python bench/preprocess_cache.py                       # 3 epochs, 2 rounds, no DataLoader worker (the CPU default)
    python bench/preprocess_cache.py --workers 1 --epochs 6
"""

import argparse
import functools
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fits import alternate, coco_size_imagefolder, fit, ratio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (--data.init_args.num_workers)")
    parser.add_argument("--images", choices=["jpeg", "shapes"], default="jpeg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--config", "configs/demo/clip.yaml", "--data.init_args.num_workers", str(args.workers)]
        if args.images == "jpeg":
            coco_size_imagefolder(os.path.join(tmp, "images"), 3000)
            common += ["--data.init_args.dataset", os.path.join(tmp, "images")]
        runs = {"recomputed": common + ["--data.init_args.preprocess_cache_gb", "0"], "cached": common}
        rows = alternate({name: functools.partial(fit, flags) for name, flags in runs.items()}, args.epochs,
                         args.rounds, tmp)
    print(f"\nCLIP demo recipe on {args.images} images, both towers trained, {args.epochs} epochs, {args.workers} "
          f"worker(s), {args.rounds} rounds (medians)")
    print("| run | whole process (s) | training pairs/s | final caption→image nDCG@10 |")
    print("|---|--:|--:|--:|")
    for name, results in rows.items():
        print(f"| {name} | {statistics.median(r['seconds'] for r in results):.1f} | "
              f"{statistics.median(r['pairs_per_s'] for r in results):.1f} | {results[0]['ndcg']} |")
    print(f"cached / recomputed: {ratio(rows, 'cached', 'recomputed', 'seconds'):.2f}× whole process, "
          f"{ratio(rows, 'cached', 'recomputed', 'pairs_per_s'):.2f}× training pairs/s; same metrics: "
          f"{all(a['ndcg'] == b['ndcg'] for a, b in zip(rows['recomputed'], rows['cached']))}")


if __name__ == "__main__":
    main()
