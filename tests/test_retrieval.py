"""Retrieval metrics against sentence-transformers' InformationRetrievalEvaluator itself, cross-checked with
torchmetrics where the definitions agree; EmbeddingCollector ordering, deduplication and errors."""

import os
import socket
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchmetrics.retrieval as tmr
from sentence_transformers import util
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from metrics.collector import EmbeddingCollector
from metrics.functional import information_retrieval_metrics, top_k

ST_KS = {"accuracy_at": "accuracy_at_k", "precision_recall_at": "precision_recall_at_k", "mrr_at": "mrr_at_k",
         "ndcg_at": "ndcg_at_k", "map_at": "map_at_k"}


class StubModel:
    """Stands in for a SentenceTransformer: 'encodes' each text id to its fixed embedding row."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def _encode(self, texts, truncate_dim=None, **kwargs):
        out = torch.stack([self.table[t] for t in texts])
        return out[:, :truncate_dim] if truncate_dim else out

    encode_query = encode_document = _encode


def st_metrics(queries, corpus, relevant, similarity="cosine", truncate_dim=None, **ks) -> dict[str, float]:
    """ST's own numbers, keyed and ordered as ``InformationRetrievalEvaluator.__call__`` returns them."""
    # zero-padded ids: ST breaks ties by corpus-id string, which then is corpus index order
    q_ids, c_ids = [f"q{i:06d}" for i in range(len(queries))], [f"c{i:06d}" for i in range(len(corpus))]
    evaluator = InformationRetrievalEvaluator(
        dict(zip(q_ids, q_ids)), dict(zip(c_ids, c_ids)),
        {q_ids[q]: {c_ids[d] for d in rel} for q, rel in enumerate(relevant)},  # empty sets too: ST drops them
        score_functions={similarity: {"cosine": util.cos_sim, "dot": util.dot_score}[similarity]},
        truncate_dim=truncate_dim, **{ST_KS[name]: list(k) for name, k in ks.items()})
    stub = StubModel({**dict(zip(q_ids, queries)), **dict(zip(c_ids, corpus))})
    scores = evaluator.compute_all_metrics(stub)[similarity]
    return {f"{similarity}_{metric.replace('@k', f'@{k}')}": float(v)
            for metric, values in scores.items() for k, v in values.items()}


def assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert list(ours) == list(theirs)  # same keys in the same order
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def random_case(n_q, n_c, d, max_rel, seed):
    """Random embeddings and 1 … max_rel relevant docs per query."""
    g = torch.Generator().manual_seed(seed)
    q, c = torch.randn(n_q, d, generator=g), torch.randn(n_c, d, generator=g)
    return q, c, random_relevant(n_q, n_c, max_rel, g)


def random_relevant(n_q, n_c, max_rel, g):
    counts = torch.randint(1, max_rel + 1, (n_q,), generator=g).tolist()
    return [set(torch.randperm(n_c, generator=g)[:k].tolist()) for k in counts]


def tied_case(n_q, n_c, max_rel, seed):
    """Embeddings whose cosine and dot scores are exact in float32, so that many scores tie exactly.

    Rows are ±2^j times a one-hot or a ±1 vector of 4 dims: norms are powers of two, every product is exact, so
    ST's and our scores agree bit for bit whatever the matmul blocking (random floats have ulp-level near-ties
    that a different blocking can flip).
    """
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        signs = torch.randint(0, 2, (n, 4), generator=g) * 2.0 - 1  # (n, 4)
        one_hot = F.one_hot(torch.randint(0, 4, (n,), generator=g), 4)  # (n, 4)
        mask = torch.where(torch.rand(n, 1, generator=g) < 0.5, one_hot, 1)  # (n, 4)
        return signs * mask * 2.0 ** torch.randint(-2, 3, (n, 1), generator=g)

    return draw(n_q), draw(n_c), random_relevant(n_q, n_c, max_rel, g)


@pytest.mark.parametrize("chunk_size", [64, 8192])
@pytest.mark.parametrize("max_rel", [1, 25])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_equals_sentence_transformers(similarity, max_rel, chunk_size):
    q, c, rel = random_case(60, 300, 16, max_rel, seed=max_rel)
    ours = information_retrieval_metrics(q, c, rel, similarity=similarity, chunk_size=chunk_size)
    assert_same(ours, st_metrics(q, c, rel, similarity))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_ties_go_to_the_lower_corpus_index_across_chunks(similarity):
    q, c, rel = tied_case(40, 380, 12, seed=3)
    scores = util.cos_sim(q, c) if similarity == "cosine" else q @ c.T  # (Q, C)
    top = scores.sort(1, descending=True).values  # (Q, C)
    assert all((top[:, k - 1] == top[:, k]).float().mean() >= 0.75 for k in (1, 3, 5, 10, 100))  # ties at the cuts
    ours = information_retrieval_metrics(q, c, rel, similarity=similarity, chunk_size=37, map_at=(100, 150))
    assert_same(ours, st_metrics(q, c, rel, similarity, map_at=(100, 150)))
    assert ours == information_retrieval_metrics(q, c, rel, similarity=similarity, map_at=(100, 150))


