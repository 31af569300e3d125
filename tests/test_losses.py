"""The losses against sentence-transformers itself: values and gradients on random float64 embeddings."""

import datetime
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from losses import MatryoshkaLoss, MultipleNegativesRankingLoss, all_gather_with_grad

B, D = 8, 16


def embeddings(columns: int, rows: int = B, dim: int = D, seed: int = 0) -> list[torch.Tensor]:
    """(rows, dim) float64 leaves; scaled by 1/sqrt(dim) so dot products stay O(1) and no softmax saturates."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, dim, generator=generator, dtype=torch.float64) / dim**0.5).requires_grad_()
            for _ in range(columns)]


def value_and_grads(loss_fn, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    loss = loss_fn(inputs)
    return loss.detach(), torch.autograd.grad(loss, inputs)


def assert_same_loss_and_grads(ours, theirs, inputs: list[torch.Tensor]) -> None:
    ours_value, ours_grads = value_and_grads(ours, inputs)
    theirs_value, theirs_grads = value_and_grads(theirs, inputs)
    torch.testing.assert_close(ours_value, theirs_value, rtol=0, atol=1e-6)
    for ours_grad, theirs_grad in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-6)


# Imported lazily: the spawned distributed workers import this module and need no sentence-transformers (~10 s).
@pytest.fixture(scope="module")
def st():
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    return losses, util


class EmbeddingsModel(nn.Module):
    """Stands in for a SentenceTransformer whose features already are the embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def get_embedding_dimension(self) -> int:
        return self.dim

    def _get_untruncated_embedding_dimension(self) -> int:  # ST ≥ 6.3's MatryoshkaLoss checks the dims against it
        return self.dim

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": features["embedding"]}


def st_forward(st_loss: nn.Module):
    """Call an ST loss the way its trainer does, one feature dict per column."""
    return lambda inputs: st_loss([{"embedding": e} for e in inputs], None)


def st_mnrl(st, symmetric: bool = False, similarity: str = "cosine", model: nn.Module | None = None,
            **kwargs) -> nn.Module:
    """ST's MNRL; symmetric is its two-direction form with one softmax per direction (ex-MNSymmetricRankingLoss)."""
    losses, util = st
    if symmetric:
        kwargs |= {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}
    similarity_fct = {"cosine": util.cos_sim, "dot": util.dot_score}[similarity]
    return losses.MultipleNegativesRankingLoss(model or EmbeddingsModel(D), similarity_fct=similarity_fct,
                                               **kwargs)


# MultipleNegativesRankingLoss
@pytest.mark.parametrize("n_negatives", [0, 1, 3])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("scale", [20.0, 1.5])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mnrl_matches_sentence_transformers(st, n_negatives, similarity, scale, symmetric):
    ours = MultipleNegativesRankingLoss(scale=scale, similarity=similarity, symmetric=symmetric)
    theirs = st_mnrl(st, symmetric=symmetric, similarity=similarity, scale=scale)
    assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), embeddings(2 + n_negatives))


def st_63_configurations():
    """Every (directions, partition_mode) sentence-transformers 6.3 accepts, with each hardness mode."""
    from itertools import combinations

    others = ("query_to_query", "doc_to_query", "doc_to_doc")
    for k in range(len(others) + 1):
        for extra in combinations(others, k):
            directions = ("query_to_doc", *extra)
            modes = ["joint"] + (["per_direction"] if not {"query_to_query", "doc_to_doc"} & set(extra) else [])
            for partition_mode in modes:
                for hardness_mode in (None, "in_batch_negatives", "hard_negatives", "all_negatives"):
                    yield {"directions": directions, "partition_mode": partition_mode, "hardness_mode": hardness_mode,
                           "hardness_strength": 0.0 if hardness_mode is None else 5.0}


