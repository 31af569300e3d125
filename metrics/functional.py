"""Retrieval metrics with sentence-transformers' InformationRetrievalEvaluator definitions, computed on device.

Why not torchmetrics' retrieval metrics: their MAP divides by the relevant docs retrieved instead of min(k, |R|);
they count a relevant doc scored ≤ 0 as irrelevant, average or arbitrarily order ties, keep queries without relevant
docs and store every (query, doc) score, O(Q·C) memory. Their functional forms agree with ST on the other metrics
when fed rank-derived scores, but called per query they cost ~7 s per 5k-query evaluation on 2 CPU cores, every
epoch. So everything is vectorised here: the corpus is scored in chunks against a running top-k ordered by
(-score, corpus index), ST's order (``torch.topk`` breaks ties arbitrarily, so rows with a tie across the cut are
re-selected with an integer key), and every metric is a reduction of the (Q, k) hit matrix: O(Q·(k + chunk_size))
memory, no per-query loop. The tests prove each value equal to ST itself and, where the definitions agree, to
torchmetrics.

``metrics.collector.EmbeddingCollector`` gathers the embeddings these functions score.
"""

from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metrics.keys import SIMILARITIES


def top_k(queries: Tensor, corpus: Tensor, k: int, chunk_size: int = 8192, *, normalize: bool = False,
          truncate_dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Each query's ``min(k, C)`` best corpus rows by dot product, ordered by (-score, corpus index) like ST.

    The corpus is read chunk by chunk, and cosine normalisation and Matryoshka truncation happen per chunk: memory is
    O(Q·(k + chunk_size)) beyond the inputs, never a second copy of the corpus.

    Args:
        queries: (Q, D) query embeddings (normalised and truncated here alike when asked).
        corpus: (C, D) corpus embeddings.
        k: how many corpus rows to keep per query.
        chunk_size: corpus rows scored at once.
        normalize: L2-normalise queries and corpus rows (cosine similarity), in float32.
        truncate_dim: score the first ``truncate_dim`` dimensions only.

    Returns:
        (Q, min(k, C)) float32 scores and (Q, min(k, C)) corpus indices, best first.
    """
    queries = _prepare(queries, normalize, truncate_dim)
    best_scores = queries.new_empty(queries.shape[0], 0)  # (Q, 0)
    best_index = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)  # (Q, 0)
    for start in range(0, corpus.shape[0], chunk_size):
        scores = queries @ _prepare(corpus[start : start + chunk_size], normalize, truncate_dim).T  # (Q, c)
        if best_index.shape[1] == k:
            # Only a score above the running k-th best can enter (a tie loses: its index is higher). Past the first
            # chunks few do, and selecting them costs a comparison per score instead of a top-k per row.
            above = scores > best_scores[:, -1:]  # (Q, c)
            rows, columns = above.nonzero(as_tuple=True)  # (M,) each, row-major
            if rows.numel() <= scores.numel() // 8:
                best_scores, best_index = _merge_candidates(best_scores, best_index, rows, scores[rows, columns],
                                                            columns + start)
                continue
        chunk_scores, chunk_index = _top_k_set(scores, min(k, scores.shape[1]))  # (Q, k)
        # every earlier index is lower and the running best is already tie-ordered: a stable sort keeps ties by index
        best_scores, best_index = _merge(best_scores, best_index, chunk_scores, chunk_index + start, k)
    return best_scores, best_index


def _merge_candidates(best_scores: Tensor, best_index: Tensor, rows: Tensor, scores: Tensor,
                      index: Tensor) -> tuple[Tensor, Tensor]:
    """The running (Q, k) best merged with scattered candidates (row, score, index), each above its row's k-th
    best and of a higher index than every running one: per row, the k best by (-score, index)."""
    n_queries, k = best_scores.shape
    all_rows = torch.cat([torch.arange(n_queries, device=rows.device).repeat_interleave(k), rows])  # (Q·k + M,)
    all_scores = torch.cat([best_scores.flatten(), scores])
    all_index = torch.cat([best_index.flatten(), index])
    # (row, -score, index) order by stable sorts from the last key to the first; within a row the running best
    # come first and candidates in column order, so index order already holds
    order = all_scores.argsort(descending=True, stable=True)
    order = order[all_rows[order].argsort(stable=True)]
    counts = torch.bincount(all_rows, minlength=n_queries)  # (Q,) k + the row's candidates
    starts = counts.cumsum(0) - counts  # (Q,)
    keep = order.view(1, -1)[:, (starts[:, None] + torch.arange(k, device=rows.device)).flatten()].view(n_queries, k)
    return all_scores[keep], all_index[keep]


def _prepare(embeddings: Tensor, normalize: bool, truncate_dim: int | None) -> Tensor:
    embeddings = embeddings[:, :truncate_dim].float()  # a view when already float32 and not truncated
    return F.normalize(embeddings, dim=-1) if normalize else embeddings


def _merge(scores_a: Tensor, index_a: Tensor, scores_b: Tensor, index_b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of two tie-ordered (Q, ·) lists whose indices in ``a`` are all below those in ``b``."""
    return _best(torch.cat([scores_a, scores_b], 1), torch.cat([index_a, index_b], 1), k)  # (Q, ka + kb) → (Q, k)


def _best(scores: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k best by score, ties in their order along the row (put them in index order first)."""
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]  # (Q, k)
    return scores.gather(1, order), index.gather(1, order)


def merge_top_k(scores: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge top-k lists over disjoint corpus shards into the top-k over the whole corpus, in (-score, index) order.

    Args:
        scores: (S, Q, k') each shard's best scores, best first (padding: ``-inf``).
        index: (S, Q, k') their corpus indices (padding: any index, after every real one).
        k: how many to keep.

    Returns:
        (Q, k) scores and (Q, k) corpus indices, best first.
    """
    scores = scores.permute(1, 0, 2).flatten(1)  # (Q, S·k')
    index = index.permute(1, 0, 2).flatten(1)
    by_index = index.argsort(dim=1, stable=True)  # shards interleave: order by index, then stably by score
    return _best(scores.gather(1, by_index), index.gather(1, by_index), k)


def _top_k_set(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best columns of each row by (-score, column), as (scores, columns) in ascending column order."""
    values, index = scores.topk(min(k + 1, scores.shape[1]), dim=1)  # (Q, k + 1) best first
    cut = values[:, k - 1 : k]  # (Q, 1)
    # topk picks arbitrarily among scores tied at the cut (the extra column shows such a tie): re-select those rows
    # with an integer key that puts every column above the cut first, then the tied columns by index
    rows = (values[:, k:] == cut).any(1).nonzero().squeeze(1)
    index = index[:, :k]  # (Q, k)
    if rows.numel():
        tied, n = scores[rows], scores.shape[1]  # (r, c)
        column = torch.arange(n, device=scores.device)  # (c,)
        key = torch.where(tied > cut[rows], column, torch.where(tied == cut[rows], column + n, 2 * n))  # (r, c)
        index[rows] = key.topk(k, dim=1, largest=False).indices
    index = index.sort(dim=1).values  # (Q, k)
    return scores.gather(1, index), index


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
    corpus_ids: Tensor | None = None,
    corpus_size: int | None = None,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """ST's information-retrieval metrics for ``queries`` against ``corpus``, on the tensors' device.

    Scores are float32. Queries without a relevant doc are dropped; the rest are ranked against the whole corpus,
    ties going to the lower corpus index, and every metric is averaged over them.

    Sharded (one process per device, each holding a part of the corpus): every process passes all queries, its own
    corpus rows with their ``corpus_ids``, the whole corpus's ``corpus_size`` and a ``gather`` that all-gathers a
    tensor across the processes; each scores its shard, the top-k lists are gathered and merged, and every process
    returns the metrics of the whole corpus, identical to one process holding all of it.

    Args:
        queries: (Q, D) query embeddings.
        corpus: (C, D) document embeddings (this process's shard when sharded).
        relevant: ``relevant[q]`` = corpus row indices relevant to query ``q`` (duplicates count once).
        similarity: ``cosine`` (embeddings L2-normalised) or ``dot`` (raw).
        accuracy_at: ks of accuracy (1 if any relevant doc is in the top k).
        precision_recall_at: ks of precision (hits / k, even if k > C) and recall (hits / |R|).
        mrr_at: ks of mean reciprocal rank of the first relevant doc in the top k.
        ndcg_at: ks of nDCG with binary gains, the ideal DCG over min(|R|, k) relevant docs.
        map_at: ks of mean average precision, divided by min(k, |R|) as ST does.
        truncate_dim: evaluate the first ``truncate_dim`` dimensions only (a Matryoshka prefix).
        chunk_size: corpus rows scored at once; memory is O(Q·(max k + chunk_size)).
        corpus_ids: (C,) ascending indices of ``corpus``'s rows in the whole corpus; default ``0 … C - 1``.
        corpus_size: documents in the whole corpus; default C.
        gather: ``tensor (Q, k) → (S, Q, k)`` across S processes (e.g. ``LightningModule.all_gather``); None: one
            process holds the whole corpus.

    Returns:
        ``{similarity}_{metric}@{k}`` → value in ST's key order, e.g. ``cosine_ndcg@10``.

    Raises:
        ValueError: on an unknown similarity, a k or chunk_size < 1, shapes that do not fit, an empty corpus,
            a relevant doc outside the corpus, or no query with a relevant doc.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    all_k = [*accuracy_at, *precision_recall_at, *mrr_at, *ndcg_at, *map_at]
    if not all_k or min(all_k) < 1 or chunk_size < 1:
        raise ValueError(f"every k and chunk_size must be ≥ 1 (and some k given), got ks {all_k}, "
                         f"chunk_size {chunk_size}")
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries and corpus must be (Q, D) and (C, D) with the same D, got {tuple(queries.shape)} "
                         f"and {tuple(corpus.shape)}")
    n_queries = queries.shape[0]
    n_corpus = corpus.shape[0] if corpus_size is None else corpus_size
    if corpus_ids is not None and corpus_ids.shape != (corpus.shape[0],):
        raise ValueError(f"corpus_ids must hold one index per corpus row, got {tuple(corpus_ids.shape)} for "
                         f"{corpus.shape[0]} rows")
    if n_corpus == 0:
        raise ValueError("the corpus is empty: there is nothing to retrieve")
    if len(relevant) != n_queries:
        raise ValueError(f"relevant has {len(relevant)} entries for {n_queries} queries: one collection per query")
    if truncate_dim is not None and not 1 <= truncate_dim <= queries.shape[1]:
        raise ValueError(f"truncate_dim {truncate_dim} must be in [1, {queries.shape[1]}] (the embedding size)")

    device = queries.device
    docs = torch.tensor([d for rel in relevant for d in rel], dtype=torch.long, device=device)  # (P,)
    if docs.numel() and not 0 <= int(docs.min()) <= int(docs.max()) < n_corpus:
        bad = docs[(docs < 0) | (docs >= n_corpus)][0]
        raise ValueError(f"relevant document index {int(bad)} is outside the corpus of {n_corpus} documents")
    counts = torch.tensor([len(rel) for rel in relevant], dtype=torch.long, device=device)  # (Q,)
    owner = torch.repeat_interleave(torch.arange(n_queries, device=device), counts)  # (P,) query of each doc
    pairs = torch.unique(owner * n_corpus + docs)  # (P',) sorted (query, doc) keys, duplicates dropped
    n_rel = torch.bincount(pairs // n_corpus, minlength=n_queries)  # (Q,)
    kept = n_rel.nonzero().squeeze(1)  # (Q',) queries with a relevant doc
    if kept.numel() == 0:
        raise ValueError("no query has a relevant document: every metric would be undefined")
    n_rel = n_rel[kept].double()  # (Q',)

    k = min(max(all_k), n_corpus)
    scores, ranked = top_k(queries[kept], corpus, k, chunk_size, normalize=similarity == "cosine",
                           truncate_dim=truncate_dim)  # (Q', k') with k' = min(k, this shard's rows)
    if corpus_ids is not None:
        ranked = corpus_ids.to(device)[ranked]  # ascending ids: the (-score, index) order holds
    if gather is not None:
        pad = k - ranked.shape[1]  # a shard smaller than k: every shard must send the same shape
        scores = F.pad(scores, (0, pad), value=-torch.inf)
        ranked = F.pad(ranked, (0, pad), value=n_corpus)
        scores, ranked = merge_top_k(gather(scores), gather(ranked), k)  # (Q', k) over the whole corpus
    ranked_keys = kept[:, None] * n_corpus + ranked  # (Q', k)
    found = torch.searchsorted(pairs, ranked_keys).clamp(max=pairs.numel() - 1)  # (Q', k)
    hits = ((pairs[found] == ranked_keys) & (ranked < n_corpus)).double()  # (Q', k) 1: a relevant doc at that rank

    n_ranked = hits.shape[1]
    rank = torch.arange(1, n_ranked + 1, device=device, dtype=torch.float64)  # (K,)
    cum_hits = hits.cumsum(1)  # (Q', K) relevant docs within the top r
    discount = 1 / torch.log2(rank + 1)  # (K,)

    def hits_at(k: int) -> Tensor:
        return cum_hits[:, min(k, n_ranked) - 1]  # (Q',)

    values = {}
    for k in accuracy_at:
        values[f"accuracy@{k}"] = (hits_at(k) > 0).double()
    for k in precision_recall_at:
        values[f"precision@{k}"] = hits_at(k) / k
    for k in precision_recall_at:
        values[f"recall@{k}"] = hits_at(k) / n_rel
    for k in ndcg_at:
        ideal = discount.cumsum(0)[n_rel.clamp(max=k).long() - 1]  # (Q',) |R| ≤ C, so min(|R|, k) ≤ K
        values[f"ndcg@{k}"] = (hits[:, :k] * discount[:k]).sum(1) / ideal
    for k in mrr_at:
        values[f"mrr@{k}"] = (hits[:, :k] / rank[:k]).amax(1)  # 1 / rank of the first hit, 0 without one
    for k in map_at:
        values[f"map@{k}"] = (hits[:, :k] * cum_hits[:, :k] / rank[:k]).sum(1) / n_rel.clamp(max=k)
    means = torch.stack([v.mean() for v in values.values()]).tolist()  # one device → host copy for all metrics
    return {f"{similarity}_{name}": mean for name, mean in zip(values, means)}