@pytest.mark.parametrize(("k", "chunk_size"), [(1, 1), (5, 3), (10, 7), (40, 16), (100, 1000)])
def test_top_k_is_the_exact_total_order(k, chunk_size):
    q, c, _ = tied_case(12, 90, 1, seed=9)
    scores = (q @ c.T).tolist()
    expected = [sorted(range(90), key=lambda j: (-row[j], j))[:k] for row in scores]
    assert top_k(q, c, k, chunk_size)[1].tolist() == expected


def test_queries_without_relevant_docs_are_dropped_and_duplicates_count_once():
    q, c, rel = random_case(30, 100, 8, 3, seed=5)
    rel[0], rel[7], rel[29] = set(), [], set()
    rel[3] = [*rel[3], *rel[3]]  # ST's relevant docs are a set
    assert_same(information_retrieval_metrics(q, c, rel), st_metrics(q, c, rel))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_truncate_dim_equals_st(similarity):
    q, c, rel = random_case(30, 120, 32, 4, seed=6)
    ours = information_retrieval_metrics(q, c, rel, similarity=similarity, truncate_dim=8)
    assert_same(ours, st_metrics(q, c, rel, similarity, truncate_dim=8))


def test_other_ks_and_corpus_smaller_than_k():
    ks = {"accuracy_at": (2, 20), "precision_recall_at": (1, 4, 12), "mrr_at": (1, 3, 50), "ndcg_at": (3, 20),
          "map_at": (3, 9)}  # map@3 with up to 5 relevant: the min(k, |R|) denominator
    q, c, rel = random_case(20, 9, 8, 5, seed=7)
    assert_same(information_retrieval_metrics(q, c, rel, chunk_size=4, **ks), st_metrics(q, c, rel, **ks))
    q, c, rel = random_case(20, 7, 8, 2, seed=8)
    assert_same(information_retrieval_metrics(q, c, rel), st_metrics(q, c, rel))


def torchmetrics_values(q, c, rel, ks=(1, 3, 5, 10)) -> dict[str, float]:
    """torchmetrics' values over every (query, doc) pair: positive, tie-free preds avoid its `preds > 0` quirk."""
    scores = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T + 1.0001  # (Q, C) cosine shifted into (0, 2]
    assert all(row.unique().numel() == row.numel() for row in scores)  # no ties
    target = torch.zeros_like(scores, dtype=torch.bool)
    for i, r in enumerate(rel):
        target[i, list(r)] = True
    preds, target = scores.flatten(), target.flatten()
    indexes = torch.arange(len(q))[:, None].expand_as(scores).flatten()
    metrics = {"accuracy": tmr.RetrievalHitRate, "precision": tmr.RetrievalPrecision, "recall": tmr.RetrievalRecall,
               "ndcg": tmr.RetrievalNormalizedDCG, "mrr": tmr.RetrievalMRR, "map": tmr.RetrievalMAP}
    return {f"cosine_{name}@{k}": cls(top_k=k)(preds, target, indexes).item()
            for name, cls in metrics.items() for k in (*ks, 100)}


def test_agrees_with_torchmetrics_with_one_relevant_doc_and_no_ties():
    q, c, rel = random_case(50, 200, 16, 1, seed=8)
    ours = information_retrieval_metrics(q, c, rel)
    theirs = torchmetrics_values(q, c, rel)
    assert set(ours) < set(theirs)  # all 15 of ours
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key], abs=1e-6), key


def test_agrees_with_torchmetrics_where_definitions_agree_with_many_relevant_docs():
    q, c, rel = random_case(50, 200, 16, 25, seed=10)
    ks = (1, 3, 5, 10, 100)
    ours = information_retrieval_metrics(q, c, rel, accuracy_at=ks, precision_recall_at=ks, mrr_at=ks, ndcg_at=ks,
                                         map_at=ks)
    theirs = torchmetrics_values(q, c, rel)
    for key, value in ours.items():
        if "map" not in key:  # torchmetrics' AP divides by the relevant docs retrieved, ST's by min(k, |R|)
            assert value == pytest.approx(theirs[key], abs=1e-6), key
    assert ours["cosine_map@10"] < theirs["cosine_map@10"]


