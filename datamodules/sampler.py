"""Batches in which no value occurs twice, so no in-batch negative is a copy of an anchor or positive.

Reproduces sentence-transformers' ``NoDuplicatesBatchSampler`` (``BatchSamplers.NO_DUPLICATES``): the same
permutation (``torch.randperm`` seeded with seed + epoch) and the same greedy rule, so one process gets ST's batches
exactly. ST forms each batch by rescanning the rows not yet batched from the start, deferring those that share a value
with the batch so far; a value found in many rows makes those rescans quadratic (ST's loop takes minutes on 100k rows
when one value is in 5-20 % of them). Placing each row, in permutation order, into the lowest-numbered batch that is
not full and holds none of its values gives the same batches in one pass, which is what is done here.

Unlike ST it also shards across DDP ranks and knows its exact length (ST's ``__len__`` is an estimate, and a wrong
``__len__`` hangs DDP, ST #3348). Unlike ST with ``drop_last=True`` it never reshuffles to top up an epoch that
formed fewer than ``len(rows) // batch_size`` full batches: each row is used at most once per epoch. And unlike ST
it yields no batch of one row: ST yields those (its loss gives them 0, an anchor with no negative); here such rows,
which share a value with every larger batch of the epoch (or are the one row left over), are left out of that epoch
and counted in the log, so that the loss never receives a batch it must refuse. Every batch of 2 or more rows is ST's.
"""

import logging
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def no_duplicate_batches(order: Sequence[int], row_values: Sequence[Sequence[Hashable]],
                         batch_size: int) -> list[list[int]]:
    """Put each row, in ``order``, into the first batch that is not full and shares none of its values.

    Args:
        order: row indices in the order they are placed.
        row_values: for each row, the values that may not repeat within a batch.
        batch_size: the most rows in a batch.

    Returns:
        The batches, numbered as created; any may be smaller than ``batch_size`` (the last ones usually are).
    """
    batches: list[list[int]] = []
    batch_values: list[set[Hashable]] = []
    # Union-find over batch numbers: find(b) is the first batch ≥ b that is not full (len(batches) means a new one).
    following = [0]
    # lowest[v] ≤ the first open batch without v; it only grows, so a batch holding v is stepped over once per v.
    lowest: dict[Hashable, int] = {}

    def find(b: int) -> int:
        root = b
        while following[root] != root:
            root = following[root]
        while following[b] != root:
            following[b], b = root, following[b]
        return root

    for index in order:
        values = row_values[index]
        candidate = 0
        for value in values:
            b = find(lowest.get(value, 0))
            while b < len(batches) and value in batch_values[b]:
                b = find(b + 1)
            lowest[value] = b
            candidate = max(candidate, b)
        while candidate < len(batches) and not batch_values[candidate].isdisjoint(values):
            candidate = find(candidate + 1)
        if candidate == len(batches):
            batches.append([])
            batch_values.append(set())
            following.append(candidate + 1)
        batches[candidate].append(index)
        batch_values[candidate].update(values)
        if len(batches[candidate]) == batch_size:
            following[candidate] = candidate + 1
            batch_values[candidate] = set()  # never looked at again
    return batches


