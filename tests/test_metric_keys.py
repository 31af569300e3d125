"""Metric keys: every shape spelled as the logs have always spelled it (against the two builders it replaced), read
back into the same parts, and refused when it names no retrieval metric."""

import itertools

import pytest
import torch
from sentence_transformers import SimilarityFunction

from metrics.functional import information_retrieval_metrics
from metrics.keys import PRIMARY_METRIC, SIMILARITIES, ST_SIMILARITIES, MetricKey, metric_key, parse_metric_key

STAGES = ["val", "test", ""]
TASKS = ["", "shapes-eval", "shapes-eval-image2text", "coco_eval", "dot_products", "multicosine", "org/set"]
DIMS = [None, 8, 64, 384]
METRICS = ["cosine_ndcg@10", "cosine_accuracy@1", "dot_map@100", "manhattan_recall@5", "euclidean_mrr@10"]


def reference_set(task: str, dim: int | None) -> str:
    return "_".join(p for p in (task, f"dim_{dim}" if dim else "") if p)


def reference_key(stage: str, task: str, dim: int | None, metric: str) -> str:
    """The two builders these keys came from: the module's ``_metric_key`` (with a stage) and the metrics log's
    ``join_metric_key`` (without one), as they were."""
    name = reference_set(task, dim)
    if stage:
        return f"{stage}/{name + '_' if name else ''}{metric}"
    return f"{name}_{metric}" if name else metric


@pytest.mark.parametrize(("parts", "key"), [
    (("val", "", 384, "cosine_ndcg@10"), "val/dim_384_cosine_ndcg@10"),
    (("val", "shapes-eval", None, "cosine_ndcg@10"), "val/shapes-eval_cosine_ndcg@10"),
    (("val", "", None, "cosine_ndcg@10"), "val/cosine_ndcg@10"),
    (("test", "shapes-eval", 64, "dot_map@100"), "test/shapes-eval_dim_64_dot_map@100"),
    (("", "", 384, "cosine_ndcg@10"), "dim_384_cosine_ndcg@10"),
    (("", "", None, "cosine_ndcg@10"), "cosine_ndcg@10"),
])
def test_metric_key_spells_every_shape(parts, key):
    assert metric_key(*parts) == key


def test_metric_key_equals_the_builders_it_replaced():
    for stage, task, dim, metric in itertools.product(STAGES, TASKS, [*DIMS, 0], METRICS):
        assert metric_key(stage, task, dim, metric) == reference_key(stage, task, dim, metric)
        assert metric_key(stage, task, dim, metric, base=True) == reference_key(stage, task, dim, metric) + "_base"


def test_parse_reads_back_every_shape():
    for stage, task, dim, metric, base in itertools.product(STAGES, TASKS, DIMS, METRICS, [False, True]):
        key = metric_key(stage, task, dim, metric, base=base)
        parsed = parse_metric_key(key)
        assert parsed == MetricKey(stage, task, dim, metric, base)
        assert str(parsed) == key
        assert parsed.name == metric_key("", task, dim, metric, base=base)
        assert parsed.set_name == reference_set(task, dim)


@pytest.mark.parametrize("key", ["val/a_dim_8_cosine_ndcg@10", "dim_5_dot_mrr@10", "val/dim_07_cosine_ndcg@10",
                                 "val/dim_0_cosine_ndcg@10_base", "train/x_cosine_ndcg@10",
                                 "test/a_dim_8_dim_16_dot_map@100"])
def test_parse_spells_back_a_set_it_cannot_split_unambiguously(key):
    """A task named like a dim (``a_dim_8`` with no dim of its own) reads back as a dim; the key is the same string.
    ``dim_07`` and ``dim_0`` are no dims ``metric_key`` spells, so they stay the task's name; a prefix that is no
    stage (``train/``) belongs to the set, as the old reader had it."""
    assert str(parse_metric_key(key)) == key


@pytest.mark.parametrize(("key", "expected"), [
    ("dim_384_cosine_ndcg@10", ("dim_384", "cosine_ndcg@10")),
    ("cosine_ndcg@10", ("", "cosine_ndcg@10")),
    ("shapes-eval_cosine_ndcg@10", ("shapes-eval", "cosine_ndcg@10")),
    ("shapes-eval-image2text_cosine_mrr@10", ("shapes-eval-image2text", "cosine_mrr@10")),
    ("shapes-eval_dim_64_dot_map@100", ("shapes-eval_dim_64", "dot_map@100")),
    ("dot_products_dim_64_cosine_ndcg@10", ("dot_products_dim_64", "cosine_ndcg@10")),
    ("multicosine_dim_8_manhattan_recall@5", ("multicosine_dim_8", "manhattan_recall@5")),
])
def test_split_metric_key(key, expected):
    parsed = parse_metric_key(key)
    assert (parsed.set_name, parsed.metric) == expected


def test_split_metric_key_rejects_a_key_without_similarity():
    with pytest.raises(ValueError, match="'loss' is not a retrieval metric key"):
        parse_metric_key("loss")


@pytest.mark.parametrize("key", ["train/loss", "val/loss", "lr-AdamW/pg1", "epoch", "", "val/", "val/ndcg@10",
                                 "val/dim_384_cosine", "cosine-ndcg@10", "xcosine_ndcg@10"])
def test_parse_refuses_what_names_no_retrieval_metric(key):
    with pytest.raises(ValueError, match=r"is not a retrieval metric key: expected '<set>_<similarity>_<metric>' with "
                                         r"a similarity in \('cosine', 'dot', 'euclidean', 'manhattan'\)"):
        parse_metric_key(key)


def test_names_are_the_ones_computed_and_sentence_transformers_names():
    one = torch.eye(2)
    for similarity in SIMILARITIES:
        names = information_retrieval_metrics(one, one, [[0], [1]], similarity=similarity)
        assert all(name.startswith(f"{similarity}_") for name in names)
    assert PRIMARY_METRIC in information_retrieval_metrics(one, one, [[0], [1]])
    assert set(SIMILARITIES) <= set(ST_SIMILARITIES) <= set(SimilarityFunction.possible_values())