@pytest.mark.parametrize("n_negatives", [0, 2])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_mnrl_directions_partitions_and_hardness_match_sentence_transformers_6_3(st, n_negatives, similarity):
    compared = 0
    for options in st_63_configurations():
        inputs = embeddings(2 + n_negatives, seed=compared)
        ours = MultipleNegativesRankingLoss(scale=7.0, similarity=similarity, **options)
        theirs = st_mnrl(st, similarity=similarity, scale=7.0, **options)
        try:
            assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), inputs)
        except AssertionError as err:
            raise AssertionError(f"{options}: {err}") from None
        assert ours.get_config_dict() == {**theirs.get_config_dict(), "directions": list(options["directions"])}
        compared += 1
    assert compared == 10 * 4  # 8 direction sets joint, 2 per direction; 4 hardness settings each


def test_mnrl_refuses_what_sentence_transformers_6_3_refuses():
    for kwargs, match in [({"directions": ("doc_to_query",)}, "must include 'query_to_doc'"),
                          ({"directions": ("query_to_doc", "sideways")}, "directions must be distinct ones of"),
                          ({"directions": ("query_to_doc", "doc_to_doc"), "partition_mode": "per_direction"},
                           "use partition_mode 'joint'"),
                          ({"partition_mode": "both"}, "partition_mode must be one of"),
                          ({"hardness_mode": "hardest"}, "hardness_mode must be null or one of"),
                          ({"hardness_strength": -1.0}, "hardness_strength must be ≥ 0"),
                          ({"symmetric": True, "directions": ("query_to_doc", "doc_to_doc")}, "symmetric is")]:
        with pytest.raises(ValueError, match=match):
            MultipleNegativesRankingLoss(**kwargs)
    assert MultipleNegativesRankingLoss(symmetric=True).directions == ("query_to_doc", "doc_to_query")


def test_mnrl_symmetric_matches_deprecated_symmetric_loss(st):
    losses, _ = st
    theirs = losses.MultipleNegativesSymmetricRankingLoss(EmbeddingsModel(D), scale=10.0)
    ours = MultipleNegativesRankingLoss(scale=10.0, symmetric=True)
    assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), embeddings(2))


def test_mnrl_scale_argument_overrides_and_carries_gradient(st):
    """A CLIP model passes its learnable logit_scale.exp() as ``scale``; it must get the same gradient as in ST."""
    inputs = embeddings(3)
    logit_scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    ours = MultipleNegativesRankingLoss(scale=20.0, symmetric=True)(*inputs, scale=logit_scale.exp())
    theirs = st_mnrl(st, symmetric=True, scale=1.0)
    theirs.scale = logit_scale.exp()
    theirs = st_forward(theirs)(inputs)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    ours_grads = torch.autograd.grad(ours, [logit_scale, *inputs])
    theirs_grads = torch.autograd.grad(theirs, [logit_scale, *inputs])
    for ours_grad, theirs_grad in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"scale": 0.0}, r"scale must be > 0"),
    ({"scale": -20.0}, r"scale must be > 0"),
    ({"similarity": "euclidean"}, r"similarity must be one of \('cosine', 'dot'\), got 'euclidean'"),
])
def test_mnrl_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultipleNegativesRankingLoss(**kwargs)


@pytest.mark.parametrize(("shapes", "match"), [
    ([(1, D), (1, D)], r"at least 2 \(anchor, positive\) pairs, got batch size 1"),
    ([(B, D), (B - 1, D)], r"positive has shape \(7, 16\) but anchor has \(8, 16\)"),
    ([(B, D), (B, D), (B, D), (B, D - 1)], r"negative_2 has shape \(8, 15\)"),
    ([(B * D,), (B * D,)], r"anchor must be a \(B, D\) embedding matrix, got shape \(128,\)"),
])
def test_mnrl_rejects_bad_inputs(shapes, match):
    with pytest.raises(ValueError, match=match):
        MultipleNegativesRankingLoss()(*(torch.randn(shape) for shape in shapes))


