"""Where training batches come from: a map-style dataset with the exact ST sampler, or a stream with windowed batches.

Both sources hand the datamodule one ``DataLoader`` whose batches have no value twice (no duplicate text, no image
twice), so no in-batch negative is a copy of a positive, and give every DDP rank the same number of batches.

- :class:`MapStyleSource`: an Arrow-backed ``datasets.Dataset`` plus one integer code per (row, value), batched by
  :class:`~datamodules.sampler.NoDuplicatesBatchSampler` (sentence-transformers' exact batches in one process).
- :class:`StreamingSource`: an HF ``IterableDataset`` read shard by shard in the DataLoader workers of every rank.
  Rows pass a bounded shuffle buffer, then a window in which :func:`~datamodules.sampler.no_duplicate_batches` forms
  full duplicate-free batches; rows that fit no batch yet wait in the window for the next ones. Bad rows are skipped
  and counted. Each rank yields exactly ``steps_per_epoch`` batches: a worker whose shards run out reads them again
  (counted as repeated rows), so no rank waits for another at the end of an epoch.
"""

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import datasets
from datasets.distributed import split_dataset_by_node
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.batches import REPORT
from datamodules.sampler import NoDuplicatesBatchSampler, no_duplicate_batches

log = logging.getLogger(__name__)


class BadRow(ValueError):
    """A training row that cannot be used (empty text, unreadable image): skipped in a stream, counted, reported."""


class TrainSource(ABC):
    """One epoch's training batches for one rank."""

    @abstractmethod
    def dataloader(self, *, epoch: int, rank: int, world: int, options: dict,
                   resume: tuple[int, int] | None = None) -> DataLoader:
        """The DataLoader of ``epoch`` for ``rank`` of ``world``; ``options`` are worker and pinning options.
        ``resume=(e, k)``: a resumed run that trained ``k`` batches of epoch ``e``; epoch ``e``'s first iteration
        serves its batches from ``k + 1`` on, with the length of the whole epoch (Lightning counts on from ``k``)."""

    @property
    @abstractmethod
    def equal_batch_sizes(self) -> bool:
        """Whether every batch on every rank has exactly ``batch_size`` rows (what a cross-device gather needs)."""


class MapStyleSource(TrainSource):
    """An indexable dataset batched by the no-duplicates sampler.

    Args:
        dataset: the training rows; ``dataset[i]`` is what the collate function receives.
        row_values: (N, C) integer codes, one per value of each row (equal codes = equal values); rows sharing a code
            never meet in a batch. With ``no_duplicates`` off, pass one distinct code per row.
        batch_size: rows per batch on each rank.
        drop_last: only full batches.
        seed: the batch order of epoch ``e`` is seeded with ``seed + e``.
        collate: rows → batch, run in the workers.
    """

    def __init__(self, dataset, row_values: np.ndarray, batch_size: int, drop_last: bool, seed: int,
                 collate: Callable) -> None:
        self.dataset, self.row_values = dataset, row_values
        self.batch_size, self.drop_last, self.seed, self.collate = batch_size, drop_last, seed, collate

    @property
    def equal_batch_sizes(self) -> bool:
        return self.drop_last

    def dataloader(self, *, epoch: int, rank: int, world: int, options: dict,
                   resume: tuple[int, int] | None = None) -> DataLoader:
        sampler = NoDuplicatesBatchSampler(self.row_values, self.batch_size, drop_last=self.drop_last, seed=self.seed,
                                           num_replicas=world, rank=rank)
        if resume is not None:
            sampler.resume(*resume)
        sampler.set_epoch(epoch)  # len() of this epoch
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate, **options)


@dataclass
class EpochReport:
    """What a stream skipped or repeated; carried to the main process inside the batches."""

    skipped: int = 0
    examples: list[str] = field(default_factory=list)  # the first few skipped rows, with why
    repeated_passes: int = 0  # times a worker's shards ran out and were read again to fill the epoch

    KEEP = 10  # examples kept

    def skip(self, count: int, example: str) -> None:
        self.skipped += count
        if len(self.examples) < self.KEEP:
            self.examples.append(example)

    def add(self, other: "EpochReport") -> None:
        self.skipped += other.skipped
        self.examples += other.examples[: max(0, self.KEEP - len(self.examples))]
        self.repeated_passes += other.repeated_passes


