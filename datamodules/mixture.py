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
import contextlib
import contextvars
import copy
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial

import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from datamodules.batches import SOURCE
from datamodules.contract import RetrievalTask
from datamodules.sampler import EpochBatchSampler, NoDuplicatesBatchSampler
from datamodules.sources import MapStyleSource, StreamBatches, StreamingSource, TrainSource, resumed_stream_loader, \
    workers_for_shards
from metrics.keys import MEAN_TASK

SAMPLINGS = ("proportional", "round_robin", "weighted")
# a datamodule's options that the mixture sets for every source: one seed orders all batches, one set of loader
# workers serves them, one evaluation batch size
MIXTURE_OPTIONS = ("sources", "sampling", "seed", "num_workers", "eval_batch_size")
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


def announced_batches(rows: int, batch_size: int, drop_last: bool) -> int:
    """The batch count sentence-transformers' ``NoDuplicatesBatchSampler.__len__`` announces for ``rows`` rows."""
    return rows // batch_size if drop_last else -(-rows // batch_size)


def check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"--data.init_args.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")


def source_slots(counts: Sequence[int], sampling: str, seed: int, epoch: int,
                 weights: Sequence[float] | None = None) -> list[int]:
    """The source of each batch slot of an epoch.

    Args:
        counts: each source's batch count (sentence-transformers' announced count in one process; the per-rank count
            under DDP).
        sampling: ``proportional``, ``round_robin`` or ``weighted``.
        seed: with ``epoch``, seeds the proportional interleaving and the weighted draws (``seed + epoch``, as
            sentence-transformers seeds its samplers).
        epoch: the epoch.
        weights: ``weighted``: each source's weight (any positive numbers; normalised here).

    Returns:
        Source indices, one per slot; ``proportional``: each source ``counts[k]`` times; ``round_robin``: ``0, 1, …``
        repeated ``min(counts)`` times; ``weighted``: ``sum(counts)`` slots, each source drawn independently with
        probability ``weights[k] / sum(weights)``.
    """
    check_sampling(sampling)
    if sampling == "round_robin":
        return [k for _ in range(min(counts, default=0)) for k in range(len(counts))]
    generator = torch.Generator().manual_seed(seed + epoch)
    if sampling == "weighted":
        if weights is None or len(weights) != len(counts) or min(weights, default=0) <= 0:
            raise ValueError(f"weighted sampling needs one positive weight per source, got {weights}")
        probabilities = torch.tensor(weights, dtype=torch.float64)
        total = sum(counts)
        return torch.multinomial(probabilities, total, replacement=True, generator=generator).tolist() if total else []
    sources = [k for k, count in enumerate(counts) for _ in range(count)]
    return [sources[i] for i in torch.randperm(len(sources), generator=generator).tolist()]


