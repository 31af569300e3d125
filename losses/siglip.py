"""SigLIP's pairwise sigmoid loss for image–text dual encoders, as open_clip's ``SigLipLoss``."""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from losses.distributed import rank_and_world_size


def _pair_loss(images: Tensor, texts: Tensor, scale: Tensor | float, bias: Tensor | float,
               positives_on_diagonal: bool) -> Tensor:
    """−Σ log σ(z_ij · (scale · ⟨x_i, y_j⟩ + bias)) over the (B, B') block: z = +1 on the diagonal when it holds the
    pairs, −1 elsewhere."""
    logits = scale * images @ texts.T + bias  # (B, B')
    signs = -torch.ones_like(logits)
    if positives_on_diagonal:
        signs = signs + 2 * torch.eye(*logits.shape, dtype=logits.dtype, device=logits.device)
    return -F.logsigmoid(signs * logits).sum()


class _Exchange(torch.autograd.Function):
    """Send ``to_right`` to the right neighbour and ``to_left`` to the left one (either may be None), receiving the
    left's and the right's; backward sends each gradient back where its tensor came from."""

    @staticmethod
    def forward(ctx, left: int, right: int, to_left: Tensor | None, to_right: Tensor | None):
        ctx.left, ctx.right = left, right
        return _exchange(left, right, to_left, to_right)

    @staticmethod
    def backward(ctx, grad_from_left: Tensor | None, grad_from_right: Tensor | None):
        # each gradient goes back where its tensor came from: the left neighbour's, leftwards. What arrives from the
        # left is the left neighbour's gradient of what it received from me (my to_left), and from the right of my
        # to_right
        of_to_left, of_to_right = _exchange(ctx.left, ctx.right, _contiguous(grad_from_left),
                                            _contiguous(grad_from_right))
        return None, None, of_to_left, of_to_right


def _contiguous(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.contiguous()


def _exchange(left: int, right: int, to_left: Tensor | None, to_right: Tensor | None):
    """(received from the left, received from the right): point-to-point, each rank with its two neighbours."""
    ops, from_left, from_right = [], None, None
    if to_right is not None:  # I send right, so my left neighbour sends me its to_right
        from_left = torch.empty_like(to_right)
        ops += [dist.P2POp(dist.isend, to_right, right), dist.P2POp(dist.irecv, from_left, left)]
    if to_left is not None:
        from_right = torch.empty_like(to_left)
        ops += [dist.P2POp(dist.isend, to_left, left), dist.P2POp(dist.irecv, from_right, right)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return from_left, from_right


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss: every (image, text) pair of the batch is its own binary classification.

    From Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (https://arxiv.org/abs/2303.15343). For B
    rows of image embeddings x and text embeddings y (each (B, D), L2-normalised here), a learnable scale t and bias b::

        loss = −(1/B) Σ_i Σ_j log σ(z_ij · (t · ⟨x_i, y_j⟩ + b)),   z_ij = +1 if i = j else −1

    No softmax couples the rows, so under DDP each rank needs only the other ranks' texts as negatives, which it gets
    from its neighbours in a ring (open_clip's ``bidir`` exchange: W−1 blocks of (B, B) logits per rank, never the
    (B·W)² matrix nor an all-gather); gradients flow back through the same exchanges. A rank's loss is its images
    against every rank's texts, as open_clip's; DDP averages the gradients. Values and gradients equal open_clip's
    ``SigLipLoss`` alone and with 2 and 3 gloo ranks (tested).

    The scale and bias are parameters of the model (``CLIPEmbeddingModule`` creates them when it trains with this
    loss, initialised from ``init_logit_scale`` and ``init_logit_bias``, and passes ``scale = exp(logit_scale)`` and
    ``bias``), as CLIP's learnable temperature is; neither is part of the exported encoder. The bias shifts every
    logit equally, so retrieval ranks (cosine similarities) do not depend on it.

    Args:
        init_logit_scale: initial log of the scale (SigLIP: log 10).
        init_logit_bias: initial bias (SigLIP: −10, so that the many negatives start with a small loss).
        gather_across_devices: under DDP, contrast each rank's images with every rank's texts (the exchange above);
            False: each rank's batch on its own. SigLIP trains with it on, as open_clip does.
    """

    takes_bias = True

    def __init__(self, init_logit_scale: float = math.log(10), init_logit_bias: float = -10.0,
                 gather_across_devices: bool = True) -> None:
        super().__init__()
        self.init_logit_scale = init_logit_scale
        self.init_logit_bias = init_logit_bias
        self.gather_across_devices = gather_across_devices

    def get_config_dict(self) -> dict:
        return {"init_logit_scale": self.init_logit_scale, "init_logit_bias": self.init_logit_bias,
                "gather_across_devices": self.gather_across_devices}

    def forward(self, images: Tensor, texts: Tensor, *negatives: Tensor, scale: Tensor | float | None = None,
                bias: Tensor | float | None = None) -> Tensor:
        """``images``, ``texts``: (B, D) embeddings of the pairs' two columns; ``scale``, ``bias``: the model's
        (defaults: the initial values)."""
        if negatives:
            raise ValueError(f"SigLipLoss takes (image, caption) pairs: {2 + len(negatives)} columns given; train "
                             f"with two --data.init_args.columns")
        if images.ndim != 2 or images.shape != texts.shape:
            raise ValueError(f"SigLipLoss needs two (B, D) embedding matrices, got {tuple(images.shape)} and "
                             f"{tuple(texts.shape)}")
        scale = math.exp(self.init_logit_scale) if scale is None else scale
        bias = self.init_logit_bias if bias is None else bias
        images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
        loss = _pair_loss(images, texts, scale, bias, True)
        rank, world = rank_and_world_size()
        if self.gather_across_devices and world > 1:
            left, right = (rank - 1) % world, (rank + 1) % world
            to_left = to_right = texts.contiguous()
            pairs, odd = divmod(world - 1, 2)
            for _ in range(pairs):  # texts travel both ways round the ring: one hop further each round
                from_left, from_right = _Exchange.apply(left, right, to_left, to_right)
                loss = loss + _pair_loss(images, from_left, scale, bias, False) \
                    + _pair_loss(images, from_right, scale, bias, False)
                to_left, to_right = from_right, from_left
            if odd:  # the rank halfway round: from the left only
                from_left, _ = _Exchange.apply(left, right, None, to_right)
                loss = loss + _pair_loss(images, from_left, scale, bias, False)
        return loss / images.shape[0]

    def extra_repr(self) -> str:
        return (f"init_logit_scale={self.init_logit_scale:.4f}, init_logit_bias={self.init_logit_bias}, "
                f"gather_across_devices={self.gather_across_devices}")