class StreamingSource(TrainSource):
    """An HF ``IterableDataset`` turned into duplicate-free batches in the workers.

    Args:
        stream: the training split as an HF ``IterableDataset`` (``take(n)`` already applied for a row cap).
        rows: rows per epoch (all ranks together) when known, from the row cap or the data's metadata; None: unknown.
        max_steps: ``--trainer.max_steps`` (-1: unset); when ``rows`` is unknown, the run is one epoch of that many
            optimizer steps.
        accumulate: ``--trainer.accumulate_grad_batches``: batches per optimizer step.
        batch_size: rows per batch on each rank.
        seed: seed of the shard order and shuffle buffer (reshuffled every epoch).
        buffer_size: rows in the shuffle buffer (HF ``IterableDataset.shuffle``): more mixes better, costs memory.
        window: rows among which duplicate-free batches are formed (at least ``batch_size``).
        admit: ``row → values`` of a row whose values may not repeat in a batch; raises :class:`BadRow` for a row to
            skip. Runs in the workers.
        collate: rows → batch, run in the workers.
        where: names the data in messages.
    """

    def __init__(self, stream: datasets.IterableDataset, rows: int | None, max_steps: int, accumulate: int,
                 batch_size: int, seed: int, buffer_size: int, window: int, admit: Callable[[dict], tuple],
                 collate: Callable, where: str) -> None:
        if rows is None and max_steps < 0:
            raise ValueError(
                f"{where}: the stream's length is unknown (no row count in its metadata, not a local parquet, json, "
                f"jsonl or csv file), so an epoch has no end: set --data.init_args.max_train_rows (rows per epoch) or "
                f"--trainer.max_steps (the run is then one epoch of that many optimizer steps, validated at its end)")
        self.stream, self.rows, self.max_steps, self.accumulate = stream, rows, max_steps, accumulate
        self.batch_size, self.seed, self.buffer_size = batch_size, seed, buffer_size
        self.window, self.admit, self.collate, self.where = max(window, batch_size), admit, collate, where

    @property
    def equal_batch_sizes(self) -> bool:
        return True

    def steps_per_epoch(self, world: int) -> int:
        """Batches every rank yields per epoch: full global batches of the known rows. With the rows unknown, the
        batches of ``max_steps`` optimizer steps, so that the run is one epoch that ends: Lightning validates and
        checkpoints at an epoch's end, and the exported weights are validated ones (an endless epoch stopped at
        max_steps unvalidated)."""
        if self.rows is None:
            return self.max_steps * self.accumulate
        steps = self.rows // (self.batch_size * world)
        if steps == 0:
            raise ValueError(f"{self.where}: {self.rows} rows make no batch of {self.batch_size} on each of {world} "
                             f"ranks; lower --data.init_args.batch_size")
        return steps

    def dataloader(self, *, epoch: int, rank: int, world: int, options: dict,
                   resume: tuple[int, int] | None = None) -> DataLoader:
        stream = split_dataset_by_node(self.stream, rank=rank, world_size=world)
        options = workers_for_shards(options, stream.num_shards, self.where)
        steps = self.steps_per_epoch(world)
        return resumed_stream_loader(
            lambda epoch, skip: StreamBatches(stream, steps, epoch, self.seed, self.buffer_size, self.batch_size,
                                              self.window, self.admit, self.collate, f"{self.where} rank {rank}",
                                              skip=skip), steps, epoch, options, resume)


def workers_for_shards(options: dict, shards: int, where: str) -> dict:
    """Loader ``options`` with at most ``shards`` workers: HF gives each worker whole shards, so a worker without one
    would have nothing to read."""
    workers = options["num_workers"]
    if workers <= shards:
        return options
    log.warning("%s: %d DataLoader workers for %d shard(s) on this rank: using %d (split the data into more files "
                "for more)", where, workers, shards, shards)
    return {**options, "num_workers": shards, "persistent_workers": True}


