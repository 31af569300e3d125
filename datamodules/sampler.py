"""Batches in which no value occurs twice, so no in-batch negative is a copy of an anchor or positive.

Reproduces sentence-transformers' ``NoDuplicatesBatchSampler`` (``BatchSamplers.NO_DUPLICATES``): the same
permutation (``torch.randperm`` seeded with seed + epoch) and the same greedy pass that defers a conflicting row to a
later batch, so a single process gets ST's batches exactly. Unlike ST it also shards across DDP ranks itself and
knows its exact length (a wrong ``__len__`` hangs DDP, ST #3348).
"""

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Shuffled batches of row indices where no value repeats within a batch, in any column.

    Args:
        row_values: for each row, its values in every column (text as ``str``; images as a content key). Two rows
            conflict when they share any value.
        batch_size: rows per batch on each rank.
        drop_last: drop the final smaller batch (and, under DDP, the batches that would leave ranks unequal).
        seed: the permutation of epoch ``e`` is seeded with ``seed + e`` (call ``set_epoch``; Lightning does).
        num_replicas: number of ranks; default: the initialised process group's world size, else 1.
        rank: this rank; default: the process group's rank, else 0. Every rank forms the same global batches and takes
            every ``num_replicas``-th; without ``drop_last`` the list is padded by cycling from its start (as
            accelerate's ``even_batches``) so every rank yields the same number of batches.
    """

    def __init__(
        self,
        row_values: Sequence[Sequence[Hashable]],
        batch_size: int,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if len(row_values) == 0:
            raise ValueError("row_values is empty: there is nothing to sample")
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.row_values = [set(values) for values in row_values]
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before sharding (cached per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._one_pass())
        return self._cache[1]

    def _one_pass(self) -> list[list[int]]:
        n = len(self.row_values)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator, dtype=torch.int32 if n < 2**31 else torch.int64).numpy()
        following = np.arange(1, n + 1, dtype=np.int64)  # a linked list over the shuffled positions; -1 ends it
        following[-1] = -1
        head, batches = 0, []
        while head != -1:
            batch, seen, position, previous = [], set(), head, -1
            while position != -1:
                nxt = int(following[position])
                index = int(order[position])
                values = self.row_values[index]
                if not values.isdisjoint(seen):  # deferred, keeps its place for a later batch
                    previous, position = position, nxt
                    continue
                batch.append(index)
                if previous == -1:
                    head = nxt
                else:
                    following[previous] = nxt
                if len(batch) == self.batch_size:
                    break
                seen |= values
                position = nxt
            if len(batch) == self.batch_size or (batch and not self.drop_last):
                batches.append(batch)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        if self.num_replicas == 1:
            return batches
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        elif len(batches) % self.num_replicas:
            pad = self.num_replicas - len(batches) % self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(pad)]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._rank_batches()

    def __len__(self) -> int:
        return len(self._rank_batches())
