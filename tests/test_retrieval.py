import pytest
import torch
import torchmetrics.retrieval as tmr

from lightning_modules.retrieval import EmbeddingCollector, information_retrieval_metrics


class StubModel:
    """Stands in for a SentenceTransformer: 'encodes' text ids to fixed embeddings."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def _encode(self, texts, truncate_dim=None, **kwargs):
        out = torch.stack([self.table[t] for t in texts])
        return out[:, :truncate_dim] if truncate_dim else out

    encode_query = encode_document = _encode


def st_metrics(queries, corpus, relevant, similarity="cosine", truncate_dim=None, chunk=50_000):
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    # zero-padded ids: ST breaks ties by corpus-id string, which then equals corpus index order
    q_ids, c_ids = [f"q{i:06d}" for i in range(len(queries))], [f"c{i:06d}" for i in range(len(corpus))]
    fn = {"cosine": util.cos_sim, "dot": util.dot_score}[similarity]
    evaluator = InformationRetrievalEvaluator(
        dict(zip(q_ids, q_ids)), dict(zip(c_ids, c_ids)),
        {q_ids[q]: {c_ids[d] for d in rel} for q, rel in enumerate(relevant) if rel},
        score_functions={similarity: fn}, truncate_dim=truncate_dim, corpus_chunk_size=chunk)
    stub = StubModel({**dict(zip(q_ids, queries)), **dict(zip(c_ids, corpus))})
    scores = evaluator.compute_all_metrics(stub)[similarity]
    names = {"accuracy@k": "accuracy", "precision@k": "precision", "recall@k": "recall", "ndcg@k": "ndcg",
             "mrr@k": "mrr", "map@k": "map"}
    return {f"{similarity}_{names[m]}@{k}": float(v) for m, values in scores.items() for k, v in values.items()}


def assert_same(ours, theirs):
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def random_case(n_q, n_c, d, max_rel, seed, quantise=None):
    g = torch.Generator().manual_seed(seed)
    q, c = torch.randn(n_q, d, generator=g), torch.randn(n_c, d, generator=g)
    if quantise:  # few distinct values: many exactly tied scores
        q, c = (q * quantise).round(), (c * quantise).round()
    counts = torch.randint(1, max_rel + 1, (n_q,), generator=g).tolist()
    relevant = [set(torch.randperm(n_c, generator=g)[:k].tolist()) for k in counts]
    return q, c, relevant


@pytest.mark.parametrize("max_rel", [1, 25])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_equals_sentence_transformers(max_rel, similarity):
    q, c, rel = random_case(60, 300, 16, max_rel, seed=max_rel)
    assert_same(information_retrieval_metrics(q, c, rel, similarity=similarity), st_metrics(q, c, rel, similarity))


def test_ties_go_to_the_lower_corpus_index_across_chunks():
    q, c, rel = random_case(40, 257, 4, 5, seed=3, quantise=0.5)
    c = torch.cat([c, c[:60]])  # exact duplicate documents: tied scores at every rank
    ours = information_retrieval_metrics(q, c, rel, chunk_size=37)
    assert_same(ours, st_metrics(q, c, rel))
    assert_same(ours, information_retrieval_metrics(q, c, rel, chunk_size=10_000))


def test_queries_without_relevant_docs_are_dropped():
    q, c, rel = random_case(30, 100, 8, 3, seed=5)
    rel[0], rel[7] = set(), set()
    assert_same(information_retrieval_metrics(q, c, rel), st_metrics(q, c, rel))


def test_truncate_dim_equals_st():
    q, c, rel = random_case(30, 120, 32, 4, seed=6)
    assert_same(information_retrieval_metrics(q, c, rel, truncate_dim=8), st_metrics(q, c, rel, truncate_dim=8))


def test_corpus_smaller_than_k():
    q, c, rel = random_case(10, 7, 8, 2, seed=7)
    assert_same(information_retrieval_metrics(q, c, rel), st_metrics(q, c, rel))


def test_agrees_with_torchmetrics_with_one_relevant_doc_and_no_ties():
    q, c, rel = random_case(50, 200, 16, 1, seed=8)
    ours = information_retrieval_metrics(q, c, rel, map_at=(200,), mrr_at=(200,), ndcg_at=(10,))
    scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).T
    target = torch.zeros_like(scores, dtype=torch.bool)
    for i, r in enumerate(rel):
        target[i, list(r)] = True
    # torchmetrics ignores relevant docs scored <= 0 (REFERENCE.md): shift cosines into (0, 2]
    preds, indexes = (scores + 1.0001).flatten(), torch.arange(50)[:, None].expand_as(scores).flatten()
    target = target.flatten()
    assert ours["cosine_ndcg@10"] == pytest.approx(tmr.RetrievalNormalizedDCG(top_k=10)(preds, target, indexes).item(), abs=1e-6)
    assert ours["cosine_map@200"] == pytest.approx(tmr.RetrievalMAP()(preds, target, indexes).item(), abs=1e-6)
    assert ours["cosine_mrr@200"] == pytest.approx(tmr.RetrievalMRR()(preds, target, indexes).item(), abs=1e-6)
    assert ours["cosine_recall@5"] == pytest.approx(tmr.RetrievalRecall(top_k=5)(preds, target, indexes).item(), abs=1e-6)
    assert ours["cosine_accuracy@3"] == pytest.approx(tmr.RetrievalHitRate(top_k=3)(preds, target, indexes).item(), abs=1e-6)


def test_errors():
    q, c = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="similarity must be one of"):
        information_retrieval_metrics(q, c, [{0}] * 3, similarity="l2")
    with pytest.raises(ValueError, match="same D"):
        information_retrieval_metrics(q, torch.randn(5, 3), [{0}] * 3)
    with pytest.raises(ValueError, match="relevant has 2 entries for 3 queries"):
        information_retrieval_metrics(q, c, [{0}] * 2)
    with pytest.raises(ValueError, match="outside the corpus"):
        information_retrieval_metrics(q, c, [{5}] * 3)
    with pytest.raises(ValueError, match="corpus is empty"):
        information_retrieval_metrics(q, c[:0], [{0}] * 3)
    with pytest.raises(ValueError, match="truncate_dim 8"):
        information_retrieval_metrics(q, c, [{0}] * 3, truncate_dim=8)
    with pytest.raises(ValueError, match="no query has a relevant document"):
        information_retrieval_metrics(q, c, [set()] * 3)


def test_collector_orders_and_deduplicates():
    collector = EmbeddingCollector()
    emb = torch.randn(6, 3)
    collector.update(torch.tensor([4, 0, 2]), emb[[4, 0, 2]])
    collector.update(torch.tensor([1, 5, 3, 0]), emb[[1, 5, 3, 0]])  # 0 again, as a padded DDP shard repeats items
    assert torch.equal(collector.compute(), emb)


def test_collector_missing_id():
    collector = EmbeddingCollector()
    collector.update(torch.tensor([0, 2]), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"embeddings missing for ids \[1\]"):
        collector.compute()
