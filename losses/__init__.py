"""Losses on embeddings: no encoder runs here, so each loss is testable on plain tensors."""

from losses.distill import DistillKLDivLoss, MarginMSELoss
from losses.distributed import all_gather_with_grad
from losses.gist import GISTEmbedLoss, PositiveAwareMNRL
from losses.matryoshka import MatryoshkaLoss
from losses.mnrl import MultipleNegativesRankingLoss
from losses.siglip import SigLipLoss

__all__ = ["DistillKLDivLoss", "GISTEmbedLoss", "MarginMSELoss", "MatryoshkaLoss", "MultipleNegativesRankingLoss",
           "PositiveAwareMNRL", "SigLipLoss", "all_gather_with_grad"]
