"""GradCache gives the plain step's loss and parameter gradients (dropout on, same seed), for text and CLIP."""

import re

import pytest
import torch

from lightning_modules.clip import CLIPEmbeddingModule
from lightning_modules.clip_backends import TransformersClip
from lightning_modules.gradcache import cached_step, split_features
from lightning_modules.text import TextEmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from losses import MatryoshkaLoss, MultipleNegativesRankingLoss
from tests.commands import text_recipe, train_args
from tests.tiny import TINY_BERT, TINY_HF_CLIP_CONFIG


def grads(module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def plain_chunked(module, columns, chunk_size):
    """The uncached step, embedding the same chunks in the same order (the same dropout masks), keeping graphs."""
    embeddings = [torch.cat([module.embed(c) for c in split_features(f, chunk_size)]) for f in columns]
    return module.loss(*embeddings, **module.loss_kwargs())


def cached(module, columns, chunk_size, grad_factor=1.0):
    kwargs = module.loss_kwargs()
    differentiable = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    return cached_step(module.embed, columns, module.loss, chunk_size, differentiable, grad_factor)


def assert_same(reference: dict, mine: dict) -> None:
    assert reference.keys() == mine.keys() and reference
    for name, value in reference.items():
        assert torch.allclose(mine[name], value, rtol=0, atol=1e-10), (name, (mine[name] - value).abs().max())


# GTE's improved contrastive loss with hardness weighting: every direction, the joint softmax, a detached penalty
GTE = {"directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), "hardness_mode":
       "all_negatives", "hardness_strength": 5.0}


def text_module(minilm_path, symmetric: bool | str, dropout: float = 0.1) -> TextEmbeddingModule:
    """``symmetric``: False, True, or "gte" (GTE)."""
    torch.manual_seed(0)
    config = {**TINY_BERT, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    encoder = TextEncoder(config=config, tokenizer_name_or_path=minilm_path)
    options = GTE if symmetric == "gte" else {"symmetric": symmetric}
    loss = MatryoshkaLoss(MultipleNegativesRankingLoss(**options), [32, 16, 4])
    module = TextEmbeddingModule(encoder, loss=loss).double()
    module.setup("fit")  # dropout on
    return module


def text_columns(module, rows=10):
    texts = [[f"{role} {i} " + "word " * (i % 4) for i in range(rows)] for role in ("query", "passage", "negative")]
    return [module.processor(t) for t in texts]


@pytest.mark.parametrize("symmetric", [False, True, "gte"])
def test_text_gradients_equal_the_plain_step(minilm_path, symmetric):
    module = text_module(minilm_path, symmetric)
    columns = text_columns(module)  # anchor, positive, one hard-negative column
    torch.manual_seed(1)
    reference_loss = plain_chunked(module, columns, 3)
    reference_loss.backward()
    reference = grads(module)
    torch.manual_seed(1)
    loss = cached(module, columns, 3)  # 10 rows: chunks of 3, 3, 3, 1
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert_same(reference, grads(module))


def test_text_without_dropout_equals_the_full_batch_step(minilm_path):
    module = text_module(minilm_path, symmetric=False, dropout=0.0)
    columns = text_columns(module)
    full = module.loss(*(module.embed(f) for f in columns))
    full.backward()
    reference = grads(module)
    loss = cached(module, columns, 4)
    loss.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-10)
    for name, value in grads(module).items():
        assert torch.allclose(value, reference[name], rtol=1e-7, atol=1e-9), name


def test_gradients_scale_with_accumulation(minilm_path):
    """Lightning divides the returned loss by accumulate_grad_batches: the chunks backpropagated in the step must too."""
    module = text_module(minilm_path, symmetric=False)
    columns = text_columns(module)
    torch.manual_seed(1)
    cached(module, columns, 3).backward()
    once = grads(module)
    torch.manual_seed(1)
    (cached(module, columns, 3, grad_factor=0.25) * 0.25).backward()
    assert_same({k: v * 0.25 for k, v in once.items()}, grads(module))


def test_clip_gradients_equal_the_plain_step_learnable_scale_included():
    torch.manual_seed(0)
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), learn_logit_scale=True,
                                 loss=MultipleNegativesRankingLoss(symmetric=True)).double()
    module.setup("fit")
    pixels = {"pixel_values": torch.rand(6, 3, 32, 32, dtype=torch.float64)}
    captions = module.processor.tokenize([f"a picture of thing {i}" for i in range(6)])
    reference_loss = plain_chunked(module, [pixels, captions], 4)
    reference_loss.backward()
    reference = grads(module)
    assert "encoder.model.logit_scale" in reference
    loss = cached(module, [pixels, captions], 4)
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert_same(reference, grads(module))


def test_chunk_size_and_fp16_are_checked(tiny_bert_dir):
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="--model.init_args.gradcache_chunk_size must be ≥ 1"):
        TextEmbeddingModule(TextEncoder(tiny_bert_dir), gradcache_chunk_size=0)
    module = TextEmbeddingModule(TextEncoder(tiny_bert_dir), gradcache_chunk_size=4)
    module._trainer = SimpleNamespace(precision="16-mixed")  # on a GPU; a CPU run turns 16-mixed into bf16
    with pytest.raises(ValueError, match="use --trainer.precision bf16-mixed or 32-true"):
        module.setup("fit")


