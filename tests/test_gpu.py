"""Checks that need CUDA: bf16-mixed training with fused AdamW and retrieval metrics computed on the GPU."""

import pytest
import torch

from metrics.collector import EmbeddingCollector
from metrics.functional import information_retrieval_metrics
from tests.commands import train_args
from tests.tiny import TINY_BERT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_metrics_on_gpu_equal_cpu():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(500, 64, generator=g), torch.randn(5000, 64, generator=g)
    relevant = [set(torch.randint(0, 5000, (3,), generator=g).tolist()) for _ in range(500)]
    cpu = information_retrieval_metrics(q, c, relevant, chunk_size=1000)
    gpu = information_retrieval_metrics(q.cuda(), c.cuda(), relevant, chunk_size=1000)
    assert gpu == pytest.approx(cpu, abs=1e-5)
    collector = EmbeddingCollector().cuda()
    collector.update(torch.arange(10, device="cuda"), q[:10].cuda())
    assert collector.compute().device.type == "cuda"


def test_bf16_fit_with_fused_adamw(tmp_path, pairs_dir, minilm_path):
    from train import cli_main

    cli = cli_main(train_args(
        "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed", "--trainer.max_steps=3",
        "--trainer.gradient_clip_val=1.0",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--model=lightning_modules.text.TextEmbeddingModule",
        "--model.encoder=lightning_modules.text_encoder.TextEncoder", f"--model.encoder.config={TINY_BERT}",
        f"--model.encoder.tokenizer_name_or_path={minilm_path}", "--export.dirpath=null",
        "--model.loss=losses.MatryoshkaLoss", "--model.loss.loss=losses.MultipleNegativesRankingLoss",
        "--model.loss.dims=[32, 16]",
        "--data=datamodules.pairs.PairDataModule", f"--data.dataset={pairs_dir}", "--data.batch_size=8",
        "--data.num_workers=0", subcommand=None), run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True
    assert any(not torch.equal(before[k], v.cpu()) for k, v in cli.model.state_dict().items())
    assert cli.model.history[-1][1]["val/dim_32_cosine_ndcg@10"] > 0


def test_clip_vit_l14_bf16_step(tmp_path):
    """One bf16 step of the CLIP seed recipe's architecture (ViT-L/14 at random init), evaluated on the GPU."""
    import subprocess
    import sys

    root = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
    out = subprocess.run([sys.executable, f"{root}/bench/clip_seed_gpu.py", "--steps", "2", "--batch-size", "4"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "embeddings on {'cuda:0'}" in out.stdout and "fused AdamW: True" in out.stdout
