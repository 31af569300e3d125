import random
import time

import datasets
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as STSampler
from torch.utils.data import DataLoader, SequentialSampler

from datamodules.sampler import NoDuplicatesBatchSampler


def rows(n=600, seed=0, distinct=250, hot=0.0):
    rnd = random.Random(seed)  # duplicates within and across columns; `hot` of the rows share one anchor
    return [{"anchor": "hot" if rnd.random() < hot else f"t{rnd.randint(0, distinct)}",
             "positive": f"t{rnd.randint(distinct // 2, 2 * distinct)}"} for _ in range(n)]


def ours(data, bs, drop_last=False, seed=12, epoch=0, **kwargs):
    sampler = NoDuplicatesBatchSampler([tuple(r.values()) for r in data], bs, drop_last, seed, **kwargs)
    sampler.set_epoch(epoch)
    return sampler


def st(data, bs, drop_last=False, seed=12, epoch=0):
    # As SentenceTransformerTrainer builds it: a generator, reseeded by the sampler with seed + epoch.
    sampler = STSampler(datasets.Dataset.from_list(data), batch_size=bs, drop_last=drop_last,
                        generator=torch.Generator(), seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def st_kept(data, bs, drop_last=False, seed=12, epoch=0):
    """ST's batches less its one-row batches (unless batch size 1), whose rows ours leaves out: ST's loss gives them 0."""
    return [batch for batch in st(data, bs, drop_last, seed, epoch) if len(batch) > 1 or bs == 1]


@pytest.mark.parametrize("bs,drop_last", [(32, False), (16, True), (7, False), (1, False)])
def test_identical_to_sentence_transformers(bs, drop_last):
    data = rows()
    for epoch in range(3):
        mine = ours(data, bs, drop_last, epoch=epoch)
        assert list(mine) == st_kept(data, bs, drop_last, epoch=epoch)
        assert len(mine) == len(list(mine))


def test_identical_to_sentence_transformers_on_random_shapes():
    rnd = random.Random(3)
    for case in range(25):
        n, bs, columns = rnd.randint(1, 120), rnd.randint(1, 20), rnd.randint(1, 3)
        distinct = rnd.choice([3, 10, 60, 1000])
        data = [{f"c{c}": f"v{rnd.randint(0, distinct)}" for c in range(columns)} for _ in range(n)]
        assert list(ours(data, bs, seed=case)) == st_kept(data, bs, seed=case), case


def test_where_sentence_transformers_len_is_wrong_ours_is_exact():
    data = rows(200, hot=0.2)  # one anchor in ~40 rows: at most one of them per batch
    # drop_last=False: ST yields more batches than its __len__ says (the DDP hang of ST #3348).
    theirs = st(data, 16)
    assert len(list(theirs)) > len(theirs)
    assert list(ours(data, 16)) == st_kept(data, 16) and len(ours(data, 16)) == len(st_kept(data, 16))
    # drop_last=True: ST tops up to its __len__ from a reshuffle, repeating rows; we stop after the one pass.
    mine, theirs = list(ours(data, 16, drop_last=True)), list(st(data, 16, drop_last=True))
    assert mine == theirs[: len(mine)] and len(mine) < len(theirs) == len(data) // 16
    assert len({i for batch in mine for i in batch}) == 16 * len(mine)


def test_no_value_twice_in_a_batch_and_every_row_once_but_one_row_batches():
    data = rows(hot=0.05)
    epochs, left_out = [], []
    for epoch in range(3):
        batches = list(ours(data, 16, epoch=epoch))
        for batch in batches:
            values = [v for i in batch for v in set(data[i].values())]
            assert len(values) == len(set(values)) and 2 <= len(batch) <= 16
        left_out.append(sorted(b[0] for b in st(data, 16, epoch=epoch) if len(b) == 1))
        assert sorted([i for b in batches for i in b] + left_out[-1]) == list(range(len(data)))
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2] and any(left_out)


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n,bs,drop_last", [(600, 16, False), (601, 7, False), (5, 4, False), (333, 16, True),
                                            (200, 16, True)])