def test_errors():
    q, c = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="similarity must be one of"):
        information_retrieval_metrics(q, c, [{0}] * 3, similarity="l2")
    with pytest.raises(ValueError, match="every k and chunk_size must be ≥ 1"):
        information_retrieval_metrics(q, c, [{0}] * 3, mrr_at=(0,))
    with pytest.raises(ValueError, match="every k and chunk_size must be ≥ 1"):
        information_retrieval_metrics(q, c, [{0}] * 3, chunk_size=0)
    with pytest.raises(ValueError, match="same D"):
        information_retrieval_metrics(q, torch.randn(5, 3), [{0}] * 3)
    with pytest.raises(ValueError, match="same D"):
        information_retrieval_metrics(q[0], c, [{0}])
    with pytest.raises(ValueError, match="corpus is empty"):
        information_retrieval_metrics(q, c[:0], [{0}] * 3)
    with pytest.raises(ValueError, match="relevant has 2 entries for 3 queries"):
        information_retrieval_metrics(q, c, [{0}] * 2)
    with pytest.raises(ValueError, match="truncate_dim 8 must be in"):
        information_retrieval_metrics(q, c, [{0}] * 3, truncate_dim=8)
    with pytest.raises(ValueError, match="index 5 is outside the corpus of 5"):
        information_retrieval_metrics(q, c, [{0}, {1, 5}, set()])
    with pytest.raises(ValueError, match="index -1 is outside"):
        information_retrieval_metrics(q, c, [{0}, {-1}, set()])
    with pytest.raises(ValueError, match="no query has a relevant document"):
        information_retrieval_metrics(q, c, [set()] * 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_collector_orders_deduplicates_and_keeps_dtype(dtype):
    emb = torch.randn(7, 3).to(dtype)
    collector = EmbeddingCollector()
    for ids in ([4, 0, 2], [1, 6, 3, 0], [5, 4]):  # 0 and 4 again, as padded DDP shards repeat items
        collector.update(torch.tensor(ids, dtype=torch.int32), emb[ids])
    out = collector.compute()
    assert out.dtype == dtype and torch.equal(out, emb)


def test_collector_errors():
    collector = EmbeddingCollector()
    with pytest.raises(ValueError, match="no embeddings were collected"), pytest.warns(UserWarning, match="before"):
        collector.compute()
    with pytest.raises(ValueError, match=r"expected ids \(N,\) and embeddings \(N, D\)"):
        collector.update(torch.tensor([0, 1]), torch.randn(3, 2))
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        collector.update(torch.tensor([0.0]), torch.randn(1, 2))
    collector.update(torch.tensor([0, 3, 0]), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"embeddings missing for 2 ids, first \[1, 2\]"):
        collector.compute()
    collector.reset()
    collector.update(torch.tensor([-1, 0]), torch.randn(2, 2))
    with pytest.raises(ValueError, match="ids must be ≥ 0, got -1"):
        collector.compute()


@pytest.mark.parametrize(("n_corpus", "k", "chunk_size"), [(3000, 10, 100), (3000, 100, 250), (600, 5, 7)])
def test_top_k_past_the_first_chunks_is_the_exact_total_order(n_corpus, k, chunk_size):
    # once k rows are held, a chunk's few scores above the k-th best are merged without a top-k: exact ties across
    # chunks (the tied case: 4-dim rows, few distinct scores) and random scores must keep (-score, index) order
    for q, c in (tied_case(30, n_corpus, 1, seed=2)[:2], random_case(30, n_corpus, 6, 1, seed=3)[:2]):
        scores = q @ c.T  # (Q, C) exact in the tied case; in the random case the same products as chunked
        key = torch.stack([-scores, torch.arange(n_corpus).expand_as(scores).float()], -1).tolist()
        expected = [sorted(range(n_corpus), key=lambda j: row[j])[:k] for row in key]
        got_scores, got_index = top_k(q, c, k, chunk_size)
        assert got_index.tolist() == expected
        assert torch.allclose(got_scores, scores.gather(1, got_index), atol=1e-5)  # matmul blocking: ulps apart


def test_top_k_normalises_and_truncates_per_chunk_like_the_whole():
    q, c, _ = random_case(20, 90, 12, 3, seed=4)
    scores, index = top_k(q, c, 15, chunk_size=7, normalize=True, truncate_dim=8)
    qn, cn = F.normalize(q[:, :8], dim=-1), F.normalize(c[:, :8], dim=-1)
    assert torch.equal(index, top_k(qn, cn, 15, 7)[1])
    assert torch.allclose(scores, (qn @ cn.T).gather(1, index), atol=1e-6)


def threaded_shards(world: int, run):
    """Run ``run(rank, gather)`` in ``world`` threads whose ``gather`` stacks every thread's tensor, like
    ``all_gather``; returns each thread's result."""
    barrier, slots, results = threading.Barrier(world), [None] * world, [None] * world

    def gather_for(rank):
        def gather(tensor):
            slots[rank] = tensor
            barrier.wait()
            out = torch.stack(list(slots))
            barrier.wait()  # nobody overwrites a slot before every thread has read them all
            return out
        return gather

    def target(rank):
        results[rank] = run(rank, gather_for(rank))

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("world", [2, 3, 7])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_sharded_corpus_gives_the_metrics_of_the_whole(world, similarity):
    # 60 docs over up to 7 shards: every shard holds fewer than the 100 that map@100 ranks (padded, then merged);
    # the tied case puts exact ties across shards, which the merge must order by corpus index
    for q, c, rel in (random_case(25, 60, 8, 6, seed=5), tied_case(40, 60, 9, seed=8)):
        whole = information_retrieval_metrics(q, c, rel, similarity=similarity, chunk_size=9)

        def run(rank, gather):
            ids = torch.arange(rank, c.shape[0], world)  # the evaluation loaders' assignment: id ≡ rank (mod world)
            return information_retrieval_metrics(q, c[ids], rel, similarity=similarity, chunk_size=4, corpus_ids=ids,
                                                 corpus_size=c.shape[0], gather=gather)

        for sharded in threaded_shards(world, run):
            assert sharded == whole


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank: int, port: int, q, c, rel, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # what the evaluation loaders give each rank: ids ≡ rank (mod 2), the padded last rank repeating item 0,
        # in length-sorted (any) order, over several batches
        n = c.shape[0]
        items = [i % n for i in range(rank, -(-n // 2) * 2, 2)][::-1]
        queries, corpus = EmbeddingCollector(), EmbeddingCollector()
        for batch in (items[:3], items[3:]):
            corpus.update(torch.tensor(batch), c[batch])
        mine = list(range(rank, q.shape[0], 2))
        queries.update(torch.tensor(mine), q[mine])
        gathered = queries.compute()
        ids, shard, size = corpus.shard(rank, 2)
        gather = lambda t: torch.stack(dist_all_gather(t))  # noqa: E731
        out[rank] = (torch.equal(gathered, q), ids.tolist(), size,
                     information_retrieval_metrics(gathered, shard, rel, corpus_ids=ids, corpus_size=size,
                                                   gather=gather, chunk_size=5))
        corpus.reset()
        if rank == 0:  # item 1 (rank 1's) was never embedded: every rank names the shortfall
            corpus.update(torch.tensor([0, 2]), c[[0, 2]])
        else:
            corpus.update(torch.tensor([3]), c[[3]])
        try:
            corpus.shard(rank, 2)
        except ValueError as error:
            out[f"error{rank}"] = str(error)
    finally:
        dist.destroy_process_group()


def dist_all_gather(tensor):
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def test_two_gloo_ranks_score_their_shards_and_agree_with_one_process():
    q, c, rel = tied_case(30, 41, 7, seed=12)  # 41 docs: rank 1 gets a padding repeat of doc 0
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_two_rank_worker, args=(free_port(), q, c, rel, out), nprocs=2)
        out = dict(out)
    whole = information_retrieval_metrics(q, c, rel)
    for rank in (0, 1):
        same_queries, ids, size, metrics = out[rank]
        assert same_queries and ids == list(range(rank, 41, 2)) and size == 41
        assert metrics == whole
        assert out[f"error{rank}"] == ("the 2 processes hold 3 distinct items of a stream of 4: every item must be "
                                       "evaluated once (limit_val_batches / fast_dev_run evaluate part of a stream)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_sentence_transformers():
    q, c, rel = random_case(60, 300, 16, 25, seed=11)
    assert_same(information_retrieval_metrics(q.cuda(), c.cuda(), rel, chunk_size=64), st_metrics(q, c, rel))
    q, c, rel = tied_case(40, 300, 12, seed=3)
    for similarity in ("cosine", "dot"):
        ours = information_retrieval_metrics(q.cuda(), c.cuda(), rel, similarity=similarity, chunk_size=37)
        assert_same(ours, st_metrics(q, c, rel, similarity))
    assert top_k(q.cuda(), c.cuda(), 100, 37)[1].tolist() == top_k(q, c, 100, 37)[1].tolist()
    collector = EmbeddingCollector().cuda()
    collector.update(torch.tensor([1, 0, 1], device="cuda"), c[[1, 0, 1]].cuda())
    assert torch.equal(collector.compute().cpu(), c[:2])
