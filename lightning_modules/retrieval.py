"""Retrieval metrics with sentence-transformers' InformationRetrievalEvaluator definitions, computed on device.

Why not torchmetrics' retrieval metrics directly: they differ from ST in four ways that change the numbers
(MAP divides by relevant docs retrieved rather than min(k, |R|); a relevant doc scored ≤ 0 counts as irrelevant;
ties are averaged or ordered arbitrarily; queries without relevant docs are kept) and they keep every
(query, doc) score, O(Q·C) memory. Here the corpus is scored in chunks with a running top-k whose ties go to the
lower corpus index (ST's order), the result is a (Q, k) hit matrix, and every metric is a vectorised reduction of
it: O(Q·k) memory, no per-query Python loop. ``EmbeddingCollector`` is the torchmetrics ``Metric`` that gathers
embeddings across batches and DDP ranks. Tests check every value against ST itself and, where definitions agree,
against torchmetrics.
"""

from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

SIMILARITIES = ("cosine", "dot")


def top_k(queries: Tensor, corpus: Tensor, k: int, chunk_size: int = 8192) -> Tensor:
    """Indices (Q, min(k, C)) of the best-scoring corpus rows per query, ordered by (-score, corpus index)."""
    best_scores = best_index = None
    for start in range(0, corpus.shape[0], chunk_size):
        scores = queries @ corpus[start : start + chunk_size].T  # (Q, c)
        index = torch.arange(start, start + scores.shape[1], device=scores.device).expand_as(scores)  # (Q, c)
        if best_scores is not None:
            # previous best (all lower indices, already tie-ordered) first: the stable sort keeps ties by index
            scores, index = torch.cat([best_scores, scores], 1), torch.cat([best_index, index], 1)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (Q, k)
        best_scores, best_index = scores.gather(1, order), index.gather(1, order)
    return best_index


