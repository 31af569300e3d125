"""The seed COCO recipe end to end on a machine with no network: ``python train.py fit --config
configs/clip_vit_l14_coco.yaml`` on a local stand-in for jxie/coco_captions, timed beside the seed card's 0.137 h.

What stands in for what the recipe downloads:
- the model: CLIP ViT-L/14's architecture at random init (``bench/clip_seed_gpu.py``'s ``VIT_L_14``; OpenAI's
  tokenizer built offline): a copy of the recipe whose encoder ``init_args`` are ``{config: …}``, nothing else changed;
- the data: a folder laid out like jxie/coco_captions, ``data/{train,validation,test}-NNNNN-of-NNNNN.parquet`` with
  columns image (JPEG bytes inline in every caption row), filename, cocoid and caption, 5 consecutive captions per
  image. Train: 2,000 photo-like 640×480 JPEGs (``bench/jpeg_decode.py``: ~100–200 KB, COCO's decoding cost) × 5
  captions = the recipe's 10,000 pairs, in 8 shards (the hub's split is many files, so the stream's workers each
  read some); validation and test: 1,000 rows (200 images) each, the recipe's ``max_eval_rows``. Captions are
  COCO-like sentences (~50 characters), unique, unrelated to the pixels: the metrics mean nothing, the work is real.
Everything else is the recipe's: bf16-mixed, batch 16, 1 epoch, an evaluation every 63 steps, the base model
evaluated first, ``last.ckpt`` after every evaluation (weights and AdamW state: ~5 GB for ViT-L/14), the export with
its card, the test split after fit.

Printed: the whole process's wall time; the training window (first training step to the end of training, the
evaluations in between included: the window the seed card's codecarbon figure covers, ``trainer.train()``); the fit
time litembed's own card reports (fit start to export); each beside 0.137 h (1 × RTX 3090, sentence-transformers).
The GPUs differ: for a like-for-like ratio see ``bench/clip_seed_gpu.py --reference st``.

    python bench/coco_e2e.py                                     # the recipe's sizes (GPU)
    python bench/coco_e2e.py --tiny --pairs 200 --image-size 320x240   # a CPU smoke run, a 2-layer CLIP
    python bench/coco_e2e.py --dry                               # write the data, print the command, run nothing
"""

import argparse
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lightning.pytorch import Callback  # noqa: E402

RECIPE = os.path.join("configs", "clip_vit_l14_coco.yaml")
SEED_HOURS = 0.137  # the seed card's hours_used: 1 x NVIDIA GeForce RTX 3090, sentence-transformers, codecarbon
SEED_PAIRS, SEED_EVAL_ROWS, SEED_EVAL_EVERY = 10_000, 1_000, 63  # the recipe's max_train_rows, max_eval_rows, eval steps
CAPTIONS_PER_IMAGE = 5
MARKER = "coco_e2e:"  # the line TrainWindow prints in the training process, read back here

SUBJECTS = ("A man", "A woman", "Two people", "A young boy", "A little girl", "A group of people", "A dog", "A cat",
            "A large giraffe", "A red bus", "A zebra", "An elephant", "A small bird", "A man in a suit", "A skateboarder",
            "A surfer", "A baseball player", "A train", "A brown horse", "A woman with an umbrella")
ACTIONS = ("standing next to", "sitting on", "walking past", "looking at", "parked beside", "riding along",
           "waiting near", "playing with", "leaning against", "resting under", "running across", "holding up")
PLACES = ("a wooden bench", "a busy street", "a kitchen counter", "a large window", "a grassy field", "the beach",
          "a snowy hill", "a pizza on a plate", "an open laptop", "a fire hydrant", "a tall clock tower", "a white fence",
          "a parked car", "a stop sign", "a small boat", "a dining table", "a city bus", "a tennis court",
          "a flower pot", "a brick wall")
ENDINGS = (".", " in the park.", " at night.", " near the water.", " on a sunny day.", " in front of a building.",
           " in the rain.", " while people watch.")


def captions(n: int, seed: int) -> list[str]:
    """``n`` distinct COCO-like captions (subject, action, place, ending), dealt without replacement."""
    total = len(SUBJECTS) * len(ACTIONS) * len(PLACES) * len(ENDINGS)
    if n > total:
        raise ValueError(f"{n} captions asked for, {total} distinct ones exist: lower --pairs or --eval-rows")
    out = []
    for k in random.Random(seed).sample(range(total), n):
        k, s = divmod(k, len(SUBJECTS))
        k, a = divmod(k, len(ACTIONS))
        e, p = divmod(k, len(PLACES))
        out.append(f"{SUBJECTS[s]} {ACTIONS[a]} {PLACES[p]}{ENDINGS[e]}")
    return out


