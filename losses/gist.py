"""False-negative-aware in-batch losses: a frozen guide model's scores (GISTEmbed), or the model's own (positive-aware
margins, NV-Retriever), mask the candidates that score too close to the positive to be trusted as negatives.

The bigger the batch (GradCache, a gather across devices), the likelier another row's passage answers this row's query
too; InfoNCE then pushes a correct answer away. Both losses keep InfoNCE's form and drop such candidates from the
softmax (logit −inf) before the cross-entropy.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.distributed import all_gather_with_grad, rank_and_world_size

MARGIN_STRATEGIES = ("absolute", "relative")


def _false_negatives(reference: Tensor, threshold: Tensor, strategy: str, margin: float) -> Tensor:
    """Candidates whose reference similarity exceeds the row's positive's, less the margin: (B, N) bool.

    ``absolute``: above ``s⁺ − margin``; ``relative``: above ``s⁺ − |s⁺|·margin`` (``s⁺·(1 − margin)`` for s⁺ ≥ 0).
    """
    if strategy == "absolute":
        return reference > threshold - margin
    return reference > threshold - threshold.abs() * margin


def filtered_infonce(
    columns: Sequence[Tensor],
    references: Sequence[Tensor],
    scale: Tensor | float,
    strategy: str,
    margin: float,
    contrast_anchors: bool,
    contrast_positives: bool,
    gather: bool,
) -> Tensor:
    """InfoNCE of (anchor, positive, negatives…) embeddings whose candidates are masked by reference embeddings.

    Args:
        columns: (B, D) embeddings per column: anchor, positive, hard negatives.
        references: (B, D') per column, the embeddings whose cosine similarities decide what is masked (the guide's,
            or the model's own, detached); never differentiated.
        scale: 1/temperature, multiplies the cosine similarities.
        strategy, margin: how far below the positive's reference similarity a candidate may score (``_false_negatives``).
        contrast_anchors: the other anchors are candidates too (this rank's, as sentence-transformers does).
        contrast_positives: the other rows' positives are candidates of each row's positive as well.
        gather: the positives and negatives of every rank are candidates (``all_gather_with_grad``).

    Returns:
        Scalar: the mean over this rank's anchors of the cross-entropy against the row's positive.
    """
    anchor, positive, *negatives = (F.normalize(c, dim=-1) for c in columns)
    ref_anchor, ref_positive, *ref_negatives = (F.normalize(r.detach().to(c.dtype), dim=-1)
                                                for r, c in zip(references, columns, strict=True))
    batch_size = anchor.shape[0]
    rank, world_size = rank_and_world_size()
    offset = 0
    if gather and world_size > 1:
        positive, ref_positive = all_gather_with_grad(positive), all_gather_with_grad(ref_positive)
        negatives = [all_gather_with_grad(n) for n in negatives]
        ref_negatives = [all_gather_with_grad(n) for n in ref_negatives]
        offset = rank * batch_size
    rows = torch.arange(batch_size, device=anchor.device)
    own = rows + offset  # row i's positive among the (gathered) positives

    ref_ap = ref_anchor @ ref_positive.T  # (B, W·B)
    threshold = ref_ap[rows, own].unsqueeze(1)  # (B, 1) each row's positive's reference similarity

    def masked(similarities: Tensor, reference: Tensor, keep: Tensor | None = None) -> Tensor:
        drop = _false_negatives(reference, threshold, strategy, margin)
        if keep is not None:
            drop = drop & ~keep
        return similarities.masked_fill(drop, -torch.inf)

    positive_itself = torch.zeros_like(ref_ap, dtype=torch.bool)
    positive_itself[rows, own] = True
    scores = [masked(anchor @ positive.T, ref_ap, keep=positive_itself)]  # (B, W·B), the positive never masked
    if contrast_anchors:  # this rank's anchors: (B, B), the anchor itself left out
        scores.append(masked(anchor @ anchor.T, ref_anchor @ ref_anchor.T).masked_fill(
            torch.eye(batch_size, dtype=torch.bool, device=anchor.device), -torch.inf))
    if contrast_positives:  # the row's positive against every positive: (B, W·B), itself left out
        mine = positive[offset:offset + batch_size]
        scores.append(masked(mine @ positive.T, ref_positive[offset:offset + batch_size] @ ref_positive.T)
                      .masked_fill(positive_itself, -torch.inf))
    for negative, ref_negative in zip(negatives, ref_negatives):  # (B, W·B) per hard-negative column
        scores.append(masked(anchor @ negative.T, ref_anchor @ ref_negative.T))
    logits = torch.cat(scores, dim=1) * scale
    return F.cross_entropy(logits, own)


def _check_strategy(strategy: str, owner: str) -> None:
    if strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"{owner}: margin_strategy must be one of {MARGIN_STRATEGIES}, got {strategy!r}")


def _check_columns(columns: Sequence[Tensor], owner: str) -> None:
    if len(columns) < 2:
        raise ValueError(f"{owner} needs (anchor, positive[, negatives…]) columns, got {len(columns)}")
    for i, column in enumerate(columns):
        if column.shape != columns[0].shape or column.ndim != 2:
            raise ValueError(f"{owner}: column {i} has shape {tuple(column.shape)}, the anchor "
                             f"{tuple(columns[0].shape)}; every column needs one (B, D) embedding per row")


class GISTEmbedLoss(nn.Module):
    """InfoNCE whose in-batch candidates a frozen guide model screens for false negatives (GISTEmbed).

    From Solatorio 2024, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning"
    (https://arxiv.org/abs/2402.16829). For rows (a, p, n_1 … n_m), model embeddings and the guide's embeddings g of
    the same texts, all cosine::

        t_i = sim(g(a_i), g(p_i))                                        # the guide's score of row i's positive
        candidates of a_i: every positive p_j (all ranks' with gather), every negative n_kj,
            [contrast_anchors] this rank's other anchors a_j, [contrast_positives] sim(p_i, p_j) for j ≠ i
        a candidate c is masked (logit −inf) when  sim(g(a_i), g(c)) > t_i − margin        (absolute)
                                                   sim(g(a_i), g(c)) > t_i − |t_i|·margin  (relative)
            (for the positive-positive block, sim(g(p_i), g(p_j)) is compared)
        loss = mean_i CE(sim(a_i, candidates) / temperature, p_i)        # p_i itself is never masked

    This is sentence-transformers' ``GISTEmbedLoss`` (one negative column at most) and ``CachedGISTEmbedLoss`` (any
    number; GradCache is litembed's ``--model.init_args.gradcache_chunk_size``): values and gradients equal, tested.

    The guide does not run in the loss. The module loads it once (``guide``: anything litembed loads: ``pkg:``, a hub
    name, a local or exported model, a run) and passes its embeddings of the batch as ``guide``; for a map-style
    training set it embeds every training text once, before the first step, and looks the rows up per batch
    (``lightning_modules.guide``), so guided training costs about what plain training costs. The guide sees each text
    as the model does, prompt included.

    Args:
        guide: the guide model (required: refused at start-up without one).
        temperature: divides the cosine similarities (sentence-transformers' default 0.01, i.e. scale 100).
        margin_strategy: ``absolute`` or ``relative`` (above).
        margin: how far below the positive's guide score a candidate must stay; 0 masks those the guide scores above
            the positive; a negative margin masks only those it scores that far above the positive.
        contrast_anchors: other anchors are candidates too.
        contrast_positives: each positive is contrasted with the other rows' positives too.
        gather_across_devices: under DDP, every rank's positives and negatives (and their guide embeddings) are
            candidates; the anchors stay local, as in sentence-transformers.
        guide_batch_size: texts per guide forward pass when the table of guide embeddings is built.
    """

    takes_guide = True

    def __init__(
        self,
        guide: str | None = None,
        temperature: float = 0.01,
        margin_strategy: str = "absolute",
        margin: float = 0.0,
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
        gather_across_devices: bool = False,
        guide_batch_size: int = 64,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"GISTEmbedLoss: temperature must be > 0, got {temperature}")
        if guide_batch_size < 1:
            raise ValueError(f"GISTEmbedLoss: guide_batch_size must be ≥ 1, got {guide_batch_size}")
        _check_strategy(margin_strategy, "GISTEmbedLoss")
        self.guide = guide
        self.temperature = temperature
        self.margin_strategy = margin_strategy
        self.margin = margin
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives
        self.gather_across_devices = gather_across_devices
        self.guide_batch_size = guide_batch_size

    def get_config_dict(self) -> dict:
        return {"guide": self.guide, "temperature": self.temperature, "margin_strategy": self.margin_strategy,
                "margin": self.margin, "contrast_anchors": self.contrast_anchors,
                "contrast_positives": self.contrast_positives, "gather_across_devices": self.gather_across_devices}

    def forward(self, *columns: Tensor, guide: Sequence[Tensor], scale: Tensor | float | None = None) -> Tensor:
        """``columns``: (B, D) anchor, positive and hard-negative embeddings; ``guide``: the guide's (B, D')
        embeddings of each column's texts, in column order; ``scale`` overrides 1/temperature."""
        _check_columns(columns, "GISTEmbedLoss")
        if len(guide) != len(columns):
            raise ValueError(f"GISTEmbedLoss: {len(guide)} guide embeddings for {len(columns)} columns")
        return filtered_infonce(columns, guide, 1 / self.temperature if scale is None else scale,
                                self.margin_strategy, self.margin, self.contrast_anchors, self.contrast_positives,
                                self.gather_across_devices)

    def extra_repr(self) -> str:
        return (f"guide={self.guide!r}, temperature={self.temperature}, margin_strategy={self.margin_strategy!r}, "
                f"margin={self.margin}, contrast_anchors={self.contrast_anchors}, "
                f"contrast_positives={self.contrast_positives}, gather_across_devices={self.gather_across_devices}")


class PositiveAwareMNRL(nn.Module):
    """InfoNCE that drops the in-batch candidates the model itself scores too close to the positive (no guide).

    NV-Retriever's positive-aware threshold (Moreira et al. 2024, "NV-Retriever: Improving text embedding models with
    effective hard-negative mining", https://arxiv.org/abs/2407.15831) applied to the batch: with the model's own
    cosine similarities s (no gradient through the mask) and s⁺_i = s(a_i, p_i)::

        a candidate c of a_i is masked when  s(a_i, c) > s⁺_i·(1 − margin)   (relative; "TopK-PercPos", 0.05 there)
                                             s(a_i, c) > s⁺_i − margin       (absolute; "TopK-MarginPos")
        loss = mean_i CE(scale · s(a_i, candidates), p_i)

    Candidates are the positives and hard negatives of the batch (all ranks' with ``gather_across_devices``), plus the
    other anchors and positives with ``contrast_anchors`` / ``contrast_positives`` (as ``GISTEmbedLoss``). With no
    candidate masked it is ``MultipleNegativesRankingLoss`` (tested); it is ``GISTEmbedLoss`` guided by the model
    itself (tested against sentence-transformers' ``GISTEmbedLoss`` with the model as its own guide).

    Args:
        scale: multiplies the cosine similarities (1/temperature), as ``MultipleNegativesRankingLoss``'s.
        margin_strategy: ``relative`` or ``absolute`` (above).
        margin: 0.05 with ``relative`` keeps candidates below 95% of the positive's score (NV-Retriever's choice).
        contrast_anchors: other anchors are candidates too.
        contrast_positives: each positive is contrasted with the other rows' positives too.
        gather_across_devices: under DDP, every rank's positives and negatives are candidates.
    """

    def __init__(
        self,
        scale: float = 20.0,
        margin_strategy: str = "relative",
        margin: float = 0.05,
        contrast_anchors: bool = False,
        contrast_positives: bool = False,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"PositiveAwareMNRL: scale must be > 0 (it is 1/temperature), got {scale}")
        _check_strategy(margin_strategy, "PositiveAwareMNRL")
        self.scale = scale
        self.margin_strategy = margin_strategy
        self.margin = margin
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives
        self.gather_across_devices = gather_across_devices

    def get_config_dict(self) -> dict:
        return {"scale": self.scale, "margin_strategy": self.margin_strategy, "margin": self.margin,
                "contrast_anchors": self.contrast_anchors, "contrast_positives": self.contrast_positives,
                "gather_across_devices": self.gather_across_devices}

    def forward(self, *columns: Tensor, scale: Tensor | float | None = None) -> Tensor:
        """``columns``: (B, D) anchor, positive and hard-negative embeddings; ``scale`` overrides the configured one."""
        _check_columns(columns, "PositiveAwareMNRL")
        return filtered_infonce(columns, [c.detach() for c in columns], self.scale if scale is None else scale,
                                self.margin_strategy, self.margin, self.contrast_anchors, self.contrast_positives,
                                self.gather_across_devices)

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, margin_strategy={self.margin_strategy!r}, margin={self.margin}, "
                f"contrast_anchors={self.contrast_anchors}, contrast_positives={self.contrast_positives}, "
                f"gather_across_devices={self.gather_across_devices}")
