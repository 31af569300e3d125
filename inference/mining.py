"""Hard-negative mining: the negatives sentence-transformers' ``util.mine_hard_negatives`` selects, on the device.

:func:`mine_hard_negatives` works on embeddings. Each query's candidate pool is its best ``range_max + P + 1`` corpus
rows by cosine similarity (P: the most positives any query has, and one more for the query's own text, so that
removing a query's positives and itself still leaves ``range_max`` candidates; ST 6.3), ranked in corpus chunks by
:func:`metrics.functional.top_k` (ties to the lower corpus row), so memory is O(Q·(range_max + P) +
query_chunk_size·chunk_size), never the (Q, C) score matrix.
Then, as ST does and in ST's order:

1. the query's positives leave the pool (a query in several rows: all of its positives; another query's positive
   stays, it is a negative here), and so does the corpus row holding the query's own text, if any (ST 6.3);
2. ``absolute_margin``: candidates scoring above ``s⁺ - absolute_margin`` leave, ``relative_margin``: above
   ``s⁺ - |s⁺|·relative_margin``, with ``s⁺`` the query's lowest positive score (the harder positive);
3. ``max_score``: candidates above it leave; ``min_score``: candidates below it leave;
4. the best ``range_max`` survivors are kept and the first ``range_min`` of them skipped: ranks count the survivors,
   not the raw ranking;
5. ``top`` keeps the next ``num_negatives``; ``random`` draws ``num_negatives`` of the survivors with
   ``random.Random(seed).sample(range(n), k)`` per query in query order (ST's call, on its own generator instead of
   the global one) and orders them best first.

A query left with fewer than ``num_negatives`` candidates gets -1 (score -inf) in the missing places; ST's
``n-tuple`` output, which :func:`mine_dataset` writes, drops every row of such a query and counts them.

:func:`mine_dataset` is the dataset-level step: (anchor, positive) rows → corpus (the positives, plus an optional
extra corpus, deduplicated in order of first appearance) → embeddings from an ``Embedder`` → rows
``(anchor, positive, negative_1 … negative_k)``, one per distinct (anchor, positive) pair, grouped by anchor in order
of first appearance, exactly ST's ``output_format="n-tuple"`` rows.
"""

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import torch
import torch.nn.functional as F
from torch import Tensor

from metrics.functional import top_k

SAMPLING_STRATEGIES = ("top", "random")
# the prompt names ST's encode_query / encode_document use when the model has them (first found)
QUERY_PROMPTS, DOCUMENT_PROMPTS = ("query",), ("document", "passage", "corpus")
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")  # ST's order


@dataclass(frozen=True)
class MinedNegatives:
    """What :func:`mine_hard_negatives` found.

    Attributes:
        indices: (Q, num_negatives) corpus rows, best first; -1 where the query had too few candidates.
        scores: (Q, num_negatives) their cosine similarity to the query; -inf where ``indices`` is -1.
        positive_scores: (Q,) each query's lowest positive score (the margins' reference).
        range_max: the ``range_max`` used (derived from the options when not given, as ST derives it).
        skipped: candidates each filter removed, by option name (only those not already removed count).
    """

    indices: Tensor
    scores: Tensor
    positive_scores: Tensor
    range_max: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> Tensor:
        """(Q,) True where all ``num_negatives`` negatives were found."""
        return (self.indices >= 0).all(1)

    @property
    def num_incomplete(self) -> int:
        """Queries with fewer than ``num_negatives`` negatives."""
        return int((~self.complete).sum())


def default_range_max(num_negatives: int, range_min: int, max_positives: int, filtering: bool) -> int:
    """ST's ``range_max`` when none is given: room for the positives, ``range_min`` and ``num_negatives``, ten times as
    many candidates when a margin or ``max_score`` may remove some (``min_score`` alone does not widen it in ST)."""
    return range_min + num_negatives * (10 if filtering else 1) + max_positives


