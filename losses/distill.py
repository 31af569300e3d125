"""Distillation from a teacher's scores stored in the data (sentence-transformers' MarginMSELoss, DistillKLDivLoss).

Each row is (query, candidate_1, …, candidate_n) with the teacher's scores of the query against each candidate in the
data's ``score_column`` (``--data.init_args.score_column``): sentence-transformers' n-tuple-scores format, which
``mine_hard_negatives(..., output_scores=True)`` writes ([positive score, negative scores…]). The student's score of a
pair is the row-wise similarity of the query's and the candidate's embeddings (no in-batch negatives: each row is
scored on its own candidates).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metrics.keys import SIMILARITIES

# sentence-transformers' names of the row-wise similarities, as its cards list ``similarity_fct``
PAIRWISE_NAMES = {"cosine": "pairwise_cos_sim", "dot": "pairwise_dot_score"}


def _pair_scores(query: Tensor, candidates: tuple[Tensor, ...], similarity: str) -> Tensor:
    """(B, n) row-wise similarities of the query with each candidate column."""
    if similarity == "cosine":
        query, candidates = F.normalize(query, dim=-1), tuple(F.normalize(c, dim=-1) for c in candidates)
    return torch.stack([(query * candidate).sum(dim=-1) for candidate in candidates], dim=1)


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


class MarginMSELoss(nn.Module):
    """Mean squared error between the student's margins and the teacher's (Hofstätter et al. 2020, "Improving
    Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation", https://arxiv.org/abs/2010.02666).

    For rows (q, p, n_1 … n_m) with teacher scores t (B, 1+m), or margins (B, m), or one margin per row (B,)::

        margin_j = sim(q, p) − sim(q, n_j)                  # (B, m)
        loss = mean((margin − (t_p − t_{n_j}))²)

    Args:
        similarity: ``dot`` (sentence-transformers' default: the teacher's margins are unnormalised) or ``cosine``.
    """

    takes_labels = True

    def __init__(self, similarity: str = "dot") -> None:
        super().__init__()
        _check_similarity(similarity)
        self.similarity = similarity

    def get_config_dict(self) -> dict:
        return {"similarity_fct": PAIRWISE_NAMES[self.similarity]}

    def forward(self, query: Tensor, positive: Tensor, *negatives: Tensor, labels: Tensor) -> Tensor:
        """``labels``: (B, 1+m) teacher scores, (B, m) margins, or (B,) margins of one negative."""
        if not negatives:
            raise ValueError("MarginMSELoss needs (query, positive, negative…) rows: a negative column at least")
        batch_size, m = query.shape[0], len(negatives)
        labels = labels.detach().to(query.dtype)
        if labels.shape == (batch_size, m + 1):
            labels = labels[:, :1] - labels[:, 1:]
        if labels.shape == (batch_size,):
            labels = labels.unsqueeze(1)
        if labels.shape != (batch_size, m):
            raise ValueError(f"MarginMSELoss: teacher scores of shape {tuple(labels.shape)} for {batch_size} rows of "
                             f"{m} negative(s); a row's scores must be [positive, negatives…] ({m + 1} numbers) or its "
                             f"margins ({m})")
        scores = _pair_scores(query, (positive, *negatives), self.similarity)
        return F.mse_loss(scores[:, :1] - scores[:, 1:], labels)


class DistillKLDivLoss(nn.Module):
    """KL divergence from the teacher's softmax over a row's candidates to the student's (Lin et al. 2020, "Distilling
    Dense Representations for Ranking using Tightly-Coupled Teachers", https://arxiv.org/abs/2010.11386)::

        student = log_softmax(sim(q, c) / τ_s)              # (B, n)
        teacher = softmax(t / τ_t)                           # (B, n)
        loss = τ_s² · KL(teacher ‖ student), averaged over the rows

    Args:
        similarity: ``dot`` (sentence-transformers' default) or ``cosine``.
        temperature: τ of both; ``student_temperature`` / ``teacher_temperature`` set them apart.
    """

    takes_labels = True

    def __init__(self, similarity: str = "dot", temperature: float = 1.0, student_temperature: float | None = None,
                 teacher_temperature: float | None = None) -> None:
        super().__init__()
        _check_similarity(similarity)
        self.similarity = similarity
        self.temperature = temperature
        self.student_temperature = temperature if student_temperature is None else student_temperature
        self.teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
        for name in ("temperature", "student_temperature", "teacher_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def get_config_dict(self) -> dict:
        config = {"similarity_fct": PAIRWISE_NAMES[self.similarity], "temperature": self.temperature}
        if self.student_temperature != self.temperature:
            config["student_temperature"] = self.student_temperature
        if self.teacher_temperature != self.temperature:
            config["teacher_temperature"] = self.teacher_temperature
        return config

    def forward(self, query: Tensor, *candidates: Tensor, labels: Tensor) -> Tensor:
        """``labels``: (B, n) teacher scores of the query against each of the n candidate columns."""
        if len(candidates) < 2:
            raise ValueError("DistillKLDivLoss needs (query, positive, negative…) rows: a softmax over one candidate "
                             "is constant")
        if labels.shape != (query.shape[0], len(candidates)):
            raise ValueError(f"DistillKLDivLoss: teacher scores of shape {tuple(labels.shape)}; each row needs one "
                             f"score per candidate column: ({query.shape[0]}, {len(candidates)})")
        teacher = labels.detach().to(query.dtype)
        if teacher.isnan().any():
            raise ValueError("DistillKLDivLoss: the teacher scores contain NaN; check the data's score column")
        student = torch.log_softmax(_pair_scores(query, candidates, self.similarity) / self.student_temperature, dim=1)
        target = torch.softmax(teacher / self.teacher_temperature, dim=1)
        return F.kl_div(student, target, reduction="batchmean") * self.student_temperature ** 2