def resumed_stream_loader(batches: Callable[[int, int], IterableDataset], steps: int, epoch: int, options: dict,
                          resume: tuple[int, int] | None) -> DataLoader:
    """The loader of a stream's batches (``batches(epoch, skip)``: its worker's batches of ``epoch``, the first
    ``skip`` formed but not served) with ``steps`` batches per epoch, resumed as ``TrainSource.dataloader`` says."""
    if resume is not None and resume[1] >= steps:
        epoch, resume = resume[0] + 1, None  # saved after the epoch's last batch: the next epoch starts afresh
    # DataLoader takes batch i from worker i % W: to serve batch k first, every worker skips k // W of its batches
    # without collating them and the loader drops the k % W batches that still come before batch k
    workers = max(1, options["num_workers"])
    skip = 0 if resume is None else resume[1]
    return SkipFirst(batches(epoch, skip // workers), skip=skip % workers, batch_size=None, **options)


class StreamBatches(IterableDataset):
    """The batches of one rank: each worker reads its shards and yields its share of ``steps`` batches per epoch.

    Persistent workers keep their copy of this object, so each ``__iter__`` is the next epoch (Lightning calls
    ``set_epoch`` only on samplers, which an iterable dataset has none of). Each pass over the shards is shuffled
    (shard order and buffer) by a generator seeded with ``(seed, epoch, pass)`` in the worker itself, never through
    HF's ``set_epoch``: that adds the difference to an epoch counter which forked workers share, and two workers
    setting the same epoch at once could both add it (epoch 1 read as 2000): a run's batches then differed from its
    second epoch on, in about one 3-epoch loop in ten.
    """

    def __init__(self, stream: datasets.IterableDataset, steps: int, epoch: int, seed: int, buffer_size: int,
                 batch_size: int, window: int, admit: Callable[[dict], tuple], collate: Callable, where: str,
                 skip: int = 0) -> None:
        self.stream, self.steps, self.epoch, self.skip = stream, steps, epoch, skip
        self.seed, self.buffer_size = seed, buffer_size
        self.batch_size, self.window, self.admit, self.collate, self.where = batch_size, window, admit, collate, where

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, self.epoch = self.epoch, self.epoch + 1
        # DataLoader takes batches from the workers in turn, so worker w serves every workers-th batch
        quota = self.steps // workers + (worker < self.steps % workers)
        skip, self.skip = self.skip, 0  # resuming: this worker's batches already trained (the first epoch only)
        return self.batches(worker, epoch, quota, skip)

    def batches(self, worker: int, epoch: int, quota: int, skip: int = 0) -> Iterator[dict]:
        """This worker's ``quota`` batches of ``epoch`` (its shards read again, reshuffled, until they are formed),
        the first ``skip`` of them formed but neither collated nor yielded (a resumed epoch's trained ones)."""
        report, produced, passes = EpochReport(), 0, 0
        while produced < quota:
            # the same generator in every worker of the rank: on their first pass they agree on the shard order,
            # so each reads shards of its own
            shuffled = self.stream.shuffle(generator=np.random.default_rng([self.seed, epoch, passes]),
                                           buffer_size=self.buffer_size)
            produced_this_pass = 0
            for rows in self._batches(shuffled, report):
                if produced < skip:
                    produced += 1
                    produced_this_pass += 1
                    continue
                batch = self.collate(rows)
                batch[REPORT], report = report, EpochReport()
                yield batch
                produced += 1
                produced_this_pass += 1
                if produced == quota:
                    return
            if produced_this_pass == 0:
                raise ValueError(f"{self.where}, worker {worker}: a whole pass over its shard(s) formed no batch of "
                                 f"{self.batch_size} rows with distinct values; check the data or lower "
                                 f"--data.init_args.batch_size")
            passes += 1
            report.repeated_passes += 1

    def _batches(self, stream: datasets.IterableDataset, report: EpochReport) -> Iterator[list[dict]]:
        """Full duplicate-free batches (their rows) from one pass; fewer than a batch of rows may be left at its end."""
        pending: list[tuple[dict, tuple]] = []
        for row in stream:
            try:
                values = self.admit(row)
            except BadRow as err:
                report.skip(1, str(err))
                continue
            pending.append((row, values))
            if len(pending) == self.window:
                pending = yield from self._full_batches(pending)
                overflow = len(pending) - (self.window - self.batch_size)
                if overflow > 0:  # a window of rows that fit no batch yet: the oldest give way
                    report.skip(overflow, f"{overflow} row(s) shared a value with every batch formed in a window of "
                                          f"{self.window} rows (raise --data.init_args.stream_window)")
                    pending = pending[overflow:]
        yield from self._full_batches(pending)

    def _full_batches(self, pending: list[tuple[dict, tuple]]):
        """Yield the full duplicate-free batches ``pending`` forms; return the rows left waiting, in order."""
        batches = no_duplicate_batches(range(len(pending)), [values for _, values in pending], self.batch_size)
        used = set()
        for batch in batches:
            if len(batch) == self.batch_size:
                used.update(batch)
                yield [pending[i][0] for i in batch]
        return [p for i, p in enumerate(pending) if i not in used]


class SkipFirst(DataLoader):
    """A DataLoader whose first iteration drops its first ``skip`` batches (a resumed epoch's already-trained ones)."""

    def __init__(self, *args, skip: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self):
        iterator, skip, self.skip = super().__iter__(), self.skip, 0
        return self._after(iterator, skip) if skip else iterator

    @staticmethod
    def _after(iterator, skip: int) -> Iterator[dict]:
        carried = EpochReport()  # what the dropped batches' rows skipped still counts
        for _ in range(skip):
            carried.add(next(iterator)[REPORT])
        for batch in iterator:
            if carried is not None:
                carried.add(batch[REPORT])
                batch[REPORT], carried = carried, None
            yield batch