def mine_hard_negatives(
    query_embeddings: Tensor,
    corpus_embeddings: Tensor,
    positive_ids: Sequence[int | Sequence[int]] | Tensor,
    *,
    query_corpus_ids: Sequence[int] | Tensor | None = None,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    sampling_strategy: str = "top",
    seed: int = 42,
    chunk_size: int = 8192,
    query_chunk_size: int = 1024,
) -> MinedNegatives:
    """Each query's hard negatives among the corpus rows, selected as sentence-transformers' ``mine_hard_negatives``
    selects them from the same embeddings (see the module docstring for the steps).

    Scores are cosine similarities in float32 on ``query_embeddings``' device (the embeddings are L2-normalised here).

    Args:
        query_embeddings: (Q, D) one row per distinct query.
        corpus_embeddings: (C, D) one row per distinct corpus text.
        positive_ids: ``positive_ids[q]``: the corpus rows of query ``q``'s positives (at least one), or its one
            positive's row; a (Q,) tensor: one positive per query. ST sizes the candidate pool by the most dataset
            rows any query has, repeats included: pass one id per row (repeats allowed) to reproduce it.
        query_corpus_ids: ``query_corpus_ids[q]``: the corpus row whose text is query ``q``'s own text, -1 where the
            corpus does not hold it; that row is never a negative of ``q`` (ST 6.3). None: no query is in the corpus.
        num_negatives: negatives per query (ST: ``num_negatives``).
        range_min: skip this many best surviving candidates (likely unlabelled positives).
        range_max: consider only the best ``range_max`` surviving candidates; None: ST's default,
            :func:`default_range_max`.
        max_score: drop candidates scoring above it.
        min_score: drop candidates scoring below it.
        absolute_margin: drop candidates scoring above the query's lowest positive score minus this.
        relative_margin: drop candidates scoring above ``s⁺ - |s⁺|·relative_margin`` (0.05: NV-Retriever's
            TopK-PercPos 95%).
        sampling_strategy: ``top`` (the best survivors) or ``random`` (drawn among them).
        seed: seed of ``random``'s draws; the same seed as ST's ``random.seed(seed)`` gives ST's negatives.
        chunk_size: corpus rows scored at once.
        query_chunk_size: queries ranked at once; beyond the results, memory holds ``query_chunk_size ×
            (chunk_size + (range_max + P)·D)`` floats.

    Returns:
        The negatives, their scores and the filters' counts.

    Raises:
        ValueError: on shapes that do not fit, a query without a positive, a positive outside the corpus, an unknown
            ``sampling_strategy``, or ranges that cannot give ``num_negatives`` (ST's checks).
    """
    if query_embeddings.ndim != 2 or corpus_embeddings.ndim != 2 or \
            query_embeddings.shape[1] != corpus_embeddings.shape[1]:
        raise ValueError(f"query_embeddings and corpus_embeddings must be (Q, D) and (C, D) with the same D, got "
                         f"{tuple(query_embeddings.shape)} and {tuple(corpus_embeddings.shape)}")
    if query_embeddings.shape[0] == 0 or corpus_embeddings.shape[0] == 0:
        raise ValueError(f"nothing to mine: {query_embeddings.shape[0]} queries and {corpus_embeddings.shape[0]} "
                         f"corpus rows")
    if sampling_strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling_strategy must be one of {SAMPLING_STRATEGIES}, got {sampling_strategy!r}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ValueError(f"chunk_size and query_chunk_size must be ≥ 1, got {chunk_size} and {query_chunk_size}")
    device = query_embeddings.device
    positives = _padded_positives(positive_ids, query_embeddings.shape[0], corpus_embeddings.shape[0], device)
    max_positives = positives.shape[1]  # the longest list, repeats included
    own = _query_corpus_ids(query_corpus_ids, query_embeddings.shape[0], corpus_embeddings.shape[0], device)  # (Q,)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be ≥ 1, got {num_negatives}")
    if range_max is None:
        filtering = absolute_margin is not None or relative_margin is not None or max_score is not None
        range_max = default_range_max(num_negatives, range_min, max_positives, filtering)
    if range_min < 0:
        raise ValueError(f"range_min must be ≥ 0, got {range_min}")
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got range_min={range_min} and "
                         f"range_max={range_max}")
    if num_negatives > range_max - range_min:
        raise ValueError(f"cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates "
                         f"remain after skipping the first range_min={range_min} of range_max={range_max}; lower "
                         f"num_negatives or range_min, or raise range_max")

    queries = F.normalize(query_embeddings.float(), dim=-1)  # (Q, D)
    corpus = F.normalize(corpus_embeddings.to(device).float(), dim=-1)  # (C, D)
    filters = {"absolute_margin": absolute_margin, "relative_margin": relative_margin, "max_score": max_score,
               "min_score": min_score}
    rng = random.Random(seed) if sampling_strategy == "random" else None
    skipped = torch.zeros(len(FILTERS), dtype=torch.long, device=device)  # (4,)
    parts = []  # (indices, scores, lowest positive score) per block of queries
    for start in range(0, queries.shape[0], query_chunk_size):
        block = slice(start, start + query_chunk_size)
        # room for the positives and the query's own text, all of which leave the pool (ST 6.3's pool size)
        scores, index = _candidate_pool(queries[block], corpus, range_max + max_positives + 1, chunk_size)  # (q, K)
        excluded = torch.cat([positives[block], own[block, None]], 1)  # (q, P + 1) -1 where nothing
        parts.append(_select(queries[block], corpus, scores, index, positives[block], excluded, filters, skipped,
                             num_negatives=num_negatives, range_min=range_min, range_max=range_max, rng=rng))
    indices, scores, positive_scores = (torch.cat(part) for part in zip(*parts))
    return MinedNegatives(indices, scores, positive_scores, range_max, dict(zip(FILTERS, skipped.tolist())))


