"""Batches from several sources: the order of sentence-transformers' multi-dataset samplers, one source per batch,
the same source on every rank at every step, exact resume."""

import logging
import random
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as STSampler
from sentence_transformers.base.sampler import ProportionalBatchSampler, RoundRobinBatchSampler
from torch.utils.data import ConcatDataset

from conftest import qa_rows, write_jsonl
from datamodules.contract import DataNeeds
from datamodules.mixture import MixtureBatchSampler, MixtureSource, announced_batches, batch_sources, source_slots
from datamodules.pairs import PairDataModule
from datamodules.sampler import NoDuplicatesBatchSampler
from datamodules.sources import MapStyleSource

ST_SAMPLERS = {"proportional": ProportionalBatchSampler, "round_robin": RoundRobinBatchSampler}


def mixture_rows(seed: int, sources: int = 3) -> list[list[dict]]:
    """Sources of unequal size and column count (pairs, triplets, one column), with values repeated within a source."""
    rnd = random.Random(seed)
    data = []
    for k in range(sources):
        n, columns, distinct = rnd.randint(20, 150), rnd.randint(1, 3), rnd.choice([120, 400, 5000])
        data.append([{f"c{c}": f"s{k}-v{rnd.randint(0, distinct)}" for c in range(columns)} for _ in range(n)])
    return data


def ours(data, sampling, bs, drop_last, seed, epoch=0, **kwargs) -> MixtureBatchSampler:
    samplers = [NoDuplicatesBatchSampler([tuple(r.values()) for r in rows], bs, drop_last, seed, **kwargs)
                for rows in data]
    mixture = MixtureBatchSampler(samplers, sampling, seed)
    mixture.set_epoch(epoch)
    return mixture


def theirs(data, sampling, bs, drop_last, seed, epoch=0) -> list[list[int]]:
    """As SentenceTransformerTrainer builds them for a DatasetDict: one generator shared by every sampler, each seeded
    with the trainer's seed; less the one-row batches, which litembed leaves out (their loss is 0 in ST)."""
    generator = torch.Generator().manual_seed(seed)
    children = [STSampler(datasets.Dataset.from_list(rows), batch_size=bs, drop_last=drop_last, generator=generator,
                          seed=seed) for rows in data]
    sampler = ST_SAMPLERS[sampling](ConcatDataset([child.dataset for child in children]), children,
                                    generator=generator, seed=seed)
    sampler.set_epoch(epoch)
    return [batch for batch in sampler if len(batch) > 1 or bs == 1]


def short_of_announced(data, bs, seed, epoch) -> bool:
    """A source whose single pass forms fewer full batches than ST announces: ST reshuffles to fill them, litembed
    does not (a documented deviation), so such cases are not compared."""
    for rows in data:
        sampler = NoDuplicatesBatchSampler([tuple(r.values()) for r in rows], bs, True, seed)
        sampler.set_epoch(epoch)
        if sum(len(b) == bs for b in sampler.st_batches()) < announced_batches(len(rows), bs, True):
            return True
    return False