# MatryoshkaLoss
@pytest.mark.parametrize(("dim", "dims", "weights"), [
    (768, [768, 512, 256, 128, 64], None),
    (32, [32, 16, 8], None),
    (32, [16, 32, 8], [0.5, 2.0, 1.0]),  # unsorted: weights must follow their dims
    (32, [24, 4], [1.0, 3.0]),  # the full size need not be trained
])
@pytest.mark.parametrize("n_negatives", [0, 1])
def test_matryoshka_matches_sentence_transformers(st, dim, dims, weights, n_negatives):
    losses, _ = st
    ours = MatryoshkaLoss(MultipleNegativesRankingLoss(), dims, weights)
    model = EmbeddingsModel(dim)  # ST's MatryoshkaLoss truncates by patching the forward of its inner loss's model
    theirs = losses.MatryoshkaLoss(model, st_mnrl(st, model=model), dims, weights)
    assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), embeddings(2 + n_negatives, dim=dim))


def test_matryoshka_of_gte_loss_with_hardness_matches_sentence_transformers(st):
    losses, _ = st
    options = {"directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
               "hardness_mode": "in_batch_negatives", "hardness_strength": 9.0, "scale": 12.0}
    ours = MatryoshkaLoss(MultipleNegativesRankingLoss(**options), [32, 8])
    model = EmbeddingsModel(32)
    theirs = losses.MatryoshkaLoss(model, st_mnrl(st, model=model, **options), [32, 8])
    assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), embeddings(3, dim=32))


def test_matryoshka_of_symmetric_dot_loss_matches_sentence_transformers(st):
    losses, _ = st
    ours = MatryoshkaLoss(MultipleNegativesRankingLoss(scale=5.0, similarity="dot", symmetric=True), [8, 32, 16])
    model = EmbeddingsModel(32)
    inner = st_mnrl(st, symmetric=True, similarity="dot", model=model, scale=5.0)
    theirs = losses.MatryoshkaLoss(model, inner, [8, 32, 16])
    assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), embeddings(3, dim=32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matryoshka_normalises_half_precision_slices_in_float32_as_sentence_transformers(dtype):
    """ST 6.3 normalises a bf16/fp16 slice in float32 and casts it back: the inner loss gets exactly ST's slices."""
    from sentence_transformers.sentence_transformer.losses.matryoshka import shrink

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen = []

        def forward(self, *columns, scale=None):
            self.seen.append(columns)
            return columns[0].sum()

    dims = [768, 256, 64]
    inputs = [(e * 7).to(dtype) for e in embeddings(2, dim=768)]
    inner = Recording()
    MatryoshkaLoss(inner, dims)(*inputs)
    for d, columns in zip(dims, inner.seen, strict=True):
        for ours, given in zip(columns, inputs, strict=True):
            assert ours.dtype == dtype
            torch.testing.assert_close(ours, shrink(given, d), rtol=0, atol=0)
    in_half = F.normalize(inputs[0][..., :256], dim=-1)
    assert not torch.equal(in_half, shrink(inputs[0], 256))  # the comparison above tells the two ways apart


@pytest.mark.parametrize("seed", range(4))
def test_matryoshka_samples_the_same_dims_per_step_as_sentence_transformers(st, seed):
    losses, _ = st
    dims, weights = [64, 48, 32, 16, 8], [1.0, 2.0, 3.0, 4.0, 5.0]  # distinct weights tell the sampled dims apart
    ours = MatryoshkaLoss(MultipleNegativesRankingLoss(), dims, weights, n_dims_per_step=2)
    model = EmbeddingsModel(64)
    theirs = losses.MatryoshkaLoss(model, st_mnrl(st, model=model), dims, weights, n_dims_per_step=2)
    inputs = embeddings(2, dim=64)
    random.seed(seed)
    ours_value = ours(*inputs)
    random.seed(seed)
    theirs_value = st_forward(theirs)(inputs)
    torch.testing.assert_close(ours_value, theirs_value, rtol=0, atol=1e-6)


def test_matryoshka_sorts_dims_with_their_weights_and_passes_scale_on():
    loss = MatryoshkaLoss(MultipleNegativesRankingLoss(scale=20.0), [16, 32, 8], [0.5, 2.0, 1.0])
    assert loss.dims == (32, 16, 8) and loss.weights == (2.0, 0.5, 1.0)
    inputs = embeddings(2, dim=32)
    expected = MatryoshkaLoss(MultipleNegativesRankingLoss(scale=7.0), [16, 32, 8], [0.5, 2.0, 1.0])(*inputs)
    torch.testing.assert_close(loss(*inputs, scale=torch.tensor(7.0, dtype=torch.float64)), expected)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dims": []}, r"dims must name at least one embedding size"),
    ({"dims": [32, 0]}, r"dims must all be > 0, got \[32, 0\]"),
    ({"dims": [32, -8]}, r"dims must all be > 0"),
    ({"dims": [32, 16, 32]}, r"dims must not repeat a size, got \[32, 16, 32\]"),
    ({"dims": [32, 16], "weights": [1.0]}, r"weights must have one entry per dim: 1 weights for 2 dims"),
    ({"dims": [32, 16], "n_dims_per_step": 0}, r"n_dims_per_step must be -1 \(all dims\) or ≥ 1, got 0"),
])
def test_matryoshka_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MatryoshkaLoss(MultipleNegativesRankingLoss(), **kwargs)