def fit_text(model_dir, data_dir, *extra):
    from train import cli_main

    return cli_main(train_args(*text_recipe(model_dir, data_dir), "--trainer.logger=false",
                               "--trainer.enable_checkpointing=false", "--trainer.accumulate_grad_batches=2",
                               "--export.dirpath=null", "--data.test_split=null", *extra))


def test_fit_with_gradcache_equals_the_plain_fit(no_dropout_bert, pairs_dir):
    """Lightning's loop (zero_grad, backward, accumulation of 2, optimizer steps): the same weights as plain steps."""
    plain = fit_text(no_dropout_bert, pairs_dir)
    cached = fit_text(no_dropout_bert, pairs_dir, "--model.gradcache_chunk_size=3")
    assert cached.trainer.global_step == plain.trainer.global_step == 3  # 48 rows: 6 batches of 8, 3 steps
    plain_weights = dict(plain.model.named_parameters())
    for name, value in cached.model.named_parameters():
        assert torch.allclose(value, plain_weights[name], rtol=0, atol=1e-5), name
    assert cached.model.history[-1][1] == pytest.approx(plain.model.history[-1][1], abs=1e-5)


def test_fit_with_gradcache_in_bf16_and_its_card_cites_every_method(tiny_bert_dir, pairs_dir, tmp_path):
    cli = fit_text(tiny_bert_dir, pairs_dir, "--model.gradcache_chunk_size=3", "--trainer.precision=bf16-mixed",
                   "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
                   "--export.dirpath=model")
    assert cli.trainer.global_step == 3 and "val/dim_32_cosine_ndcg@10" in cli.model.history[-1][1]
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    card = (tmp_path / "lightning_logs" / "version_0" / "model" / "README.md").read_text()
    citations = card[card.index("## Citation"):]
    # the loss, Matryoshka and GradCache (a module option, not a loss): each paper the run used
    assert re.findall(r"^#### (.+)$", citations, re.M) == [
        "Sentence Transformers", "MatryoshkaLoss", "MultipleNegativesRankingLoss", "GradCache"]
    assert "gao2021scaling" in citations  # GradCache's BibTeX key


def _ddp_gradients(rank: int, world: int, port: int, minilm_path: str, out: str) -> None:
    """One of 2 gloo ranks: the cached and the plain-chunked step of the same module inside DDP, as Lightning runs them
    (DDP's forward calls the step; Lightning zeroes gradients, then calls the module's backward)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for recipe in ("text", "clip"):
        torch.manual_seed(0)  # the same weights on every rank
        if recipe == "text":
            module = text_module(minilm_path, symmetric=True)
            module.loss.loss.gather_across_devices = True
            columns = text_columns(module, rows=7)  # anchor, positive, one hard-negative column
            columns = [{k: v.roll(rank, 0) for k, v in c.items()} for c in columns]  # other rows on each rank
        else:
            module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), learn_logit_scale=True,
                                         loss=MultipleNegativesRankingLoss(symmetric=True, gather_across_devices=True))
            module = module.double().train()  # dropout on, as setup("fit") makes it
            torch.manual_seed(10 + rank)
            columns = [{"pixel_values": torch.rand(7, 3, 32, 32, dtype=torch.float64)},
                       module.processor.tokenize([f"a picture of thing {i + 7 * rank}" for i in range(7)])]

        class Step(torch.nn.Module):  # Lightning's DDP wrapper: DDP.forward runs training_step
            def __init__(self, cached: bool) -> None:
                super().__init__()
                self.module, self.cached = module, cached

            def forward(self, columns):
                return module.gradcache_loss(columns, 1.0) if self.cached else plain_chunked(module, columns, 3)

        module.gradcache_chunk_size = 3  # 7 rows: chunks of 3, 3, 1
        for cached in (False, True):
            ddp = DistributedDataParallel(Step(cached))
            torch.manual_seed(100 + rank)  # the same dropout masks in both steps
            loss = ddp(columns)
            module.optimizer_zero_grad(0, 0, torch.optim.SGD(module.parameters()))  # Lightning's, between the two
            module.backward(loss)
            results[f"{recipe}/{'cached' if cached else 'plain'}"] = (loss.item(), grads(module))
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # 2 gloo processes (~11 s)
def test_gradients_equal_the_plain_step_under_ddp_with_gather(tmp_path, minilm_path):
    """2 gloo ranks, gather_across_devices, dropout on: GradCache's all-reduced gradients equal the plain step's."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_gradients, args=(2, port, minilm_path, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for recipe in ("text", "clip"):
        for rank in ranks:
            plain_loss, plain = rank[f"{recipe}/plain"]
            cached_loss, mine = rank[f"{recipe}/cached"]
            assert cached_loss == pytest.approx(plain_loss, rel=1e-10)
            assert plain.keys() == mine.keys() and plain
            for name, value in plain.items():
                assert torch.allclose(mine[name], value, rtol=0, atol=1e-5), (recipe, name)
        for name, value in ranks[0][f"{recipe}/cached"][1].items():  # all-reduced: the same on both ranks
            assert torch.allclose(ranks[1][f"{recipe}/cached"][1][name], value, rtol=0, atol=1e-12), (recipe, name)
