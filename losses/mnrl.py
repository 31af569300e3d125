"""In-batch negatives ranking loss (InfoNCE), as sentence-transformers' MultipleNegativesRankingLoss."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from losses.distributed import all_gather_with_grad, rank_and_world_size
from metrics.keys import SIMILARITIES


DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")


class MultipleNegativesRankingLoss(nn.Module):
    """Cross-entropy of each anchor against its own positive, with every other candidate of the batch as a negative.

    From Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart Reply"
    (https://arxiv.org/abs/1705.00652); also known as InfoNCE. For a batch of B rows with anchors (queries) q,
    positives p and m optional hard-negative columns n_1 … n_m, each (B, D), and documents d = cat(p, n_1, …, n_m)
    ((1+m)·B, D), the logits of row i in each direction are (``sim``: cosine or dot, times ``scale``)::

        query_to_doc    sim(q_i, d)      (1+m)·B   the positive p_i and every other document (always included)
        query_to_query  sim(q_i, q)      B         the other queries (q_i itself left out)
        doc_to_query    sim(p_i, q)      B         each positive must find its own query among the queries
        doc_to_doc      sim(p_i, d)      (1+m)·B   the other rows' documents (row i's own documents left out)

        joint:          loss_i = logsumexp(all directions' logits of row i) − scale·sim(q_i, p_i)
        per_direction:  loss_i = mean over directions of logsumexp(that direction's logits) − scale·sim(q_i, p_i)
        loss = mean_i loss_i

    The default, ``query_to_doc`` alone, is plain InfoNCE; ``("query_to_doc", "doc_to_query")`` with
    ``per_direction`` is the symmetric loss (``symmetric=True``; Günther et al. 2024); all four ``joint`` is GTE's
    "improved contrastive loss" (Li et al. 2023, https://arxiv.org/abs/2308.03281). ``per_direction`` refuses
    ``query_to_query`` and ``doc_to_doc``, whose candidates never hold the positive.

    Hardness weighting adds ``hardness_strength · stop_grad(sim(q_i, d_j))`` (the unscaled similarity) to the
    ``query_to_doc`` logits of some negatives, so harder negatives weigh more in the softmax: ``in_batch_negatives``
    the other rows' documents (Lan et al. 2025, https://arxiv.org/abs/2503.04812, Eq. 5, α = 9 there),
    ``hard_negatives`` row i's own hard negatives (EmbeddingGemma, Schechter Vera et al. 2025, α = 5 there),
    ``all_negatives`` both. This is sentence-transformers 6.3's ``MultipleNegativesRankingLoss`` (values and gradients
    equal, tested), computed from the embeddings the module hands over.

    The loss is parameter-free: a learnable scale (CLIP's ``logit_scale.exp()``) lives on the model and is passed to
    ``forward`` as ``scale``.

    Args:
        scale: multiplier of the similarities, i.e. 1/temperature: 20 means temperature 0.05. Must be > 0.
        similarity: "cosine" (embeddings L2-normalised first) or "dot" (raw inner product; use a small scale).
        symmetric: shorthand for ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``
            (sentence-transformers' former ``MultipleNegativesSymmetricRankingLoss``).
        gather_across_devices: under torch.distributed with more than one rank, score the local rows against the
            queries and documents of all ranks. The gather carries gradients, so each rank's embeddings get the
            gradient of the sum of all ranks' losses. Every rank must have the same batch size.
        directions: the interaction terms above; must include ``query_to_doc``.
        partition_mode: ``joint`` (one softmax over every direction's logits) or ``per_direction`` (one per direction,
            averaged).
        hardness_mode: None (off), ``in_batch_negatives``, ``hard_negatives`` or ``all_negatives``.
        hardness_strength: α above, ≥ 0; 0 turns the weighting off.
    """

    def __init__(
        self,
        scale: float = 20.0,
        similarity: str = "cosine",
        symmetric: bool = False,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] | list[str] = ("query_to_doc",),
        partition_mode: str = "joint",
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (it is 1/temperature), got {scale}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        directions = tuple(directions)
        if symmetric:
            if directions not in (("query_to_doc",), ("query_to_doc", "doc_to_query")) or (
                    partition_mode != "joint" and directions == ("query_to_doc",)):
                raise ValueError(f"symmetric is directions ('query_to_doc', 'doc_to_query') with partition_mode "
                                 f"'per_direction': set those, or symmetric alone, not symmetric with directions "
                                 f"{directions} and partition_mode {partition_mode!r}")
            directions, partition_mode = ("query_to_doc", "doc_to_query"), "per_direction"
        unknown = [d for d in directions if d not in DIRECTIONS]
        if not directions or unknown or len(set(directions)) != len(directions):
            raise ValueError(f"directions must be distinct ones of {DIRECTIONS}, got {directions}")
        if "query_to_doc" not in directions:
            raise ValueError(f"directions must include 'query_to_doc' (its logits hold the positive), got {directions}")
        if partition_mode not in PARTITION_MODES:
            raise ValueError(f"partition_mode must be one of {PARTITION_MODES}, got {partition_mode!r}")
        if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
            raise ValueError("partition_mode 'per_direction' needs the positive among every direction's candidates, "
                             "which 'query_to_query' and 'doc_to_doc' never hold: use partition_mode 'joint' with "
                             "them")
        if hardness_mode is not None and hardness_mode not in HARDNESS_MODES:
            raise ValueError(f"hardness_mode must be null or one of {HARDNESS_MODES}, got {hardness_mode!r}")
        if not hardness_strength >= 0:
            raise ValueError(f"hardness_strength must be ≥ 0, got {hardness_strength}")
        self.scale = scale
        self.similarity = similarity
        self.symmetric = directions == ("query_to_doc", "doc_to_query") and partition_mode == "per_direction"
        self.gather_across_devices = gather_across_devices
        self.directions = directions
        self.partition_mode = partition_mode
        self.hardness_mode = hardness_mode
        self.hardness_strength = hardness_strength

    def get_config_dict(self) -> dict:
        """The parameters as sentence-transformers' model cards list them (``similarity_fct`` by ST's name)."""
        return {"scale": self.scale, "similarity_fct": {"cosine": "cos_sim", "dot": "dot_score"}.get(
                    self.similarity, self.similarity),
                "gather_across_devices": self.gather_across_devices, "directions": list(self.directions),
                "partition_mode": self.partition_mode, "hardness_mode": self.hardness_mode,
                "hardness_strength": self.hardness_strength}

    def forward(self, anchor: Tensor, positive: Tensor, *negatives: Tensor,
                scale: Tensor | float | None = None) -> Tensor:
        """Mean loss over the local anchors.

        Args:
            anchor: (B, D) anchor (query) embeddings, one per row.
            positive: (B, D) embeddings of each anchor's positive.
            *negatives: (B, D) embeddings of each hard-negative column, if any.
            scale: overrides the configured scale for this call, e.g. a learnable ``logit_scale.exp()``.

        Returns:
            Scalar loss.
        """
        rank, world_size = rank_and_world_size()
        gather = self.gather_across_devices and world_size > 1
        batch_size = self._check_inputs(anchor, positive, negatives, world_size if gather else 1)
        if self.similarity == "cosine":
            anchor, positive, *negatives = (F.normalize(t, dim=-1) for t in (anchor, positive, *negatives))
        if gather:
            _check_equal_batch_sizes(batch_size, anchor.device, world_size)
        everywhere = all_gather_with_grad if gather else (lambda t: t)
        # row i's positive (and its query) sit at global row rank·B + i of the gathered ones
        offset = rank * batch_size if gather else 0
        rows = torch.arange(batch_size, device=anchor.device)
        own = rows + offset  # (B,)
        documents = torch.cat([everywhere(positive), *map(everywhere, negatives)])  # ((1+m)·W·B, D)
        world_batch = documents.shape[0] // (1 + len(negatives))
        logits = {"query_to_doc": anchor @ documents.T}  # (B, (1+m)·W·B)
        if {"query_to_query", "doc_to_query"} & set(self.directions):
            queries = everywhere(anchor)  # (W·B, D)
            if "query_to_query" in self.directions:
                itself = torch.zeros(batch_size, world_batch, dtype=torch.bool, device=anchor.device)
                itself[rows, own] = True
                logits["query_to_query"] = (anchor @ queries.T).masked_fill(itself, -torch.inf)
            if "doc_to_query" in self.directions:
                logits["doc_to_query"] = positive @ queries.T  # (B, W·B)
        # documents of row i's own query: its positive and its hard negatives, in every column block
        own_documents = torch.zeros(batch_size, world_batch, dtype=torch.bool, device=anchor.device)
        own_documents[rows, own] = True
        own_documents = own_documents.repeat(1, 1 + len(negatives))  # (B, (1+m)·W·B)
        if "doc_to_doc" in self.directions:
            logits["doc_to_doc"] = (positive @ documents.T).masked_fill(own_documents, -torch.inf)
        scale = self.scale if scale is None else scale
        penalty = self._hardness(logits["query_to_doc"], own_documents, world_batch)
        logits = {name: scale * values for name, values in logits.items()}
        if penalty is not None:  # added after the scale: α·sim, as the papers write it
            logits["query_to_doc"] = logits["query_to_doc"] + penalty
        positive_logit = logits["query_to_doc"][rows, own]  # (B,)
        if self.partition_mode == "joint":
            log_partition = torch.logsumexp(torch.cat(list(logits.values()), dim=1), dim=1)
        else:
            log_partition = torch.stack([torch.logsumexp(v, dim=1) for v in logits.values()]).mean(dim=0)
        return (log_partition - positive_logit).mean()

    def _hardness(self, similarities: Tensor, own_documents: Tensor, world_batch: int) -> Tensor | None:
        """``hardness_strength · stop_grad(similarity)`` on the weighted negatives' ``query_to_doc`` logits, 0 on the
        others; None when hardness weighting is off."""
        if self.hardness_mode is None or self.hardness_strength == 0:
            return None
        weighted = ~own_documents  # in_batch_negatives: the other rows' documents
        if self.hardness_mode != "in_batch_negatives":
            hard = own_documents.clone()
            hard[:, :world_batch] = False  # row i's own hard negatives (not its positive)
            weighted = hard if self.hardness_mode == "hard_negatives" else weighted | hard
        return self.hardness_strength * similarities.detach() * weighted

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, similarity={self.similarity!r}, directions={self.directions}, "
                f"partition_mode={self.partition_mode!r}, hardness_mode={self.hardness_mode!r}, "
                f"hardness_strength={self.hardness_strength}, gather_across_devices={self.gather_across_devices}")

    @staticmethod
    def _check_inputs(anchor: Tensor, positive: Tensor, negatives: tuple[Tensor, ...], ranks: int) -> int:
        if anchor.ndim != 2:
            raise ValueError(f"anchor must be a (B, D) embedding matrix, got shape {tuple(anchor.shape)}")
        columns = {"positive": positive} | {f"negative_{i}": n for i, n in enumerate(negatives, 1)}
        for name, tensor in columns.items():
            if tensor.shape != anchor.shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)} but anchor has {tuple(anchor.shape)}; every "
                                 "column needs one (B, D) embedding per row")
        batch_size = anchor.shape[0]
        if batch_size * ranks < 2:
            # the datamodule refuses --data.init_args.batch_size < 2 and its samplers yield no one-row batch, so a
            # batch this small comes from a data loader built elsewhere, or from a batch size set below 2 there
            raise ValueError(f"in-batch negatives need at least 2 (anchor, positive) pairs, got batch size "
                             f"{batch_size}: this batch had {batch_size} row(s) and so no negative. Set "
                             f"--data.init_args.batch_size ≥ 2; if it is, the data loader yielded a batch smaller than "
                             f"that (drop such batches, e.g. with --data.init_args.drop_last true)")
        return batch_size


def _check_equal_batch_sizes(batch_size: int, device: torch.device, world_size: int) -> None:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([batch_size], device=device))
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(f"gather_across_devices needs the same batch size on every rank, got {sizes} per rank; "
                         "use --data.init_args.drop_last true so no rank gets a smaller last batch")