def test_matryoshka_rejects_dim_larger_than_the_embeddings():
    loss = MatryoshkaLoss(MultipleNegativesRankingLoss(), [64, 32])
    with pytest.raises(ValueError, match=r"Matryoshka dim 64 is larger than the embedding size 48"):
        loss(*embeddings(2, dim=48))


# Cross-device gathering: two gloo processes on CPU, each holding half of one global batch.
@contextmanager
def gloo_rank(rank: int, world: int, directory: str) -> Iterator[dict]:
    """This spawned process as rank ``rank`` of ``world`` gloo processes meeting in ``directory``: yields a dict of
    results, saved to ``directory/rank<rank>.pt`` for the test to read however the block ends."""
    dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    results: dict = {}
    try:
        yield results
    finally:
        torch.save(results, f"{directory}/rank{rank}.pt")
        dist.destroy_process_group()


def _distributed_worker(rank: int, directory: str) -> None:
    rows = slice(rank * B, (rank + 1) * B)
    with gloo_rank(rank, 2, directory) as results:
        # all_gather_with_grad: rank r weighs the gathered rows by r + 1, so x's gradient is (1 + 2) everywhere.
        x = embeddings(1, rows=2 * B)[0].detach()[rows].T.contiguous().T.requires_grad_()  # a non-contiguous (B, D)
        gathered = all_gather_with_grad(x)
        (gathered.sum() * (rank + 1)).backward()
        results["gathered"], results["gather_grad"] = gathered.detach(), x.grad
        for name, kwargs, columns in [("plain", {}, 3), ("symmetric", {"symmetric": True, "scale": 7.0}, 2),
                                      ("gte", GTE, 3)]:
            inputs = [e.detach()[rows].requires_grad_() for e in embeddings(columns, rows=2 * B)]
            loss = MultipleNegativesRankingLoss(gather_across_devices=True, **kwargs)(*inputs)
            loss.backward()
            results[name] = loss.detach(), [e.grad for e in inputs]
        try:
            MultipleNegativesRankingLoss(gather_across_devices=True)(*embeddings(2, rows=B + rank))
        except ValueError as error:
            results["unequal"] = str(error)


def _per_row_loss(scale: float, symmetric: bool, anchor, positive, *negatives) -> torch.Tensor:
    """(2B,) single-process reference: every row against all candidates of the global batch."""
    anchor, positive, *negatives = (F.normalize(e, dim=-1) for e in (anchor, positive, *negatives))
    labels = torch.arange(anchor.shape[0])
    loss = F.cross_entropy(scale * anchor @ torch.cat([positive, *negatives]).T, labels, reduction="none")
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(scale * positive @ anchor.T, labels, reduction="none"))
    return loss


