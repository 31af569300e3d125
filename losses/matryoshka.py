"""Matryoshka loss wrapper, as sentence-transformers' MatryoshkaLoss."""

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MatryoshkaLoss(nn.Module):
    """Apply a loss to several prefixes of the embeddings so that each prefix is a usable embedding on its own.

    From Kusupati et al. 2022, "Matryoshka Representation Learning" (https://arxiv.org/abs/2205.13147). For each dim d
    the inputs are truncated to their first d features and L2-renormalised, and the inner loss is applied; the result
    is SUM_d w_d · loss_d (a sum, not a mean). Only the slicing repeats: the embeddings come from one encoder pass.

    Args:
        loss: inner loss on embeddings, called as ``loss(*embeddings, scale=scale)``, e.g.
            ``MultipleNegativesRankingLoss()``.
        dims: prefix sizes to train, e.g. [768, 512, 256, 128, 64]; stored sorted descending as ``dims``.
        weights: one weight per entry of ``dims`` (same order as given); default 1 each.
        n_dims_per_step: -1 uses every dim each step; k ≥ 1 uses k dims drawn at random (python ``random``) per step.
    """

    def __init__(
        self,
        loss: nn.Module,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
        n_dims_per_step: int = -1,
    ) -> None:
        super().__init__()
        if not dims:
            raise ValueError("dims must name at least one embedding size, e.g. [768, 512, 256, 128, 64]")
        if any(d <= 0 for d in dims):
            raise ValueError(f"dims must all be > 0, got {list(dims)}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"dims must not repeat a size, got {list(dims)}")
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims):
            raise ValueError(f"weights must have one entry per dim: {len(weights)} weights for {len(dims)} dims")
        if n_dims_per_step != -1 and n_dims_per_step < 1:
            raise ValueError(f"n_dims_per_step must be -1 (all dims) or ≥ 1, got {n_dims_per_step}")
        self.loss = loss
        self.dims, self.weights = zip(*sorted(zip(dims, weights), reverse=True))
        self.n_dims_per_step = n_dims_per_step

    def get_config_dict(self) -> dict:
        """The parameters as sentence-transformers' model cards list them."""
        return {"loss": type(self.loss).__name__, "matryoshka_dims": list(self.dims),
                "matryoshka_weights": list(self.weights), "n_dims_per_step": self.n_dims_per_step}

    @property
    def takes_labels(self) -> bool:
        """Whether the inner loss reads the data's teacher scores (a distillation loss)."""
        return getattr(self.loss, "takes_labels", False)

    @property
    def takes_guide(self) -> bool:
        """Whether the inner loss reads a guide model's embeddings (``GISTEmbedLoss``)."""
        return getattr(self.loss, "takes_guide", False)

    @property
    def guide(self) -> str | None:
        return getattr(self.loss, "guide", None)

    def forward(self, *embeddings: Tensor, **kwargs) -> Tensor:
        """Weighted sum of the inner loss over the Matryoshka dims.

        Args:
            *embeddings: (B, D) embeddings per column (anchor, positive, negatives…), as the inner loss takes them.
            **kwargs: passed on to the inner loss: a learnable ``scale``, a distillation loss's ``labels``, a guided
                loss's ``guide`` embeddings (not truncated: the guide's dims are its own).

        Returns:
            Scalar loss.
        """
        size = min(e.shape[-1] for e in embeddings)
        if self.dims[0] > size:
            raise ValueError(f"Matryoshka dim {self.dims[0]} is larger than the embedding size {size}; "
                             f"use --model.init_args.loss.init_args.dims ≤ {size}")
        chosen = range(len(self.dims))
        if 0 < self.n_dims_per_step < len(self.dims):
            chosen = sorted(random.sample(chosen, self.n_dims_per_step))
        return sum(self.weights[i] * self.loss(*(_shrink(e, self.dims[i]) for e in embeddings), **kwargs)
                   for i in chosen)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}, n_dims_per_step={self.n_dims_per_step}"


def _shrink(embeddings: Tensor, dim: int) -> Tensor:
    """The first ``dim`` features, L2-normalised; half-precision slices are normalised in float32 and cast back, as
    sentence-transformers 6.3 does (a bf16 sum of squares over 768 features loses the last digits of the norm)."""
    prefix = embeddings[..., :dim]  # (B, dim)
    if prefix.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(prefix.float(), dim=-1).to(prefix.dtype)
    return F.normalize(prefix, dim=-1)