@pytest.mark.parametrize("sampling", ["proportional", "round_robin"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_batch_order_is_sentence_transformers(sampling, drop_last):
    compared = 0
    for seed in range(8):
        data = mixture_rows(seed)
        bs = random.Random(seed).choice([4, 7, 16])
        for epoch in range(2):
            if drop_last and short_of_announced(data, bs, seed, epoch):
                continue
            mine = ours(data, sampling, bs, drop_last, seed, epoch)
            assert list(mine) == theirs(data, sampling, bs, drop_last, seed, epoch), (seed, epoch)
            assert len(mine) == len(list(mine))
            compared += 1
    assert compared >= 12  # the deviation above is rare: most cases are compared


def test_each_batch_comes_from_one_source_and_proportional_serves_every_source_whole():
    data = mixture_rows(5)
    mixture = ours(data, "proportional", 8, False, seed=3)
    sizes = [len(rows) for rows in data]
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    served = Counter()
    for batch in mixture:
        (source,) = {next(k for k in range(len(sizes)) if bounds[k] <= i < bounds[k + 1]) for i in batch}
        served[source] += len(batch)
    for k, rows in enumerate(data):  # every row once, less those that would have been batches of one row
        assert served[k] == sum(len(b) for b in mixture.samplers[k].global_batches())


def test_round_robin_alternates_sources_until_the_smallest_is_used_up():
    assert source_slots([3, 1, 2], "round_robin", 0, 0) == [0, 1, 2]
    assert Counter(source_slots([3, 1, 2], "proportional", 0, 0)) == {0: 3, 1: 1, 2: 2}
    assert source_slots([3, 1, 2], "proportional", 0, 0) != source_slots([3, 1, 2], "proportional", 0, 1)
    with pytest.raises(ValueError, match="sampling must be one of proportional, round_robin, weighted, got 'random'"):
        source_slots([1], "random", 0, 0)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_rank_serves_the_same_source_at_every_step(drop_last):
    data = mixture_rows(2)
    ranks = [ours(data, "proportional", 4, drop_last, seed=1, epoch=1, num_replicas=2, rank=r) for r in range(2)]
    sources = [[k for k, _ in mixture.epoch_batches()] for mixture in ranks]
    assert sources[0] == sources[1] and len(set(sources[0])) == 3
    batches = [[tuple(b) for _, b in mixture.epoch_batches()] for mixture in ranks]
    if drop_last:  # the ranks' batches are distinct halves of each source's batches
        assert not set(batches[0]) & set(batches[1])


def test_a_resumed_epoch_serves_the_rest_of_the_same_order():
    data = mixture_rows(4)
    whole = list(ours(data, "proportional", 8, False, seed=7, epoch=2))
    resumed = ours(data, "proportional", 8, False, seed=7, epoch=2)
    resumed.resume(2, 5)
    assert list(resumed) == whole[5:]
    assert list(resumed) == whole  # the next pass over the epoch is whole again


class Collate:
    """A source's own collate function (its columns): the rows' ids and column count."""

    def __call__(self, rows: list[dict]) -> dict:
        return {"rows": [row["id"] for row in rows], "columns": len(rows[0]) - 1}


def map_style(rows: list[dict], batch_size: int) -> MapStyleSource:
    codes = {}
    values = [[codes.setdefault(v, len(codes)) for v in row.values()] for row in rows]
    return MapStyleSource([{**row, "id": i} for i, row in enumerate(rows)], np.array(values), batch_size, False,
                          seed=99, collate=Collate())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mixture_loader_serves_each_source_s_own_batches_in_the_mixture_s_order(workers):
    data = mixture_rows(6)
    names = ["qa", "nli", "titles"]
    source = MixtureSource({name: map_style(rows, 8) for name, rows in zip(names, data)}, "proportional", seed=3)
    options = {"num_workers": workers, "persistent_workers": False, "pin_memory": False}
    served = [(batch["source"], batch["rows"], batch["columns"])
              for batch in source.dataloader(epoch=1, rank=0, world=1, options=options)]
    expected = ours(data, "proportional", 8, False, seed=3, epoch=1)  # the mixture's seed, not the sources' 99
    assert served == [(names[k], batch, len(data[k][0])) for k, batch in expected.epoch_batches()]
    resumed = source.dataloader(epoch=1, rank=0, world=1, options=options, resume=(1, 4))
    assert len(resumed) == len(served) and [b["rows"] for b in resumed] == [rows for _, rows, _ in served[4:]]
    assert not source.equal_batch_sizes  # without drop_last the last batches may be smaller
    with pytest.raises(ValueError, match="sampling must be one of proportional, round_robin, weighted, got 'size'"):
        MixtureSource({"qa": map_style(data[0], 8)}, "size")


def test_weighted_sampling_draws_each_source_by_its_weight():
    weights = [1.0, 2.0, 5.0]
    slots = source_slots([30_000, 30_000, 20_000], "weighted", seed=4, epoch=0, weights=weights)
    assert len(slots) == 80_000  # as many batches as all sources have
    counts = Counter(slots)
    for k, weight in enumerate(weights):
        p = weight / sum(weights)
        # within 4 standard deviations of the binomial count
        assert abs(counts[k] - p * len(slots)) < 4 * (len(slots) * p * (1 - p)) ** 0.5, (k, counts)
    assert slots != source_slots([30_000, 30_000, 20_000], "weighted", seed=4, epoch=1, weights=weights)
    with pytest.raises(ValueError, match="one positive weight per source"):
        source_slots([1, 2], "weighted", 0, 0, weights=[1.0, 0.0])


def test_weighted_sampling_reads_a_source_again_reshuffled_when_drawn_past_its_batches():
    data = mixture_rows(6, sources=2)
    samplers = [NoDuplicatesBatchSampler([tuple(r.values()) for r in rows], 4, True, 5) for rows in data]
    mixture = MixtureBatchSampler(samplers, "weighted", seed=5, weights=[1.0, 20.0])
    mixture.set_epoch(0)
    served = mixture.epoch_batches()
    own = [len(s.epoch_batches()) for s in samplers]
    assert len(served) == sum(own)
    small = [tuple(batch) for k, batch in served if k == 1]
    assert len(small) > own[1] and mixture.rereads[1] >= 1 and mixture.rereads[0] == 0
    # each pass serves each of the source's rows once; the next pass is a new order
    first, second = small[:own[1]], small[own[1]:2 * own[1]]
    assert len(set(first)) == own[1] and first != second[:len(first)]


def test_accumulated_batches_of_a_step_come_from_one_source_and_match_the_ranks_of_ddp():
    """One process accumulating 2 batches trains, at every step, the batches 2 processes train at that step."""
    data = [[{"c0": f"s{k}-{i}"} for i in range(n)] for k, n in enumerate((64, 40, 24))]  # 8, 5 and 3 batches
    one = ours(data, "proportional", 8, True, seed=2, epoch=1)
    one.accumulate = 2
    one._cache = None
    ranks = [ours(data, "proportional", 8, True, seed=2, epoch=1, num_replicas=2, rank=r) for r in range(2)]
    served = one.epoch_batches()
    steps = [served[i:i + 2] for i in range(0, len(served), 2)]
    assert all(a[0] == b[0] for a, b in steps)  # one source per step
    per_rank = [r.epoch_batches() for r in ranks]
    assert [[b for _, b in step] for step in steps] == [[per_rank[0][i][1], per_rank[1][i][1]]
                                                         for i in range(len(per_rank[0]))]
    assert len(steps) == 4 + 2 + 1  # with drop_last whole steps only, as the ranks' (4, 2 and 1 each)
    assert batch_sources([3, 2], "proportional", 0, 0, accumulate=2).count(0) == 3  # a last group of one


@pytest.mark.parametrize("sampling", ["proportional", "round_robin"])
def test_a_recipes_sources_serve_sentence_transformers_batch_order(sampling, tmp_path):
    """Through the datamodule a recipe builds: two sources of the recipe's class, unequal in size and columns."""
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(70))
    triplets = write_jsonl(tmp_path / "trip.jsonl", [{"q": f"q{i % 23}", "p": f"p{i}", "n": f"n{i % 11}"}
                                                     for i in range(45)])
    for seed in (0, 7):
        dm = PairDataModule(dataset=qa, val_split=None, batch_size=6, num_workers=0, seed=seed, sampling=sampling,
                            sources={"qa": {}, "trip": {"dataset": triplets, "columns": ["q", "p", "n"]}})
        dm.connect(DataNeeds(lambda texts, role: {"n": torch.tensor([len(texts)])}))
        dm.setup("fit")
        loader = dm.train_dataloader()
        splits = [dm.sources[name].splits["train"].select_columns(dm.sources[name].columns) for name in ("qa", "trip")]
        expected = theirs([split.to_list() for split in splits], sampling, 6, False, seed)
        assert list(loader.batch_sampler) == expected, seed
        sizes = len(splits[0])
        assert [batch["source"] for batch in loader] == ["qa" if b[0] < sizes else "trip" for b in expected]


class Recorder:
    """A processor that returns what it was asked to encode: the texts, their role and the data's prompt."""

    def __call__(self, texts, role="document", prompt=None):
        return {"texts": list(texts), "role": role, "prompt": prompt}


def test_each_source_prepends_its_own_prompts_in_training_and_evaluation(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    dm = PairDataModule(dataset=qa, val_size=10, batch_size=5, num_workers=0,
                        sources={"a": {"prompts": {"anchor": "query: ", "positive": "passage: "}}, "b": {}})
    dm.connect(DataNeeds(Recorder()))
    dm.setup("fit")
    seen = {(batch["source"], column["prompt"]) for batch in dm.train_dataloader() for column in batch["features"]}
    assert seen == {("a", "query: "), ("a", "passage: "), ("b", None)}  # b: the model's prompts (none given here)
    evaluated = {batch["stream"]: batch["features"]["prompt"] for loader in dm.val_dataloader() for batch in loader}
    assert evaluated == {"a.query": "query: ", "a.corpus": "passage: ", "b.query": None, "b.corpus": None}
    with pytest.raises(ValueError, match=r"source 'a' \(--data.init_args.sources.a\): prompts of "
                                         r"--data.init_args.sources.a names \['query'\], which are not columns"):
        PairDataModule(dataset=qa, sources={"a": {"prompts": {"query": "q: "}}})


def test_a_source_with_a_loss_of_its_own_trains_with_it(tiny_bert_dir):
    from lightning_modules.text import TextEmbeddingModule
    from lightning_modules.text_encoder import TextEncoder
    from losses import MultipleNegativesRankingLoss

    module = TextEmbeddingModule(TextEncoder(tiny_bert_dir), loss=MultipleNegativesRankingLoss(scale=20),
                                 source_losses={"b": MultipleNegativesRankingLoss(scale=50)}).eval()
    module.log = lambda *args, **kwargs: None
    texts = [[f"question {i}" for i in range(4)], [f"answer {i}" for i in range(4)]]
    features = [module.processor(column) for column in texts]
    embeddings = [module.embed(f) for f in features]
    for source, scale in ((None, 20), ("a", 20), ("b", 50)):
        batch = {"features": features, "rows": [0, 1, 2, 3], **({"source": source} if source else {})}
        expected = MultipleNegativesRankingLoss(scale=scale)(*embeddings)
        assert torch.equal(module.training_step(batch, 0), expected), source


def test_a_streamed_sources_bad_rows_are_reported_under_its_name(tmp_path, caplog):
    good = write_jsonl(tmp_path / "good.jsonl", qa_rows(40))
    rows = qa_rows(40, offset=100)
    rows[3]["positive"] = ""  # an empty text: skipped, counted, named
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    dm = PairDataModule(dataset=good, val_split=None, batch_size=4, num_workers=0, streaming=True, shuffle_buffer=8,
                        sources={"clean": {}, "noisy": {"dataset": bad}})
    dm.connect(DataNeeds(Recorder()))
    dm.setup("fit")
    for batch in dm.train_dataloader():
        dm.on_before_batch_transfer(batch, 0)
    with caplog.at_level(logging.WARNING):
        dm.report_epoch(0)
    reports = [r.getMessage() for r in caplog.records]
    skipped = [m for m in reports if "training row(s) skipped" in m]
    # (39 good rows for 10 batches of 4: the source is read again, and its bad row met twice)
    assert len(skipped) == 1 and skipped[0].startswith("source 'noisy': epoch 0, rank 0: 2 training row(s) skipped")
    assert all(m.startswith("source 'noisy': ") for m in reports if "epoch 0, rank 0" in m)


def test_a_stream_of_unknown_length_is_drawn_by_weight_or_in_turn_for_max_steps_not_by_size():
    from datamodules.mixture import StreamMixtureSource
    from datamodules.sources import StreamingSource

    def stream(rows):
        return StreamingSource(None, rows, max_steps=5, accumulate=2, batch_size=4, seed=0, buffer_size=8, window=8,
                               admit=lambda row: (), collate=Collate(), where="test")

    with pytest.raises(ValueError, match=r"proportional draws each source by its size, and the length of 'web' is "
                                         r"unknown .*: set max_train_rows of --data.init_args.sources.web, or sample "
                                         r"by weight \(--data.init_args.sampling weighted\) or in turn"):
        StreamMixtureSource({"docs": stream(400), "web": stream(None)}, "proportional")
    for sampling, weights in (("weighted", [1.0, 3.0]), ("round_robin", None)):
        mixture = StreamMixtureSource({"docs": stream(400), "web": stream(None)}, sampling, weights=weights,
                                      accumulate=2)
        assert mixture.steps_per_epoch(world=1) == 5 * 2  # one epoch of max_steps optimizer steps
    assert StreamMixtureSource({"docs": stream(400), "web": stream(40)}).steps_per_epoch(world=1) == 100 + 10