def test_ddp_ranks_yield_equal_counts(world, n, bs, drop_last):
    data = rows(n, hot=0.1)
    for epoch in (0, 1):
        samplers = [ours(data, bs, drop_last, epoch=epoch, num_replicas=world, rank=r) for r in range(world)]
        shards = [list(s) for s in samplers]
        assert len({len(s) for s in samplers}) == 1 and [len(s) for s in samplers] == [len(s) for s in shards]
        covered = sorted(i for s in shards for b in s for i in b)
        if drop_last:
            assert all(len(b) == bs for s in shards for b in s)
            assert len(covered) == len(set(covered))  # nothing padded in
            full = [b for b in ours(data, bs, epoch=epoch).global_batches() if len(b) == bs]
            assert len(shards[0]) == len(full) // world
        else:
            kept = {i for b in ours(data, bs, epoch=epoch).global_batches() for i in b}
            assert set(covered) == kept and all(len(b) >= 2 for s in shards for b in s)
            assert len(covered) - len(kept) < world * bs  # padding is less than one batch per rank


def test_lightning_sets_the_epoch():
    sampler = ours(rows(), 16)
    _set_sampler_epoch(DataLoader(range(600), batch_sampler=sampler), 3)  # what Lightning's fit loop calls
    assert sampler.epoch == 3 and list(sampler) == list(ours(rows(), 16, epoch=3))


def test_many_rows_sharing_a_value_stay_fast():
    data = [("hot" if i % 5 == 0 else f"q{i}", f"p{i}") for i in range(100_000)]  # quadratic in ST's rescans
    start = time.perf_counter()
    sampler = NoDuplicatesBatchSampler(data, 64)
    # one "hot" row per batch: 1,270 batches of 2 or more (1 hot + up to 63 others), 18,730 hot rows left out
    assert len(sampler) == 1270 and len(sampler.st_batches()) == 20_000
    assert time.perf_counter() - start < 5


def test_errors():
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        NoDuplicatesBatchSampler([("a",)], 0)
    with pytest.raises(ValueError, match="row_values is empty"):
        NoDuplicatesBatchSampler([], 2)
    with pytest.raises(ValueError, match="num_replicas must be ≥ 1"):
        NoDuplicatesBatchSampler([("a",)], 2, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        NoDuplicatesBatchSampler([("a",)], 2, num_replicas=2, rank=2)
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        NoDuplicatesBatchSampler(SequentialSampler(range(4)), 2)


@pytest.mark.parametrize("hot,distinct", [(0.05, 250), (0.0, 10**9)])
def test_value_codes_give_the_batches_the_strings_give(hot, distinct):
    """The datamodules pass Arrow dictionary codes instead of tuples of strings (1M pairs: MBs instead of GBs); with
    every value distinct the sampler slices the permutation directly. Both must be the batches of the strings (ST's)."""
    import pyarrow as pa

    from datamodules.checks import value_codes

    data = rows(600, distinct=distinct, hot=hot)
    if distinct > 10**6:  # all distinct: anchors and positives from disjoint ranges
        data = [{"anchor": f"a{i}", "positive": f"p{i}"} for i in range(600)]
    codes = value_codes([[pa.chunked_array([pa.array([r[c] for r in data])]) for c in ("anchor", "positive")]])
    assert codes.shape == (600, 2) and codes.dtype.kind == "i"
    for bs, drop_last, epoch in [(16, False, 0), (7, True, 1), (32, False, 2)]:
        mine = NoDuplicatesBatchSampler(codes, bs, drop_last, seed=12)
        mine.set_epoch(epoch)
        assert mine._all_distinct == (hot == 0.0)
        assert list(mine) == st_kept(data, bs, drop_last, epoch=epoch)