class EpochBatchSampler(Sampler[list[int]]):
    """A batch sampler that forms an epoch's batches once (``epoch_batches``, for ``set_epoch``'s epoch) and can resume
    inside an epoch. Subclasses form the batches (``_form_batches``) and may turn each into row indices
    (``_indices``)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self._cache: tuple[int, list] | None = None  # (epoch, its batches)
        self._resume: tuple[int, int] | None = None

    @property
    def sampler(self) -> "EpochBatchSampler":
        """This sampler, for Lightning, which calls ``set_epoch`` on ``dataloader.batch_sampler.sampler`` only."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Resuming a run that trained ``batches`` of epoch ``epoch``: that epoch serves the rest (``len`` stays the
        whole epoch's, as Lightning counts on from ``batches``)."""
        self._resume = (epoch, batches)

    def epoch_batches(self) -> list:
        """This rank's batches of the current epoch, formed once."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._form_batches())
        return self._cache[1]

    def _form_batches(self) -> list:
        raise NotImplementedError

    def _indices(self, batch) -> list[int]:
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        for batch in self.epoch_batches()[skip:]:
            yield self._indices(batch)

    def __len__(self) -> int:
        return len(self.epoch_batches())


class NoDuplicatesBatchSampler(EpochBatchSampler):
    """Shuffled batches of row indices where no value repeats within a batch, in any column.

    Args:
        row_values: for each row, its values in every column (text as ``str``; images as a content hash), or an
            (N, C) integer array of codes standing for them (``datamodules.checks.value_codes``; equal codes = equal
            values), which is far smaller than N tuples of strings. Two rows conflict when they share any value; ST
            compares ``str(value)``, so pass strings (or codes of strings) to match it.
        batch_size: rows per batch on each rank.
        drop_last: yield only full batches (and, under DDP, a multiple of ``num_replicas`` of them). Otherwise batches
            that ran out of rows without a shared value are yielded too, smaller, down to 2 rows: the rows of
            one-row batches are left out of the epoch (see the module docstring).
        seed: the permutation of epoch ``e`` is seeded with ``seed + e``.
        num_replicas: number of ranks; default: the initialised process group's world size, else 1.
        rank: this rank; default: the process group's rank, else 0. Every rank forms the same batches and takes every
            ``num_replicas``-th, starting at ``rank``; without ``drop_last`` the list is first padded by cycling from
            its start (as accelerate's ``even_batches``) so that every rank yields the same number of batches.

    Raises:
        ValueError: if ``batch_size`` or ``num_replicas`` is below 1, ``rank`` is not a rank, or there are no rows.
        TypeError: if ``row_values`` is a sampler (Lightning re-creating this class to inject a DistributedSampler).
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
        if isinstance(row_values, Sampler):
            raise TypeError("NoDuplicatesBatchSampler shards across ranks itself and cannot wrap a sampler; "
                            "set Trainer(use_distributed_sampler=False)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if len(row_values) == 0:
            raise ValueError("row_values is empty: there is nothing to sample")
        super().__init__()
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else dist.get_world_size() if distributed else 1
        self.rank = rank if rank is not None else dist.get_rank() if distributed else 0
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be ≥ 1, got {self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        if isinstance(row_values, np.ndarray):
            # every value distinct: no row can be deferred, so the batches are consecutive slices of the order
            # codes are dense (dictionary indices): counting them is ~100× faster than np.unique on 2M of them
            self._all_distinct = row_values.size == 0 or (
                row_values.min() >= 0 and np.bincount(row_values.ravel()).max() == 1
                if row_values.max() < 4 * row_values.size else len(np.unique(row_values)) == row_values.size)
            self.row_values = row_values if self._all_distinct else row_values.tolist()
        else:
            self._all_distinct = False
            self.row_values = [tuple(values) for values in row_values]
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed

    def st_batches(self) -> list[list[int]]:
        """sentence-transformers' batches of the current epoch without ``drop_last``; some may hold one row."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.row_values), generator=generator)
        if self._all_distinct:
            full = len(order) - len(order) % self.batch_size
            batches = order[:full].view(-1, self.batch_size).tolist() + ([order[full:].tolist()] if full < len(order) else [])
        else:
            batches = no_duplicate_batches(order.tolist(), self.row_values, self.batch_size)
        return batches

    def global_batches(self) -> list[list[int]]:
        """The batches of the current epoch on all ranks together, before sharding: ST's batches (when unsharded)
        less those of one row, or with ``drop_last`` only the full ones."""
        smallest = self.batch_size if self.drop_last else min(2, self.batch_size)
        return [batch for batch in self.st_batches() if len(batch) >= smallest]

    def _form_batches(self) -> list[list[int]]:
        batches, world = self.global_batches(), self.num_replicas
        left_out = len(self.row_values) - sum(map(len, batches))
        if left_out and not self.drop_last and self.rank == 0:
            log.info("epoch %d: %d of %d training rows left out, each of which would have been a batch of one "
                     "row (no in-batch negative)", self.epoch, left_out, len(self.row_values))
        # rows are left out before padding, so every rank pads to the same count
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % world]
        else:
            batches += [batches[i % len(batches)] for i in range(-len(batches) % world)]
        return batches[self.rank :: world]
