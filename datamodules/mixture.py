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

:class:`MixtureSource` is the training source (``datamodules.sources.TrainSource``) of several map-style sources: one
DataLoader whose batches are each source's own collated batches, named by the source (``TrainBatch["source"]``).
"""

import bisect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.batches import SOURCE
from datamodules.sampler import EpochBatchSampler, NoDuplicatesBatchSampler
from datamodules.sources import MapStyleSource, TrainSource

SAMPLINGS = ("proportional", "round_robin")


def announced_batches(rows: int, batch_size: int, drop_last: bool) -> int:
    """The batch count sentence-transformers' ``NoDuplicatesBatchSampler.__len__`` announces for ``rows`` rows."""
    return rows // batch_size if drop_last else -(-rows // batch_size)


def check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")


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
    check_sampling(sampling)
    if sampling == "round_robin":
        return [k for _ in range(min(counts, default=0)) for k in range(len(counts))]
    sources = [k for k, count in enumerate(counts) for _ in range(count)]
    generator = torch.Generator().manual_seed(seed + epoch)
    return [sources[i] for i in torch.randperm(len(sources), generator=generator).tolist()]


class MixtureBatchSampler(EpochBatchSampler):
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
        check_sampling(sampling)
        super().__init__()
        self.samplers = list(samplers)
        self.sampling = sampling
        self.seed = seed
        self.offsets = [0]
        for sampler in self.samplers[:-1]:
            self.offsets.append(self.offsets[-1] + len(sampler.row_values))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def _sharded(self) -> bool:
        return self.samplers[0].num_replicas > 1

    def _form_batches(self) -> list[tuple[int, list[int]]]:
        """This rank's (source, batch) pairs of the current epoch, the batch's row indices local to its source."""
        sharded = self._sharded()
        if sharded:  # each source's batches on this rank (one-row batches already left out): counts all ranks share
            per_source = [sampler.epoch_batches() for sampler in self.samplers]
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
        return served

    def _indices(self, batch: tuple[int, list[int]]) -> list[int]:
        k, rows = batch
        return [self.offsets[k] + i for i in rows]


class MixtureSource(TrainSource):
    """Several map-style sources, each batch from one of them in the order of :class:`MixtureBatchSampler`.

    Args:
        sources: name → that source's rows, value codes, batch size, ``drop_last`` and collate function (its own
            columns); a batch carries its source's name under ``SOURCE``.
        sampling: ``proportional`` or ``round_robin``.
        seed: seeds every source's batches and the interleaving with the epoch (as sentence-transformers' trainer seed
            does); the sources' own seeds are not used.
    """

    def __init__(self, sources: Mapping[str, MapStyleSource], sampling: str = "proportional", seed: int = 0) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        check_sampling(sampling)  # here, before any loader is built
        self.sources, self.sampling, self.seed = dict(sources), sampling, seed

    @property
    def equal_batch_sizes(self) -> bool:
        # every rank serves the same source at every step, so sources may differ in batch size
        return all(source.drop_last for source in self.sources.values())

    def dataloader(self, *, epoch: int, rank: int, world: int, options: dict,
                   resume: tuple[int, int] | None = None) -> DataLoader:
        sources = list(self.sources.values())
        samplers = [NoDuplicatesBatchSampler(s.row_values, s.batch_size, drop_last=s.drop_last, seed=self.seed,
                                             num_replicas=world, rank=rank) for s in sources]
        mixture = MixtureBatchSampler(samplers, self.sampling, self.seed)
        if resume is not None:
            mixture.resume(*resume)
        mixture.set_epoch(epoch)  # len() of this epoch
        rows = ConcatenatedRows([s.dataset for s in sources], mixture.offsets)
        collate = MixtureCollator(list(self.sources), [s.collate for s in sources])
        return DataLoader(rows, batch_sampler=mixture, collate_fn=collate, **options)


class ConcatenatedRows(Dataset):
    """The sources' rows one after the other, each item ``(source index, row)``: the collator needs to know whose."""

    def __init__(self, datasets: Sequence, offsets: Sequence[int]) -> None:
        self.datasets, self.offsets = list(datasets), list(offsets)

    def __len__(self) -> int:
        return self.offsets[-1] + len(self.datasets[-1])

    def __getitem__(self, index: int) -> tuple[int, object]:
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, self.datasets[k][index - self.offsets[k]]


class MixtureCollator:
    """A batch of one source's rows → that source's collated batch, with the source's name."""

    def __init__(self, names: Sequence[str], collates: Sequence[Callable]) -> None:
        self.names, self.collates = list(names), list(collates)

    def __call__(self, items: list[tuple[int, object]]) -> dict:
        sources = {k for k, _ in items}
        if len(sources) != 1:  # the sampler never mixes sources in a batch; a batch that did would mix domains
            raise RuntimeError(f"a mixture batch holds rows of {len(sources)} sources: {sorted(sources)}")
        (k,) = sources
        return {**self.collates[k]([row for _, row in items]), SOURCE: self.names[k]}
