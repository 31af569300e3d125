"""In-batch negatives ranking loss (InfoNCE), as sentence-transformers' MultipleNegativesRankingLoss."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from losses.distributed import all_gather_with_grad, rank_and_world_size
from metrics.keys import SIMILARITIES


class MultipleNegativesRankingLoss(nn.Module):
    """Cross-entropy of each anchor against its own positive, with every other candidate of the batch as a negative.

    From Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart Reply"
    (https://arxiv.org/abs/1705.00652); also known as InfoNCE. For a batch of B rows with anchors a, positives p and
    m optional hard-negative columns n_1 … n_m, each (B, D)::

        candidates = cat(p, n_1, …, n_m)                 # ((1+m)·B, D)
        S = scale · sim(a, candidates)                   # (B, (1+m)·B)
        loss = cross_entropy(S, arange(B))

    so row i must rank p_i above the other rows' positives and above every hard negative of the batch. With
    ``symmetric=True`` the loss is 0.5·(CE(S) + CE(scale · sim(p, a))): each positive must also find its anchor among
    the batch's anchors (hard negatives take no part in that direction). This is sentence-transformers'
    ``MultipleNegativesRankingLoss(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")``,
    formerly ``MultipleNegativesSymmetricRankingLoss``.

    The loss is parameter-free: a learnable scale (CLIP's ``logit_scale.exp()``) lives on the model and is passed to
    ``forward`` as ``scale``.

    Args:
        scale: multiplier of the similarities, i.e. 1/temperature: 20 means temperature 0.05. Must be > 0.
        similarity: "cosine" (embeddings L2-normalised first) or "dot" (raw inner product; use a small scale).
        symmetric: also rank the anchors for each positive and average the two cross-entropies.
        gather_across_devices: under torch.distributed with more than one rank, score the local anchors against the
            candidates of all ranks (and, if symmetric, the local positives against all anchors). The gather carries
            gradients, so each rank's embeddings get the gradient of the sum of all ranks' losses. Every rank must
            have the same batch size.
    """

    def __init__(
        self,
        scale: float = 20.0,
        similarity: str = "cosine",
        symmetric: bool = False,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (it is 1/temperature), got {scale}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.scale = scale
        self.similarity = similarity
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices

    def get_config_dict(self) -> dict:
        """The parameters as sentence-transformers' model cards list them (``similarity_fct`` by ST's name)."""
        return {"scale": self.scale, "similarity_fct": {"cosine": "cos_sim", "dot": "dot_score"}.get(
                    self.similarity, self.similarity),
                "symmetric": self.symmetric, "gather_across_devices": self.gather_across_devices}

    def forward(self, anchor: Tensor, positive: Tensor, *negatives: Tensor,
                scale: Tensor | float | None = None) -> Tensor:
        """Mean loss over the local anchors.

        Args:
            anchor: (B, D) anchor embeddings, one per row.
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
        candidates = torch.cat([everywhere(positive), *map(everywhere, negatives)])  # ((1+m)·W·B, D)
        # Row i's positive sits at global row rank·B + i of the gathered positives.
        labels = torch.arange(batch_size, device=anchor.device) + (rank * batch_size if gather else 0)  # (B,)
        scale = self.scale if scale is None else scale
        loss = F.cross_entropy(scale * anchor @ candidates.T, labels)  # logits (B, (1+m)·W·B)
        if self.symmetric:
            reverse = F.cross_entropy(scale * positive @ everywhere(anchor).T, labels)  # logits (B, W·B)
            loss = 0.5 * (loss + reverse)
        return loss

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, similarity={self.similarity!r}, symmetric={self.symmetric}, "
                f"gather_across_devices={self.gather_across_devices}")

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