def _padded_positives(positive_ids: Sequence[int | Sequence[int]] | Tensor, n_queries: int, n_corpus: int,
                      device: torch.device) -> Tensor:
    """(Q, P) long tensor of each query's positive corpus rows, padded with -1."""
    if isinstance(positive_ids, Tensor):
        if positive_ids.ndim != 1:
            raise ValueError(f"positive_ids as a tensor must be (Q,) (one positive per query), got "
                             f"{tuple(positive_ids.shape)}; pass a list of lists for several")
        positive_ids = positive_ids.tolist()
    if len(positive_ids) != n_queries:
        raise ValueError(f"positive_ids has {len(positive_ids)} entries for {n_queries} queries: one per query")
    positive_ids = [[ids] if isinstance(ids, int) else list(ids) for ids in positive_ids]
    for q, ids in enumerate(positive_ids):
        if len(ids) == 0:
            raise ValueError(f"query {q} has no positive: every query needs at least one (the margins and the "
                             f"exclusion of its positives refer to them)")
        outside = [i for i in ids if not 0 <= i < n_corpus]
        if outside:
            raise ValueError(f"positive_ids[{q}] holds {outside[0]}, outside the corpus of {n_corpus} rows")
    padded = torch.full((n_queries, max(map(len, positive_ids))), -1, dtype=torch.long)
    for q, ids in enumerate(positive_ids):
        padded[q, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return padded.to(device)


def _query_corpus_ids(query_corpus_ids: Sequence[int] | Tensor | None, n_queries: int, n_corpus: int,
                      device: torch.device) -> Tensor:
    """(Q,) long tensor of each query's own corpus row, -1 where it has none."""
    if query_corpus_ids is None:
        return torch.full((n_queries,), -1, dtype=torch.long, device=device)
    ids = torch.as_tensor(query_corpus_ids, dtype=torch.long).flatten()
    if ids.numel() != n_queries:
        raise ValueError(f"query_corpus_ids has {ids.numel()} entries for {n_queries} queries: one per query")
    if ((ids < -1) | (ids >= n_corpus)).any():
        raise ValueError(f"query_corpus_ids must be corpus rows (0 … {n_corpus - 1}) or -1, got "
                         f"{ids[(ids < -1) | (ids >= n_corpus)][0].item()}")
    return ids.to(device)


def _candidate_pool(queries: Tensor, corpus: Tensor, pool: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """(scores, indices), both (q, pool): each query's best ``pool`` corpus rows, best first, padded with -inf / -1
    where the corpus is smaller (as ST pads)."""
    scores, index = top_k(queries, corpus, pool, chunk_size)  # (q, min(pool, C)) each
    missing = pool - index.shape[1]
    if missing > 0:
        scores = torch.cat([scores, scores.new_full((scores.shape[0], missing), -torch.inf)], 1)  # (q, pool)
        index = torch.cat([index, index.new_full((index.shape[0], missing), -1)], 1)  # (q, pool)
    return scores, index


def _select(queries: Tensor, corpus: Tensor, scores: Tensor, index: Tensor, positives: Tensor, excluded: Tensor,
            filters: dict[str, float | None], skipped: Tensor, *, num_negatives: int, range_min: int, range_max: int,
            rng: random.Random | None) -> tuple[Tensor, Tensor, Tensor]:
    """One block of queries' (indices, scores, lowest positive score): ST's steps 1–5 on the candidate pool."""
    removed = (index.unsqueeze(2) == excluded.unsqueeze(1)).any(2) | (index < 0)  # (q, K) positives, self, padding
    scores = scores.masked_fill(removed, -torch.inf)
    positive_scores = torch.einsum("qd,qpd->qp", queries, corpus[positives.clamp(min=0)])  # (q, P)
    lowest = positive_scores.masked_fill(positives < 0, torch.inf).amin(1, keepdim=True)  # (q, 1) the harder positive
    thresholds = {  # a candidate leaves when the test is true; ST applies them in this order
        "absolute_margin": lambda s, m: s + m > lowest,
        "relative_margin": lambda s, m: s > lowest - lowest.abs() * m,
        "max_score": lambda s, m: s > m,
        "min_score": lambda s, m: s < m,
    }
    for i, name in enumerate(FILTERS):
        if filters[name] is not None:
            drop = thresholds[name](scores, filters[name]) & (scores > -torch.inf)  # (q, K) removed only now
            skipped[i] += drop.sum()
            scores = scores.masked_fill(drop, -torch.inf)
    # survivors best first; a stable sort keeps the pool's (-score, corpus row) order among ties, removed ones last
    order = scores.argsort(dim=1, descending=True, stable=True)[:, range_min:range_max]  # (q, range_max - range_min)
    scores, index = scores.gather(1, order), index.gather(1, order)
    if rng is None:
        scores, index = scores[:, :num_negatives], index[:, :num_negatives]  # (q, n)
    else:
        # ST draws among the survivors, or among all when fewer than num_negatives survive (that query is dropped)
        options = ((scores > -torch.inf).sum(1).clamp(min=num_negatives)).tolist()
        drawn = torch.tensor([rng.sample(range(n), k=num_negatives) for n in options], dtype=torch.long,
                             device=scores.device).reshape(-1, num_negatives)  # (q, n)
        scores, index = scores.gather(1, drawn), index.gather(1, drawn)
        order = scores.argsort(dim=1, descending=True, stable=True)  # (q, n)
        scores, index = scores.gather(1, order), index.gather(1, order)
    index = index.masked_fill(scores == -torch.inf, -1)
    return index, scores, lowest.squeeze(1)


@dataclass(frozen=True)
class MinedDataset:
    """What :func:`mine_dataset` produced, with ST's counts.

    Attributes:
        dataset: rows ``(anchor, positive, negative_1 … negative_k[, scores])`` (the input's column names for the
            first two).
        rows: input rows.
        queries: distinct anchors.
        corpus_size: distinct corpus texts (positives plus the extra corpus).
        pairs: distinct (anchor, positive) pairs: the rows ST's n-tuple output can have.
        negatives: the mined negatives per distinct anchor.
        options: the options given to :func:`mine_hard_negatives`, with the ``range_max`` used.
    """

    dataset: datasets.Dataset
    rows: int
    queries: int
    corpus_size: int
    pairs: int
    negatives: MinedNegatives
    options: dict

    @property
    def dropped(self) -> int:
        """(anchor, positive) pairs left out because their anchor got fewer than ``num_negatives`` negatives."""
        return self.pairs - len(self.dataset)

    def summary(self) -> str:
        """What was mined and dropped, with ST's hint when rows were dropped."""
        mined = self.negatives
        found = mined.scores[mined.indices >= 0]
        lines = [f"{self.rows:,} rows: {self.queries:,} distinct anchors, {self.pairs:,} distinct (anchor, positive) "
                 f"pairs; corpus of {self.corpus_size:,} distinct texts; range_max {mined.range_max}",
                 f"mean score: lowest positive per anchor {mined.positive_scores.mean().item():.4f}, negatives "
                 f"{found.mean().item() if found.numel() else float('nan'):.4f}"]
        if self.rows > self.pairs:
            lines.append(f"{self.rows - self.pairs:,} rows repeat an (anchor, positive) pair and are written once")
        for name, count in mined.skipped.items():
            if count:
                lines.append(f"skipped {count:,} candidate negatives due to the {name} of {self.options[name]}")
        wanted = mined.indices.shape[1]
        if self.dropped:
            hints = ["range_max"] + [name for name in ("range_min", *FILTERS[:3]) if self.options.get(name)]
            lines.append(f"could not find {wanted} negatives for {mined.num_incomplete:,} anchors: {self.dropped:,} "
                         f"of {self.pairs:,} rows ({self.dropped / self.pairs:.2%}) dropped; consider adjusting "
                         f"{', '.join(hints)}")
        lines.append(f"{len(self.dataset):,} rows with {wanted} negatives each")
        return "\n".join(lines)


def mine_dataset(
    rows: datasets.Dataset | Sequence[Mapping[str, str]],
    embedder,
    *,
    anchor_column: str = "anchor",
    positive_column: str = "positive",
    corpus: Iterable[str] | None = None,
    batch_size: int = 64,
    truncate_dim: int | None = None,
    query_prompt_name: str | None = None,
    corpus_prompt_name: str | None = None,
    show_progress: bool = False,
    output_scores: bool = False,
    **options,
) -> MinedDataset:
    """Hard negatives for (anchor, positive) rows, as ST's ``mine_hard_negatives(..., output_format="n-tuple")``.

    The corpus is the positives plus ``corpus`` (ST's order: the extra corpus first, then the positives, each text
    once). Distinct anchors and corpus texts are embedded once with ``embedder.encode_texts`` (normalised), mined with
    :func:`mine_hard_negatives`, and written one row per distinct (anchor, positive) pair, grouped by anchor; an
    anchor's rows are dropped, and counted, when it has fewer than ``num_negatives`` negatives. Other input columns
    are not carried over (ST's output has these columns only).

    Args:
        rows: a ``datasets.Dataset`` or a list of dicts with ``anchor_column`` and ``positive_column``.
        embedder: an ``inference.models.Embedder`` (``prompts`` and ``encode_texts``).
        anchor_column: the queries' column.
        positive_column: the positives' column.
        corpus: extra candidate texts (distractors) besides the positives.
        batch_size: texts embedded at once.
        truncate_dim: mine with the first ``truncate_dim`` dimensions (a Matryoshka prefix).
        query_prompt_name: the model's prompt for the anchors; None: ``query`` if the model has it (ST's
            ``encode_query``).
        corpus_prompt_name: the model's prompt for the corpus; None: the first of ``document``, ``passage``,
            ``corpus`` the model has (ST's ``encode_document``).
        show_progress: show the embedder's progress bar.
        output_scores: add a ``scores`` column: per row [the anchor's score with the row's positive, its score with
            each negative] (ST's ``output_scores=True``: the n-tuple-scores format distillation losses read).
        **options: keyword options of :func:`mine_hard_negatives` (``num_negatives``, ``range_min``, ``range_max``,
            ``max_score``, ``min_score``, ``absolute_margin``, ``relative_margin``, ``sampling_strategy``, ``seed``,
            ``chunk_size``, ``query_chunk_size``).

    Returns:
        The rows and ST's counts (:meth:`MinedDataset.summary` says them).

    Raises:
        ValueError: on no rows, a missing column or a value that is not a non-empty string (naming the row).
    """
    anchors, positives = _texts(rows, anchor_column, "anchor_column"), _texts(rows, positive_column, "positive_column")
    queries = list(dict.fromkeys(anchors))
    query_id = {text: q for q, text in enumerate(queries)}
    extra = [] if corpus is None else list(corpus)
    corpus_texts = list(dict.fromkeys(extra + positives))
    corpus_id = {text: c for c, text in enumerate(corpus_texts)}
    per_row: list[list[int]] = [[] for _ in queries]  # one entry per row, repeats kept: ST sizes its pool by rows
    for anchor, positive in zip(anchors, positives):
        per_row[query_id[anchor]].append(corpus_id[positive])
    distinct = [list(dict.fromkeys(ids)) for ids in per_row]

    encode = dict(batch_size=batch_size, show_progress=show_progress, truncate_dim=truncate_dim, normalize=True)
    query_prompt_name = query_prompt_name or _default_prompt(embedder, QUERY_PROMPTS)
    corpus_prompt_name = corpus_prompt_name or _default_prompt(embedder, DOCUMENT_PROMPTS)
    query_embeddings = embedder.encode_texts(queries, prompt_name=query_prompt_name, **encode)
    corpus_embeddings = embedder.encode_texts(corpus_texts, prompt_name=corpus_prompt_name, **encode)
    own = [corpus_id.get(text, -1) for text in queries]  # a query whose text is in the corpus is not its own negative
    mined = mine_hard_negatives(query_embeddings, corpus_embeddings, per_row, query_corpus_ids=own, **options)

    columns: dict[str, list] = {anchor_column: [], positive_column: []}
    negatives = [[] for _ in range(mined.indices.shape[1])]
    written: list[tuple[int, int]] = []  # (query, positive) of each row
    for q, (complete, found) in enumerate(zip(mined.complete.tolist(), mined.indices.tolist())):
        if not complete:
            continue
        for c in distinct[q]:
            written.append((q, c))
            columns[anchor_column].append(queries[q])
            columns[positive_column].append(corpus_texts[c])
            for column, n in zip(negatives, found):
                column.append(corpus_texts[n])
    columns.update({f"negative_{i}": column for i, column in enumerate(negatives, start=1)})
    if output_scores:  # [the row's positive, its negatives] (normalised embeddings: the dot product is the cosine)
        q, c = (torch.tensor(ids, dtype=torch.long) for ids in zip(*written)) if written else (
            torch.zeros(0, dtype=torch.long),) * 2
        positive = (query_embeddings[q] * corpus_embeddings[c]).sum(dim=-1, keepdim=True)
        columns["scores"] = torch.cat([positive, mined.scores[q].to(positive.dtype)], dim=1).tolist()
    return MinedDataset(datasets.Dataset.from_dict(columns), len(anchors), len(queries), len(corpus_texts),
                        sum(map(len, distinct)), mined, {**options, "range_max": mined.range_max})


def teacher_scores(dataset: datasets.Dataset, teacher, *, anchor_column: str = "anchor",
                   positive_column: str = "positive", batch_size: int = 64, show_progress: bool = False) -> list[list[float]]:
    """A teacher embedder's scores of mined rows: per row [cos(anchor, positive), cos(anchor, negative_i)…], each
    distinct text embedded once, with the teacher's query and document prompts (as :func:`mine_dataset` embeds)."""
    candidates = [positive_column] + [c for c in dataset.column_names if c.startswith("negative_")]
    queries = list(dict.fromkeys(dataset[anchor_column]))
    documents = list(dict.fromkeys(text for column in candidates for text in dataset[column]))
    encode = dict(batch_size=batch_size, show_progress=show_progress, normalize=True)
    query_embeddings = teacher.encode_texts(queries, prompt_name=_default_prompt(teacher, QUERY_PROMPTS), **encode)
    document_embeddings = teacher.encode_texts(documents, prompt_name=_default_prompt(teacher, DOCUMENT_PROMPTS),
                                               **encode)
    query_row = {text: i for i, text in enumerate(queries)}
    document_row = {text: i for i, text in enumerate(documents)}
    q = torch.tensor([query_row[text] for text in dataset[anchor_column]])
    d = torch.tensor([[document_row[text] for text in dataset[column]] for column in candidates]).T  # (rows, 1+m)
    return torch.einsum("rd,rkd->rk", query_embeddings[q], document_embeddings[d]).tolist()


def _default_prompt(embedder, names: Sequence[str]) -> str | None:
    """The first of ``names`` among the model's prompts (ST's ``encode_query`` / ``encode_document`` defaults)."""
    return next((name for name in names if name in embedder.prompts), None)


def _texts(rows: datasets.Dataset | Sequence[Mapping[str, str]], column: str, argument: str) -> list[str]:
    """One column's values, each a non-empty string."""
    if len(rows) == 0:
        raise ValueError("no rows to mine negatives for")
    if isinstance(rows, datasets.Dataset):
        if column not in rows.column_names:
            raise ValueError(f"{argument} {column!r} is not a column; columns: {rows.column_names}")
        values = list(rows[column])
    else:
        missing = next((i for i, row in enumerate(rows) if column not in row), None)
        if missing is not None:
            raise ValueError(f"{argument} {column!r}: row {missing + 1} (counting from 1) has no such key; it has "
                             f"{sorted(rows[missing])}")
        values = [row[column] for row in rows]
    bad = [i for i, value in enumerate(values) if not isinstance(value, str) or not value.strip()]
    if bad:
        raise ValueError(f"{argument} {column!r}: {len(bad)} row(s) hold an empty or non-text value (e.g. "
                         f"{values[bad[0]]!r}), rows {', '.join(str(i + 1) for i in bad[:10])} (counting from 1)")
    return values
