"""The CLIP seed recipe's architecture (ViT-L/14, random init: no weights download) for a few bf16 steps on a GPU.

Runs configs/clip_vit_l14_coco.yaml unchanged but for the model (random init from CLIP ViT-L/14's config) and the
data (built-in shapes at 224 px), then prints train samples/s, peak GPU memory, the evaluation time and the device
the retrieval metrics were computed on.

    python bench/clip_seed_gpu.py --steps 20
"""

import argparse
import os
import sys
import tempfile
import time

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from train import cli_main  # noqa: E402

VIT_L_14 = {  # openai/clip-vit-large-patch14's CLIPConfig
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "max_position_embeddings": 77, "vocab_size": 49408},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                      "image_size": 224, "patch_size": 14},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "configs", "clip_vit_l14_coco.yaml")) as f:
        recipe = yaml.safe_load(f)
    recipe["model"]["init_args"]["encoder"]["init_args"] = {"config": VIT_L_14}  # random init, same architecture
    recipe["data"]["init_args"]["image_id_column"] = "image_id"  # the built-in shapes' image key
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(recipe, config)
    config.close()
    cli = cli_main([
        "--config", config.name,
        "--model.init_args.evaluate_before_training=false", "--model.init_args.export_dir=null",
        "--data.init_args.dataset=builtin:shapes", "--data.init_args.image_size=224",
        # the train stream is 8 shards read by up to 4 workers: each worker needs at least a batch of rows
        f"--data.init_args.builtin_rows={args.batch_size * max(args.steps, 8) + 256}",
        "--data.init_args.val_size=256",
        "--data.init_args.test_split=null", f"--data.init_args.batch_size={args.batch_size}",
        "--data.init_args.max_train_rows=null", "--data.init_args.max_eval_rows=null",
        f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
    ], run=False)
    trainer, module = cli.trainer, cli.model
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(module, datamodule=cli.datamodule)
    torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    trainer.limit_val_batches = 1.0
    collected = {}
    original = module._compute_retrieval

    def spy(stage):  # record where the metrics ran
        collected.update({name: c.compute().device for name, c in module._collectors.items()})
        return original(stage)

    module._compute_retrieval = spy
    start = time.perf_counter()
    metrics = trainer.validate(module, datamodule=cli.datamodule, verbose=False)[0]
    eval_s = time.perf_counter() - start
    optimizer = trainer.optimizers[0]
    print(f"\ndevice: {torch.cuda.get_device_name()}; torch {torch.__version__}; precision {trainer.precision}; "
          f"fused AdamW: {optimizer.defaults.get('fused')}; params {sum(p.numel() for p in module.parameters()) / 1e6:.0f} M")
    print(f"train: {args.steps} steps × {args.batch_size} pairs in {train_s:.1f} s (incl. first-step warm-up) = "
          f"{args.steps * args.batch_size / train_s:.1f} pairs/s; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"eval: 256 captions + 256 images, both directions, {eval_s:.1f} s; embeddings on {set(map(str, collected.values()))}; "
          f"{module.main_metric('val')} {metrics[module.main_metric('val')]:.4f}")


if __name__ == "__main__":
    main()