def photo(job: tuple[int, tuple[int, int]]) -> bytes:
    """One photo-like JPEG (``bench/jpeg_decode.py``, 640×480), resized to ``size`` when it differs."""
    from PIL import Image

    from bench.jpeg_decode import photo_like_jpegs

    seed, size = job
    data = photo_like_jpegs(1, seed=seed)[0]
    if size == (640, 480):
        return data
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_split(directory: str, split: str, images: list[bytes], texts: list[str], first_id: int, shards: int) -> None:
    """Rows ``image × 5 captions`` of one split into ``shards`` parquet files named as the hub names them."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "filename": datasets.Value("string"),
                                  "cocoid": datasets.Value("int64"), "caption": datasets.Value("string")})
    per_shard = math.ceil(len(images) / shards)
    for shard in range(shards):
        rows = {"image": [], "filename": [], "cocoid": [], "caption": []}
        for i in range(shard * per_shard, min((shard + 1) * per_shard, len(images))):
            name = f"COCO_{split}2014_{first_id + i:012d}.jpg"
            for c in range(CAPTIONS_PER_IMAGE):
                rows["image"].append({"bytes": images[i], "path": name})
                rows["filename"].append(name)
                rows["cocoid"].append(first_id + i)
                rows["caption"].append(texts[i * CAPTIONS_PER_IMAGE + c])
        path = os.path.join(directory, "data", f"{split}-{shard:05d}-of-{shards:05d}.parquet")
        datasets.Dataset.from_dict(rows, features=features).to_parquet(path)


def build_dataset(directory: str, pairs: int, eval_rows: int, size: tuple[int, int], shards: int) -> dict:
    """Write the stand-in for jxie/coco_captions. Returns the split sizes (rows) and the mean JPEG size (KB)."""
    splits = {"train": pairs, "validation": eval_rows, "test": eval_rows}
    images = {name: rows // CAPTIONS_PER_IMAGE for name, rows in splits.items()}
    texts = captions(sum(images.values()) * CAPTIONS_PER_IMAGE, seed=0)
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    with multiprocessing.Pool(os.cpu_count()) as pool:  # ~30 ms an image on one core
        jpegs = pool.map(photo, [(seed, size) for seed in range(sum(images.values()))], chunksize=16)
    start = 0
    for number, (name, count) in enumerate(images.items()):
        end = start + count
        write_split(directory, name, jpegs[start:end], texts[start * CAPTIONS_PER_IMAGE:end * CAPTIONS_PER_IMAGE],
                    first_id=number * 1_000_000, shards=shards if name == "train" else 1)
        start = end
    return {**{name: count * CAPTIONS_PER_IMAGE for name, count in images.items()},
            "jpeg_kb": sum(map(len, jpegs)) / len(jpegs) / 1e3}


class TrainWindow(Callback):
    """Runs inside ``train.py fit`` (``--trainer.callbacks+=bench.coco_e2e.TrainWindow``): prints the wall time from
    the first training batch to the end of training, with the steps and the evaluations in between, on one line."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.evaluations = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.start is not None and not trainer.sanity_checking:
            self.evaluations += 1

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if trainer.is_global_zero and self.start is not None:
            print(f"{MARKER} {json.dumps({'train_s': time.perf_counter() - self.start, 'steps': trainer.global_step, 'evaluations': self.evaluations})}",
                  flush=True)


