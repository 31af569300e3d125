"""Batches from several training sources, each batch from one source: which source each batch of an epoch comes from.

A recipe that trains on several sources draws every batch from one of them (FlagEmbedding's
``same_dataset_within_batch``, sentence-transformers' multi-dataset samplers), so that a batch's in-batch negatives
come from one domain and one column layout. Each source has its own ``NoDuplicatesBatchSampler``; this module decides
the order in which their batches are served:

- ``proportional`` (sentence-transformers' default, ``ProportionalBatchSampler``): every source's batches once per
  epoch, in a random interleaving (a permutation seeded with ``seed + epoch``), so larger sources are drawn more often.
- ``round_robin`` (``RoundRobinBatchSampler``): one batch of each source in turn, until the source with the fewest
  batches has none left: every source contributes equally; the larger ones are not read whole in an epoch.

Both reproduce sentence-transformers' order exactly in one process (tested against its samplers): the interleaving
is drawn over the batch counts its samplers announce (``len``: rows // batch_size with ``drop_last``, else rounded up),
and a slot whose batch litembed leaves out (a batch of one row, which has no in-batch negative) or that a source cannot
fill is skipped, so every other batch stays where sentence-transformers puts it. Two deviations, both where
sentence-transformers would serve rows twice in an epoch: a source whose single pass forms fewer batches than announced
is not reshuffled to fill the rest (its slots are skipped), and a source's batches beyond the announced count are not
served, as in sentence-transformers, which draws only the announced count.

Under DDP every rank serves the same source at the same step (what a cross-device gather, GradCache and a loss per
source need): the order is drawn over the per-rank batch counts, which every rank shares.
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from datamodules.sampler import NoDuplicatesBatchSampler

SAMPLINGS = ("proportional", "round_robin")


def announced_batches(rows: int, batch_size: int, drop_last: bool) -> int:
    """The batch count sentence-transformers' ``NoDuplicatesBatchSampler.__len__`` announces for ``rows`` rows."""
    return rows // batch_size if drop_last else -(-rows // batch_size)


def source_slots(counts: Sequence[int], sampling: str, seed: int, epoch: int) -> list[int]:
    """The source of each batch slot of an epoch.

    Args:
        counts: each source's batch count (sentence-transformers' announced count in one process; the per-rank count
            under DDP).
        sampling: ``proportional`` or ``round_robin``.
        seed: with ``epoch``, seeds the proportional interleaving (``seed + epoch``, as sentence-transformers).
        epoch: the epoch.

    Returns:
        Source indices, one per slot; ``proportional``: each source ``counts[k]`` times; ``round_robin``: ``0, 1, …``
        repeated ``min(counts)`` times.
    """
    if sampling == "round_robin":
        return [k for _ in range(min(counts, default=0)) for k in range(len(counts))]
    if sampling != "proportional":
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    sources = [k for k, count in enumerate(counts) for _ in range(count)]
    generator = torch.Generator().manual_seed(seed + epoch)
    return [sources[i] for i in torch.randperm(len(sources), generator=generator).tolist()]


class MixtureBatchSampler(Sampler[list[int]]):
    """Batches of row indices into the concatenation of the sources' rows (source ``k``'s rows follow those of sources
    ``0 … k-1``), each batch from one source, in the order described above.

    Args:
        samplers: one ``NoDuplicatesBatchSampler`` per source, over that source's rows, all with the same seed,
            ``num_replicas`` and ``rank``.
        sampling: ``proportional`` or ``round_robin``.
        seed: seeds the interleaving with the epoch (sentence-transformers uses its trainer seed for both).
    """

    def __init__(self, samplers: Sequence[NoDuplicatesBatchSampler], sampling: str = "proportional",
                 seed: int = 0) -> None:
        if not samplers:
            raise ValueError("a mixture needs at least one source")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.samplers = list(samplers)
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        self.offsets = [0]
        for sampler in self.samplers[:-1]:
            self.offsets.append(self.offsets[-1] + len(sampler.row_values))
        self._cache: tuple[int, list[tuple[int, list[int]]]] | None = None
        self._resume: tuple[int, int] | None = None

    @property
    def sampler(self) -> "MixtureBatchSampler":
        """This sampler, for Lightning, which calls ``set_epoch`` on ``dataloader.batch_sampler.sampler`` only."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def resume(self, epoch: int, batches: int) -> None:
        """Resuming a run that trained ``batches`` of epoch ``epoch``: that epoch serves the rest."""
        self._resume = (epoch, batches)

    def _sharded(self) -> bool:
        return self.samplers[0].num_replicas > 1

    def source_batches(self) -> list[tuple[int, list[int]]]:
        """This rank's (source, batch) pairs of the current epoch, the batch's row indices local to its source."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        sharded = self._sharded()
        if sharded:  # each source's batches on this rank (one-row batches already left out): counts all ranks share
            per_source = [sampler._rank_batches() for sampler in self.samplers]
            counts = [len(batches) for batches in per_source]
        else:  # what sentence-transformers' samplers yield in their first pass, and the counts they announce
            per_source = [[batch for batch in s.st_batches() if not s.drop_last or len(batch) == s.batch_size]
                          for s in self.samplers]
            counts = [announced_batches(len(s.row_values), s.batch_size, s.drop_last) for s in self.samplers]
        if self.sampling == "round_robin":  # ST zips its samplers: as many rounds as the shortest one yields
            counts = [min(map(len, per_source))] * len(per_source)
        served, taken = [], [0] * len(self.samplers)
        for k in source_slots(counts, self.sampling, self.seed, self.epoch):
            if taken[k] == len(per_source[k]):
                continue  # a source that formed fewer batches than announced: not reshuffled to fill its slots
            batch, taken[k] = per_source[k][taken[k]], taken[k] + 1
            if sharded or len(batch) > 1 or self.samplers[k].batch_size == 1:  # (a one-row batch has no negative)
                served.append((k, batch))
        self._cache = (self.epoch, served)
        return served

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        for k, batch in self.source_batches()[skip:]:
            yield [self.offsets[k] + i for i in batch]

    def __len__(self) -> int:
        return len(self.source_batches())