def batch_sources(counts: Sequence[int], sampling: str, seed: int, epoch: int, weights: Sequence[float] | None = None,
                  accumulate: int = 1) -> list[int]:
    """The source of each batch of an epoch on one rank: :func:`source_slots` drawn over each source's groups of
    ``accumulate`` batches (``--trainer.accumulate_grad_batches``), each slot expanded into its group, so that an
    optimizer step's batches all come from one source, and one process accumulating ``n`` batches trains the batches
    that ``n`` processes train at a step. A source's last group may be smaller (its batches do not divide)."""
    groups = [-(-count // accumulate) for count in counts]
    left = list(counts)
    order = []
    for k in source_slots(groups, sampling, seed, epoch, weights):
        size = accumulate if sampling == "weighted" else min(accumulate, left[k])  # (weighted: a source is re-read)
        left[k] -= size
        order += [k] * size
    return order


REREAD_SEED_STRIDE = 1_000_003  # pass p of an epoch is seeded seed + p × stride + epoch: no other pass's seed


class MixtureBatchSampler(EpochBatchSampler):
    """Batches of row indices into the concatenation of the sources' rows (source ``k``'s rows follow those of sources
    ``0 … k-1``), each batch from one source, in the order described above.

    With ``weighted`` sampling a source drawn more often than it has batches in the epoch is read again: its next pass
    is shuffled anew (its seed moved by ``REREAD_SEED_STRIDE`` per pass), and ``rereads`` counts the passes.

    Args:
        samplers: one ``NoDuplicatesBatchSampler`` per source, over that source's rows, all with the same seed,
            ``num_replicas`` and ``rank``.
        sampling: ``proportional``, ``round_robin`` or ``weighted``.
        seed: seeds the interleaving with the epoch (sentence-transformers uses its trainer seed for both).
        weights: ``weighted``: one positive weight per source.
        accumulate: batches per optimizer step (``--trainer.accumulate_grad_batches``): the order is drawn over groups
            of this many batches of one source (:func:`batch_sources`).
    """

    def __init__(self, samplers: Sequence[NoDuplicatesBatchSampler], sampling: str = "proportional",
                 seed: int = 0, weights: Sequence[float] | None = None, accumulate: int = 1) -> None:
        if not samplers:
            raise ValueError("a mixture needs at least one source")
        check_sampling(sampling)
        super().__init__()
        self.samplers = list(samplers)
        self.sampling = sampling
        self.seed = seed
        self.weights = list(weights) if weights is not None else None
        self.accumulate = accumulate
        self.rereads: list[int] = [0] * len(self.samplers)  # passes read again in the current epoch, per source
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
        # sentence-transformers' order where it has one: one process, one batch per step, by size or in turn
        as_st = not self._sharded() and self.sampling != "weighted" and self.accumulate == 1
        if as_st:  # what sentence-transformers' samplers yield in their first pass, and the counts they announce
            per_source = [[batch for batch in s.st_batches() if not s.drop_last or len(batch) == s.batch_size]
                          for s in self.samplers]
            counts = [announced_batches(len(s.row_values), s.batch_size, s.drop_last) for s in self.samplers]
            if self.sampling == "round_robin":  # ST zips its samplers: as many rounds as the shortest one yields
                counts = [min(map(len, per_source))] * len(per_source)
        else:  # each source's batches on this rank (one-row batches already left out): counts all ranks share
            per_source = [list(sampler.epoch_batches()) for sampler in self.samplers]
            # with drop_last, whole groups only: each optimizer step accumulates one source's full batches
            per_source = [batches[:len(batches) - len(batches) % self.accumulate] if s.drop_last else batches
                          for s, batches in zip(self.samplers, per_source)]
            counts = [len(batches) for batches in per_source]
        served, taken = [], [0] * len(self.samplers)
        self.rereads = [0] * len(self.samplers)
        for k in batch_sources(counts, self.sampling, self.seed, self.epoch, self.weights,
                               1 if as_st else self.accumulate):
            if taken[k] == len(per_source[k]):
                if self.sampling != "weighted" or not per_source[k]:
                    continue  # a source that formed fewer batches than announced: not reshuffled to fill its slots
                self.rereads[k] += 1
                per_source[k] += self._reread(k, self.rereads[k])
            batch, taken[k] = per_source[k][taken[k]], taken[k] + 1
            if not as_st or len(batch) > 1 or self.samplers[k].batch_size == 1:  # (a one-row batch: no negative)
                served.append((k, batch))
        return served

    def _reread(self, k: int, read: int) -> list[list[int]]:
        """Source ``k``'s batches of this epoch's pass ``read`` (the first is pass 0), shuffled with a seed of its
        own."""
        sampler = copy.copy(self.samplers[k])
        sampler._cache = None
        sampler.seed = self.samplers[k].seed + read * REREAD_SEED_STRIDE
        sampler.set_epoch(self.epoch)
        return list(sampler.epoch_batches())

    def _indices(self, batch: tuple[int, list[int]]) -> list[int]:
        k, rows = batch
        return [self.offsets[k] + i for i in rows]


class _Mixture(TrainSource):
    """What both mixtures take: the sources by name, how batches are drawn from them, and a step's batches."""

    def __init__(self, sources: Mapping[str, TrainSource], sampling: str, seed: int, weights: Sequence[float] | None,
                 accumulate: int) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        check_sampling(sampling)  # here, before any loader is built
        self.sources, self.sampling, self.seed = dict(sources), sampling, seed
        self.weights = list(weights) if weights is not None else None
        self.accumulate = accumulate


class MixtureSource(_Mixture):
    """Several map-style sources, each batch from one of them in the order of :class:`MixtureBatchSampler`.

    Args:
        sources: name → that source's rows, value codes, batch size, ``drop_last`` and collate function (its own
            columns); a batch carries its source's name under ``SOURCE``.
        sampling: ``proportional``, ``round_robin`` or ``weighted``.
        seed: seeds every source's batches and the interleaving with the epoch (as sentence-transformers' trainer seed
            does); the sources' own seeds are not used.
        weights: ``weighted``: one positive weight per source, in the order of ``sources``.
        accumulate: batches per optimizer step (``--trainer.accumulate_grad_batches``): a step's batches come from one
            source.
    """

    def __init__(self, sources: Mapping[str, MapStyleSource], sampling: str = "proportional", seed: int = 0,
                 weights: Sequence[float] | None = None, accumulate: int = 1) -> None:
        super().__init__(sources, sampling, seed, weights, accumulate)
        self.sampler: MixtureBatchSampler | None = None  # the current epoch's (its rereads are reported)

    @property
    def equal_batch_sizes(self) -> bool:
        # every rank serves the same source at every step, so sources may differ in batch size
        return all(source.drop_last for source in self.sources.values())

    def dataloader(self, *, epoch: int, rank: int, world: int, options: dict,
                   resume: tuple[int, int] | None = None) -> DataLoader:
        sources = list(self.sources.values())
        samplers = [NoDuplicatesBatchSampler(s.row_values, s.batch_size, drop_last=s.drop_last, seed=self.seed,
                                             num_replicas=world, rank=rank) for s in sources]
        mixture = self.sampler = MixtureBatchSampler(samplers, self.sampling, self.seed, self.weights, self.accumulate)
        if resume is not None:
            mixture.resume(*resume)
        mixture.set_epoch(epoch)  # len() of this epoch
        rows = ConcatenatedRows([s.dataset for s in sources], mixture.offsets)
        collate = MixtureCollator(list(self.sources), [s.collate for s in sources])
        return DataLoader(rows, batch_sampler=mixture, collate_fn=collate, **options)


class StreamMixtureSource(_Mixture):
    """Several streamed sources, each batch from one of them: a map-style source joins a streamed mixture as a stream
    of its prepared rows.

    Every rank serves ``steps_per_epoch`` slots per epoch, drawn by :func:`source_slots` over each source's batches
    per rank (``StreamingSource.steps_per_epoch``, the same on every rank), so every rank trains the same source at
    every step. The DataLoader takes slot ``i`` from worker ``i % W``; each worker reads its shards of every source
    and forms only the batches of its own slots, so a source is read no faster than it is drawn, and nothing is read
    before the first step needs it. A source drawn more often than its rows fill (weighted sampling) is read again,
    reshuffled, and reported, as a lone stream that runs dry is.

    Args:
        sources: name → that source's ``StreamingSource``.
        sampling: ``proportional``, ``round_robin`` or ``weighted``.
        seed: seeds the interleaving with the epoch (each source's shuffling keeps its own seed, the mixture's).
        weights: ``weighted``: one positive weight per source, in the order of ``sources``.
        accumulate: batches per optimizer step: a step's batches come from one source.
    """

    def __init__(self, sources: Mapping[str, StreamingSource], sampling: str = "proportional", seed: int = 0,
                 weights: Sequence[float] | None = None, accumulate: int = 1) -> None:
        super().__init__(sources, sampling, seed, weights, accumulate)
        unknown = [name for name, source in self.sources.items() if source.rows is None]
        if unknown and sampling == "proportional":
            raise ValueError(f"--data.init_args.sampling proportional draws each source by its size, and the length of "
                             f"{', '.join(repr(n) for n in unknown)} is unknown (a stream without a row count): set "
                             f"{' and '.join(source_flag(n, 'max_train_rows') for n in unknown)}, or sample by "
                             f"weight (--data.init_args.sampling weighted) or in turn (round_robin)")
        # with a source of unknown length the run is one epoch of --trainer.max_steps steps (as a lone stream's)
        self.limit = next(iter(self.sources.values())).max_steps * accumulate if unknown else None

    @property
    def equal_batch_sizes(self) -> bool:
        return True

    def order(self, counts: Sequence[int], epoch: int) -> list[int]:
        """The source of each of the epoch's batches on a rank whose sources have ``counts`` batches."""
        return batch_sources(counts, self.sampling, self.seed, epoch, self.weights, self.accumulate)[:self.limit]

    def _steps(self, source: StreamingSource, world: int) -> int:
        """A source's batches per rank and epoch: whole groups of ``accumulate`` (every batch is full)."""
        steps = source.steps_per_epoch(world)
        return max(steps - steps % self.accumulate, min(steps, self.accumulate))

    def steps_per_epoch(self, world: int) -> int:
        return len(self.order([self._steps(source, world) for source in self.sources.values()], 0))

    def dataloader(self, *, epoch: int, rank: int, world: int, options: dict,
                   resume: tuple[int, int] | None = None) -> DataLoader:
        sources = list(self.sources.values())
        streams = [split_dataset_by_node(source.stream, rank=rank, world_size=world) for source in sources]
        # every worker reads its own shards of every source
        options = workers_for_shards(options, min(stream.num_shards for stream in streams),
                                     "a mixture of streamed sources (its source with the fewest shards)")
        counts = [self._steps(source, world) for source in sources]

        def batches(epoch: int, skip: int) -> MixtureStreamBatches:
            parts = [StreamBatches(stream, count, epoch, self.seed, source.buffer_size, source.batch_size,
                                   source.window, source.admit, source.collate, f"{source.where} rank {rank}")
                     for source, stream, count in zip(sources, streams, counts)]
            return MixtureStreamBatches(parts, list(self.sources), partial(self.order, counts), epoch, skip=skip)

        # as a lone stream: each worker skips its share of the trained slots, the loader the few left before slot k
        return resumed_stream_loader(batches, len(self.order(counts, 0)), epoch, options, resume)


class MixtureStreamBatches(IterableDataset):
    """One rank's batches of a streamed mixture: worker ``w`` of ``W`` serves slots ``w, w + W, …`` of each epoch,
    drawing each slot's batch from that source's stream (its share of the source's shards)."""

    def __init__(self, parts: Sequence[StreamBatches], names: Sequence[str], order: Callable[[int], list[int]],
                 epoch: int, skip: int = 0) -> None:
        """``order(epoch)``: the source of each of the epoch's batches on this rank (``batch_sources``)."""
        self.parts, self.names, self.order, self.epoch, self.skip = list(parts), list(names), order, epoch, skip

    def __len__(self) -> int:
        return len(self.order(self.epoch))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, self.epoch = self.epoch, self.epoch + 1  # persistent workers keep this object: each pass is an epoch
        skip, self.skip = self.skip, 0  # resuming: this worker's slots already trained (the first epoch only)
        mine = self.order(epoch)[worker::workers]
        quotas, skipped = Counter(mine), Counter(mine[:skip])
        # formed lazily: a source is first read when its first slot comes
        batches = {k: self.parts[k].batches(worker, epoch, quotas[k], skipped[k]) for k in quotas}
        for k in mine[skip:]:
            batch = next(batches[k])
            batch[SOURCE] = self.names[k]
            yield batch


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


def source_flag(name: str, key: str) -> str:
    """How messages name option ``key`` of source ``name``: a source's options are one value, given whole
    (``--data.init_args.sources.<name> '{"key": …}'``, or under ``sources: <name>:`` in a config)."""
    return f"{key} of --data.init_args.sources.{name}"


@contextlib.contextmanager
def source_errors(name: str, keys: Sequence[str]) -> Iterator[None]:
    """Errors of source ``name``'s datamodule name the source, and the options it sets by their flag under
    ``--data.init_args.sources.<name>`` (the others are the recipe's, which every source inherits)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        message = str(err.args[0]) if len(err.args) == 1 else str(err)
        if keys:
            pattern = re.compile(rf"--data\.init_args\.({'|'.join(map(re.escape, keys))})(?![A-Za-z0-9_])")
            message = pattern.sub(lambda m: source_flag(name, m.group(1)), message)
        if not message.startswith(f"source {name!r}"):
            message = f"source {name!r} (--data.init_args.sources.{name}): {message}"
        try:
            renamed = type(err)(message)
        except TypeError:  # an error class that takes other arguments
            renamed = ValueError(message)
        raise renamed from err


def build_sources(parent, specs: Mapping[str, Mapping | None] | None, sampling: str) -> dict:
    """One datamodule per source of ``--data.init_args.sources``, of the recipe's datamodule class: each takes the
    recipe's data options (``parent.hparams``) with its own on top, and the mixture's own options
    (``MIXTURE_OPTIONS``) from the recipe. A source's ``weight`` is kept as ``mixture_weight``."""
    if not specs:
        if sampling != SAMPLINGS[0]:
            raise ValueError(f"--data.init_args.sampling {sampling} chooses among sources: name them with "
                             f"--data.init_args.sources (or leave sampling at {SAMPLINGS[0]})")
        return {}
    check_sampling(sampling)
    if not isinstance(specs, Mapping):
        raise ValueError(f"--data.init_args.sources must map each source's name to its options, e.g. "
                         f"{{docs: {{dataset: data/docs.jsonl}}, qa: {{dataset: data/qa.jsonl, val_size: 200}}}}; got "
                         f"{specs!r}")
    # (not what LightningCLI adds to the hyperparameters: "_class_path", "_instantiator")
    inherited = {k: v for k, v in parent.hparams.items() if k not in MIXTURE_OPTIONS and not k.startswith("_")}
    shared = {k: parent.hparams[k] for k in MIXTURE_OPTIONS if k not in ("sources", "sampling")}
    children = {}
    for name, spec in specs.items():
        name = str(name)
        if not SOURCE_NAME.match(name) or name == MEAN_TASK:
            raise ValueError(f"--data.init_args.sources: a source's name starts metric keys (val/{name}_cosine_ndcg@10) "
                             f"and file names: use letters, digits, '_' and '-' (not starting with '_' or '-'), and "
                             f"not {MEAN_TASK!r} (the mean over sources); got {name!r}")
        spec = dict(spec or {})
        weight = spec.pop("weight", None)
        if weight is not None and sampling != "weighted":
            raise ValueError(f"{source_flag(name, 'weight')} is read by weighted sampling only: set "
                             f"--data.init_args.sampling weighted, or drop the weight ({sampling} sampling draws "
                             f"{'by size' if sampling == 'proportional' else 'each source in turn'})")
        if sampling == "weighted" and not (isinstance(weight, (int, float)) and weight > 0 if weight is not None
                                           else True):
            raise ValueError(f"{source_flag(name, 'weight')} must be a number > 0, got {weight!r}")
        for key in spec:
            if key in MIXTURE_OPTIONS:
                raise ValueError(f"--data.init_args.sources.{name}: {key} is the mixture's, shared by every source: set "
                                 f"--data.init_args.{key}")
            if key not in inherited:
                raise ValueError(f"--data.init_args.sources.{name}: {type(parent).__name__} has no option {key!r}; a "
                                 f"source takes {', '.join(sorted(inherited))} and weight")
        options = {**inherited, **parent.source_defaults(name, len(specs)), **spec, **shared}
        with source_errors(name, list(spec)):
            # in a context of its own: LightningCLI hands the recipe's datamodule its hyperparameters through a
            # context variable, which save_hyperparameters would read in the source's __init__ too
            child = contextvars.Context().run(type(parent), **options)
        child.source_name, child.source_options = name, list(spec)
        child.mixture_weight = float(weight) if weight is not None else 1.0
        children[name] = child
    return children


def source_task(source: str, task: RetrievalTask, streams: Mapping[str, str]) -> RetrievalTask:
    """A source's evaluation task as the mixture names it: its set is the source's name (a text source's one unnamed
    task), or starts with it; its streams are the mixture's names of the source's streams."""
    name = task.name
    if not name:
        name = source
    elif name != source and not name.startswith(f"{source}-"):
        name = f"{source}-{name}"
    return RetrievalTask(name, streams[task.query_stream], streams[task.corpus_stream], task.relevant, source=source)