# GTE's improved contrastive loss with hardness weighting: every direction and mask crosses ranks
GTE = {"directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), "scale": 9.0,
       "hardness_mode": "all_negatives", "hardness_strength": 3.0}


def test_gather_across_devices_of_every_direction_equals_sentence_transformers(st, tmp_path):
    """2 gloo ranks with the gather: each rank's loss, and its rows' gradients of both ranks' losses, equal
    sentence-transformers' on that rank (its gather and rank stood in for in one process)."""
    mp.spawn(_distributed_worker, args=(str(tmp_path),), nprocs=2)
    inputs = embeddings(3, rows=2 * B)
    theirs = st_mnrl(st, gather_across_devices=True, **GTE)
    rank_losses = [_st_loss_on_rank(theirs, inputs, rank) for rank in range(2)]
    grads = torch.autograd.grad(sum(rank_losses), inputs)
    for rank in range(2):
        loss, rank_grads = torch.load(tmp_path / f"rank{rank}.pt")["gte"]
        torch.testing.assert_close(loss, rank_losses[rank].detach(), rtol=0, atol=1e-6)
        for rank_grad, grad in zip(rank_grads, grads, strict=True):
            torch.testing.assert_close(rank_grad, grad[rank * B:(rank + 1) * B], rtol=0, atol=1e-6)


def _st_loss_on_rank(st_loss, inputs: list[torch.Tensor], rank: int) -> torch.Tensor:
    """ST's loss as rank ``rank`` of 2 computes it with the gather: its rows of each column, gathered into the whole
    column (the gather hands back the full leaves, so gradients reach every rank's rows)."""
    from unittest import mock

    local = [column[rank * B:(rank + 1) * B] for column in inputs]
    full = {id(view): column for view, column in zip(local, inputs)}
    module = sys.modules[type(st_loss).__module__]
    with mock.patch.object(module, "all_gather_with_grad", lambda t: full[id(t)]), \
            mock.patch.object(module, "get_rank", lambda: rank):
        return st_loss.compute_loss_from_embeddings(local, None)


def test_gather_across_devices_matches_single_process_loss(st, tmp_path):
    mp.spawn(_distributed_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    full = embeddings(1, rows=2 * B)[0].detach()
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["gathered"], full)
        torch.testing.assert_close(result["gather_grad"], torch.full((B, D), 3.0, dtype=torch.float64))
        assert "same batch size on every rank, got [8, 9] per rank" in result["unequal"]
    for name, scale, symmetric, columns in [("plain", 20.0, False, 3), ("symmetric", 7.0, True, 2)]:
        inputs = embeddings(columns, rows=2 * B)
        per_row = _per_row_loss(scale, symmetric, *inputs)
        st_loss = st_forward(st_mnrl(st, symmetric=symmetric, scale=scale))(inputs)
        torch.testing.assert_close(per_row.mean(), st_loss, rtol=0, atol=1e-6)  # ties the per-row reference to ST
        # Each rank's embeddings must get the gradient of the sum of both ranks' losses, restricted to its rows.
        rank_losses = per_row.view(2, B).mean(dim=1)
        grads = torch.autograd.grad(rank_losses.sum(), inputs)
        for rank, result in enumerate(ranks):
            loss, rank_grads = result[name]
            torch.testing.assert_close(loss, rank_losses[rank].detach(), rtol=0, atol=1e-6)
            for rank_grad, grad in zip(rank_grads, grads, strict=True):
                torch.testing.assert_close(rank_grad, grad[rank * B:(rank + 1) * B], rtol=0, atol=1e-6)


def test_gather_across_devices_is_a_no_op_without_distributed(st):
    x = torch.randn(B, D)
    assert all_gather_with_grad(x) is x
    inputs = embeddings(3)
    ours = MultipleNegativesRankingLoss(gather_across_devices=True)
    theirs = st_mnrl(st, gather_across_devices=True)
    assert_same_loss_and_grads(lambda x: ours(*x), st_forward(theirs), inputs)