def information_retrieval_metrics(
    queries: Tensor,
    corpus: Tensor,
    relevant: Sequence[Collection[int]],
    *,
    similarity: str = "cosine",
    accuracy_at: Sequence[int] = (1, 3, 5, 10),
    precision_recall_at: Sequence[int] = (1, 3, 5, 10),
    mrr_at: Sequence[int] = (10,),
    ndcg_at: Sequence[int] = (10,),
    map_at: Sequence[int] = (100,),
    truncate_dim: int | None = None,
    chunk_size: int = 8192,
) -> dict[str, float]:
    """ST's information-retrieval metrics for ``queries`` (Q, D) against ``corpus`` (C, D).

    Args:
        queries: query embeddings.
        corpus: document embeddings.
        relevant: ``relevant[q]`` = corpus row indices relevant to query ``q``; queries with none are dropped.
        similarity: ``cosine`` or ``dot``.
        accuracy_at: ks of accuracy (any relevant doc in the top k).
        precision_recall_at: ks of precision (hits / k) and recall (hits / |R|).
        mrr_at: ks of mean reciprocal rank.
        ndcg_at: ks of nDCG with binary gains.
        map_at: ks of mean average precision, divided by min(k, |R|) as ST does.
        truncate_dim: evaluate the first ``truncate_dim`` dimensions (a Matryoshka prefix).
        chunk_size: corpus rows scored at once.

    Returns:
        ``{similarity}_{metric}@{k}`` → value, e.g. ``cosine_ndcg@10``.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries and corpus must be (Q, D) and (C, D) with the same D, got {tuple(queries.shape)} "
                         f"and {tuple(corpus.shape)}")
    if corpus.shape[0] == 0:
        raise ValueError("the corpus is empty")
    if len(relevant) != queries.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} entries for {queries.shape[0]} queries")
    if truncate_dim is not None:
        if not 0 < truncate_dim <= queries.shape[1]:
            raise ValueError(f"truncate_dim {truncate_dim} must be in [1, {queries.shape[1]}] (the embedding size)")
        queries, corpus = queries[:, :truncate_dim], corpus[:, :truncate_dim]
    keep = [q for q, rel in enumerate(relevant) if len(rel) > 0]
    if not keep:
        raise ValueError("no query has a relevant document")
    n_corpus = corpus.shape[0]
    if any(not 0 <= d < n_corpus for q in keep for d in relevant[q]):
        raise ValueError(f"a relevant document index is outside the corpus (size {n_corpus})")
    device = queries.device
    queries = queries[torch.tensor(keep, device=device)].float()
    corpus = corpus.float()
    if similarity == "cosine":
        queries, corpus = F.normalize(queries, dim=-1), F.normalize(corpus, dim=-1)

    max_k = max([*accuracy_at, *precision_recall_at, *mrr_at, *ndcg_at, *map_at])
    ranked = top_k(queries, corpus, max_k, chunk_size)  # (Q, K)
    rel_pairs = torch.tensor([d for q in keep for d in relevant[q]], device=device)
    q_pos = torch.repeat_interleave(torch.arange(len(keep), device=device),
                                    torch.tensor([len(relevant[q]) for q in keep], device=device))
    # hits[q, r] = the document at rank r is relevant to q: compare against each query's relevant set via sorting
    relevant_mask = torch.zeros(len(keep), n_corpus, dtype=torch.bool, device=device) if n_corpus * len(keep) <= 2**27 \
        else None
    if relevant_mask is not None:
        relevant_mask[q_pos, rel_pairs] = True
        hits = relevant_mask.gather(1, ranked)  # (Q, K)
    else:  # very large Q·C: test membership per pair key without a dense mask
        keys = q_pos * n_corpus + rel_pairs
        keys = torch.sort(keys).values
        ranked_keys = torch.arange(len(keep), device=device)[:, None] * n_corpus + ranked  # (Q, K)
        where = torch.searchsorted(keys, ranked_keys).clamp(max=len(keys) - 1)
        hits = keys[where] == ranked_keys
    hits = hits.float()
    n_rel = torch.tensor([len(relevant[q]) for q in keep], device=device, dtype=torch.float32)  # (Q,)
    ranks = torch.arange(1, hits.shape[1] + 1, device=device, dtype=torch.float32)  # (K,)
    cum_hits = hits.cumsum(1)  # (Q, K)

    def at(k: int) -> Tensor:
        return cum_hits[:, min(k, hits.shape[1]) - 1]  # (Q,) hits within the top k

    out = {}
    for k in accuracy_at:
        out[f"accuracy@{k}"] = (at(k) > 0).float().mean()
    for k in precision_recall_at:
        out[f"precision@{k}"] = (at(k) / k).mean()
        out[f"recall@{k}"] = (at(k) / n_rel).mean()
    for k in mrr_at:
        top = hits[:, :k]
        first = torch.where(top.any(1), 1.0 / (top.argmax(1) + 1).float(), torch.zeros_like(n_rel))
        out[f"mrr@{k}"] = first.mean()
    for k in ndcg_at:
        discounts = 1.0 / torch.log2(ranks[:k] + 1)  # (k,)
        dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(1)
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float32)), 0)
        idcg = ideal[(n_rel.clamp(max=k) - 1).long()]
        out[f"ndcg@{k}"] = (dcg / idcg).mean()
    for k in map_at:
        top = hits[:, :k]
        precision_at_hits = (top * cum_hits[:, : top.shape[1]] / ranks[: top.shape[1]]).sum(1)
        out[f"map@{k}"] = (precision_at_hits / torch.minimum(n_rel, torch.tensor(float(k), device=device))).mean()
    order = [f"accuracy@{k}" for k in accuracy_at] + [f"{m}@{k}" for m in ("precision", "recall")
                                                       for k in precision_recall_at]
    order += [f"ndcg@{k}" for k in ndcg_at] + [f"mrr@{k}" for k in mrr_at] + [f"map@{k}" for k in map_at]
    values = torch.stack([out[name] for name in order]).tolist()  # one device → host copy for all metrics
    return {f"{similarity}_{name}": value for name, value in zip(order, values)}


class EmbeddingCollector(Metric):
    """Accumulates one evaluation stream's embeddings across batches and DDP ranks, keyed by item id.

    ``update(ids, embeddings)`` per batch; ``compute()`` returns the embeddings ordered by id, each id once
    (distributed samplers may repeat items to even out ranks).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")

    def update(self, ids: Tensor, embeddings: Tensor) -> None:
        if ids.ndim != 1 or embeddings.ndim != 2 or ids.shape[0] != embeddings.shape[0]:
            raise ValueError(f"expected ids (N,) and embeddings (N, D), got {tuple(ids.shape)} and {tuple(embeddings.shape)}")
        self.ids.append(ids.to(self.device))
        self.embeddings.append(embeddings.detach())

    def compute(self) -> Tensor:
        ids, embeddings = dim_zero_cat(self.ids), dim_zero_cat(self.embeddings)
        unique, first = _first_occurrence(ids)
        expected = torch.arange(int(unique.max()) + 1, device=unique.device) if unique.numel() else unique
        if unique.numel() != expected.numel():
            missing = sorted(set(expected.tolist()) - set(unique.tolist()))[:10]
            raise ValueError(f"embeddings missing for ids {missing}: every item of the stream must be evaluated "
                             f"(limit_val_batches / fast_dev_run evaluate part of a stream)")
        return embeddings[first]


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and, for each, the position of its first occurrence in ``ids``."""
    unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full_like(unique, ids.numel()).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first
