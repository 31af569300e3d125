"""``EmbeddingCollector``: the torchmetrics ``Metric`` that gathers one evaluation stream's embeddings across batches
and DDP ranks, for the retrieval math in ``metrics.functional`` to score. It only holds state: ``update`` validates and
stores, ``compute`` returns the whole stream, ``shard`` this process's part of it.
"""

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class EmbeddingCollector(Metric):
    """Accumulates one evaluation stream's embeddings across batches and DDP ranks, keyed by item id.

    ``update(ids, embeddings)`` per batch; ``compute()`` returns the embeddings ordered by id, each id once
    (distributed samplers repeat items to even out ranks), in the dtype they were given.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")

    def update(self, ids: Tensor, embeddings: Tensor) -> None:
        """Store one batch.

        Args:
            ids: (N,) integer ids of the items, 0 … stream size - 1.
            embeddings: (N, D) their embeddings.
        """
        if ids.ndim != 1 or embeddings.ndim != 2 or ids.shape[0] != embeddings.shape[0]:
            raise ValueError(f"expected ids (N,) and embeddings (N, D), got {tuple(ids.shape)} and "
                             f"{tuple(embeddings.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor, got {ids.dtype}")
        self.ids.append(ids.to(embeddings.device, torch.long))
        self.embeddings.append(embeddings.detach())

    def compute(self) -> Tensor:
        """(N, D) embeddings, row i for id i; the first occurrence wins when an id was seen more than once."""
        unique, embeddings = self._unique()  # (N,), (N, D)
        if unique[0] < 0:
            raise ValueError(f"ids must be ≥ 0, got {int(unique[0])}")
        if unique[-1] + 1 != unique.numel():
            missing = sorted(set(range(int(unique[-1]) + 1)) - set(unique.tolist()))
            raise ValueError(f"embeddings missing for {len(missing)} ids, first {missing[:10]}: every item of the "
                             f"stream must be evaluated (limit_val_batches / fast_dev_run evaluate part of a stream)")
        return embeddings

    def _unique(self) -> tuple[Tensor, Tensor]:
        """The held ids, ascending, each once (its first occurrence), with their embeddings."""
        if isinstance(self.ids, list) and not self.ids:  # after a DDP sync the states are tensors
            raise ValueError("no embeddings were collected: update() was never called for this stream")
        ids, embeddings = dim_zero_cat(self.ids).long(), dim_zero_cat(self.embeddings)  # (M,), (M, D)
        order = ids.argsort(stable=True)  # (M,)
        sorted_ids = ids[order]
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]  # (M,) first of each run of equal ids
        return sorted_ids[first], embeddings[order[first]]

    def shard(self, rank: int, world: int, gathered: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
        """This process's part of the stream for sharded scoring, without gathering the stream: the items whose
        id ≡ ``rank`` (mod ``world``), as the evaluation loaders hand them out (``datamodules.base``).

        Args:
            rank: this process's global rank.
            world: number of processes.
            gathered: the whole stream (``compute()``), when it was gathered anyway; its rows are sliced.

        Returns:
            (ids (N_r,) ascending, embeddings (N_r, D), items in the whole stream). A collective when ``world`` > 1:
            every process calls it, in the same order.

        Raises:
            ValueError: when the processes together do not hold every id of the stream exactly once.
        """
        if gathered is not None:
            ids = torch.arange(rank, gathered.shape[0], world, device=gathered.device)
            return ids, gathered[ids], gathered.shape[0]
        ids, embeddings = self._unique()  # this rank's, unsynced
        keep = ids % world == rank  # the padding repeats of other ranks' items are dropped here
        ids, embeddings = ids[keep], embeddings[keep]
        held = ids.new_tensor(ids.numel())  # items held here, and 1 + the largest id
        size = ids[-1] + 1 if ids.numel() else ids.new_tensor(0)
        if world > 1:
            dist.all_reduce(held)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
        if held != size:
            raise ValueError(f"the {world} processes hold {int(held)} distinct items of a stream of {int(size)}: "
                             f"every item must be evaluated once (limit_val_batches / fast_dev_run evaluate part "
                             f"of a stream)")
        return ids, embeddings, int(size)
