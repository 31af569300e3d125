"""Cross-device gathering that keeps the gradient flowing back to every rank."""

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)  # (W·B, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Every rank's loss depends on every rank's rows, so a row's gradient is the sum over ranks.
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place and needs contiguous memory
        dist.all_reduce(grad)
        rank, world_size = rank_and_world_size()
        return grad.chunk(world_size)[rank]  # (B, ...)


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, with a gradient that reaches every rank.

    The backward pass sums the incoming gradients over ranks and returns this rank's slice, so that each rank's
    embeddings receive the gradient of the sum of all ranks' losses (DDP then averages parameter gradients).

    Args:
        tensor: (B, ...) local tensor; B and the trailing shape must be the same on every rank.

    Returns:
        (W·B, ...) tensor, rank r's rows at [r·B, (r+1)·B); ``tensor`` itself when not distributed.
    """
    if rank_and_world_size()[1] == 1:
        return tensor
    return _AllGather.apply(tensor.contiguous())