def recipe_copy(args, work: str) -> str:
    """The recipe with its encoder's ``init_args`` replaced by a random-init ``config`` (the only change), saved in
    ``work``. (A ``model_name_or_path=null`` flag does not unset the recipe's hub name: jsonargparse passes the string
    'None'.)"""
    import yaml

    if args.tiny:
        from tests.tiny import TINY_HF_CLIP_CONFIG as config
    else:
        from bench.clip_seed_gpu import VIT_L_14 as config
    with open(os.path.join(ROOT, RECIPE)) as f:
        recipe = yaml.safe_load(f)
    recipe["model"]["init_args"]["encoder"]["init_args"] = {"config": config}
    path = os.path.join(work, "clip_vit_l14_coco_random_init.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return path


def command(args, recipe: str, data_dir: str, runs_dir: str) -> list[str]:
    """``train.py fit`` on the recipe (model swapped for a random init), the data pointed at the local folder."""
    flags = [sys.executable, "train.py", "fit", "--config", recipe, f"--data.init_args.dataset={data_dir}",
             f"--trainer.logger.init_args.save_dir={runs_dir}", "--trainer.callbacks+=bench.coco_e2e.TrainWindow"]
    if args.pairs != SEED_PAIRS:
        flags.append(f"--data.init_args.max_train_rows={args.pairs}")
    if args.eval_rows != SEED_EVAL_ROWS:
        flags.append(f"--data.init_args.max_eval_rows={args.eval_rows}")
    if args.eval_every != SEED_EVAL_EVERY:
        flags.append(f"--trainer.val_check_interval={args.eval_every}")
    return flags


def card_hours(runs_dir: str) -> str | None:
    """The "Hours Used" litembed's card reports (fit start to export), from the run's report.json."""
    for folder, _, files in os.walk(runs_dir):
        if "report.json" in files:
            with open(os.path.join(folder, "report.json")) as f:
                return json.load(f).get("hardware", {}).get("Hours Used")
    return None


def run(args, work: str) -> None:
    data_dir, runs_dir = os.path.join(work, "coco_captions"), os.path.join(work, "runs")
    start = time.perf_counter()
    sizes = build_dataset(data_dir, args.pairs, args.eval_rows, args.size, args.train_shards)
    print(f"data: {sizes['train']:,} train / {sizes['validation']:,} validation / {sizes['test']:,} test rows, "
          f"{sizes['train'] // CAPTIONS_PER_IMAGE:,} + {2 * sizes['validation'] // CAPTIONS_PER_IMAGE:,} JPEGs "
          f"{args.size[0]}×{args.size[1]} of {sizes['jpeg_kb']:.0f} KB on average, written to {data_dir} in "
          f"{time.perf_counter() - start:.1f} s (not timed below)", flush=True)
    flags = command(args, recipe_copy(args, work), data_dir, runs_dir)
    print("command: " + " ".join(flags), flush=True)
    if args.dry:
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ROOT,
           "HF_DATASETS_CACHE": os.path.join(work, "hf-datasets")}  # whatever HF datasets caches goes with the work
    log_path = os.path.join(work, "train.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(flags, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    whole = time.perf_counter() - start
    with open(log_path) as f:
        lines = f.read().splitlines()
    window = [json.loads(line.split(MARKER, 1)[1]) for line in lines if line.startswith(MARKER)]
    if code != 0 or not window:
        print("\n".join(lines[-40:]))
        raise SystemExit(f"train.py fit exited with {code}{'' if window else ' before the end of training'}; "
                         f"the log is above")
    window = window[-1]
    seed_s = SEED_HOURS * 3600
    device = _device()
    print(f"\nCOCO seed recipe end to end on {device}: {window['steps']} steps of 16 pairs, {window['evaluations']} "
          f"evaluations during training ({args.eval_rows:,} rows, every {args.eval_every} steps), "
          f"{'ViT-L/14' if not args.tiny else 'a 2-layer CLIP'} at random init")
    print(f"seed card (sentence-transformers, 1 × RTX 3090, trainer.train()):  {seed_s:7.1f} s = {SEED_HOURS:.3f} h")
    print(f"training window (first step → end of training, evaluations in):  {window['train_s']:7.1f} s = "
          f"{window['train_s'] / 3600:.3f} h ({seed_s / window['train_s']:.2f}× less than the card)")
    print(f"litembed card's Hours Used (fit start → export):                  {card_hours(runs_dir) or 'not written'}")
    print(f"whole process (start-up, base evaluation, export, card, test):   {whole:7.1f} s = {whole / 3600:.3f} h "
          f"({seed_s / whole:.2f}× less than the card)")


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=SEED_PAIRS, help="training rows (a multiple of 5)")
    p.add_argument("--eval-rows", type=int, default=None,
                   help="validation and test rows each (default: 1,000, or a tenth of --pairs if less)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (default: 63 scaled by --pairs / 10,000: as many evaluations)")
    p.add_argument("--image-size", default="640x480", help="WIDTHxHEIGHT of the JPEGs (COCO's: 640x480)")
    p.add_argument("--train-shards", type=int, default=8, help="parquet files of the train split")
    p.add_argument("--tiny", action="store_true", help="a 2-layer CLIP at 32 px instead of ViT-L/14 (CPU smoke run)")
    p.add_argument("--work-dir", help="keep the data, run folder and log here (default: a temporary folder)")
    p.add_argument("--dry", action="store_true", help="write the data and print the command; train nothing")
    args = p.parse_args()
    if args.pairs < 2 * CAPTIONS_PER_IMAGE or args.pairs % CAPTIONS_PER_IMAGE:
        p.error(f"--pairs must be a multiple of {CAPTIONS_PER_IMAGE} (captions per image) and at least 10, got "
                f"{args.pairs}")
    if args.eval_rows is None:
        args.eval_rows = min(SEED_EVAL_ROWS, args.pairs // 10 // CAPTIONS_PER_IMAGE * CAPTIONS_PER_IMAGE)
    if args.eval_rows < CAPTIONS_PER_IMAGE or args.eval_rows % CAPTIONS_PER_IMAGE:
        p.error(f"--eval-rows must be a positive multiple of {CAPTIONS_PER_IMAGE}, got {args.eval_rows}")
    if args.eval_every is None:
        args.eval_every = max(1, round(SEED_EVAL_EVERY * args.pairs / SEED_PAIRS))
    try:
        args.size = tuple(int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        args.size = ()
    if len(args.size) != 2 or min(args.size) < 32:
        p.error(f"--image-size must be WIDTHxHEIGHT, each at least 32 (COCO's: 640x480), got {args.image_size!r}")
    return args


def main() -> None:
    args = parse()
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        run(args, args.work_dir)
        return
    work = tempfile.mkdtemp(prefix="coco-e2e-")
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
