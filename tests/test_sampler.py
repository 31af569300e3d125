import random

import datasets
import pytest
import torch

from datamodules.sampler import NoDuplicatesBatchSampler


def rows(n=600, seed=0):
    rnd = random.Random(seed)  # heavy duplication within and across columns
    return [{"anchor": f"t{rnd.randint(0, 250)}", "positive": f"t{rnd.randint(100, 400)}"} for _ in range(n)]


def ours(data, bs, drop_last=False, seed=12, epoch=0, **kwargs):
    sampler = NoDuplicatesBatchSampler([(r["anchor"], r["positive"]) for r in data], bs, drop_last, seed, **kwargs)
    sampler.set_epoch(epoch)
    return sampler


@pytest.mark.parametrize("bs,drop_last", [(32, False), (16, True), (7, False)])
def test_identical_to_sentence_transformers(bs, drop_last):
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as STSampler

    data = rows()
    for epoch in range(3):
        st = STSampler(datasets.Dataset.from_list(data), batch_size=bs, drop_last=drop_last,
                       generator=torch.Generator(), seed=12)
        st.set_epoch(epoch)
        mine = ours(data, bs, drop_last, epoch=epoch)
        assert list(mine) == list(st)
        assert len(mine) == len(list(mine))  # exact, where ST's len is an estimate


def test_no_value_twice_in_a_batch_and_every_row_once():
    data = rows()
    for epoch in range(3):
        batches = list(ours(data, 16, epoch=epoch))
        for batch in batches:
            values = [v for i in batch for v in {data[i]["anchor"], data[i]["positive"]}]
            assert len(values) == len(set(values))
        assert sorted(i for b in batches for i in b) == list(range(len(data)))
    assert list(ours(data, 16, epoch=0)) != list(ours(data, 16, epoch=1))


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n,bs,drop_last", [(600, 16, False), (601, 7, False), (333, 16, True)])
def test_ddp_ranks_yield_equal_counts(world, n, bs, drop_last):
    data = rows(n)
    shards = [list(ours(data, bs, drop_last, num_replicas=world, rank=r)) for r in range(world)]
    lengths = {len(ours(data, bs, drop_last, num_replicas=world, rank=r)) for r in range(world)}
    assert lengths == {len(s) for s in shards} and len(lengths) == 1
    covered = {i for s in shards for b in s for i in b}
    if drop_last:
        assert all(len(b) == bs for s in shards for b in s)
    else:
        assert covered == set(range(n))


def test_errors():
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        NoDuplicatesBatchSampler([("a",)], 0)
    with pytest.raises(ValueError, match="row_values is empty"):
        NoDuplicatesBatchSampler([], 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        NoDuplicatesBatchSampler([("a",)], 2, num_replicas=2, rank=2)
