"""Hard-negative mining against sentence-transformers' ``util.mine_hard_negatives`` itself, on the same embeddings:
ST is given a stand-in model whose 'encodings' are fixed rows, litembed an Embedder with the same rows; the
n-tuple datasets must be equal row for row. Then chunking, errors, and ``mine.py`` end to end into ``train.py fit``."""

import json
import os
import random
import re
import shlex
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import util

from inference.mining import mine_dataset, mine_hard_negatives
from tests.commands import NO_EXPORT, logged_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StubST:
    """Stands in for a SentenceTransformer in ST's ``mine_hard_negatives``: each text 'encodes' to its table row."""

    device = torch.device("cpu")
    similarity = staticmethod(util.cos_sim)
    similarity_pairwise = staticmethod(util.pairwise_cos_sim)

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def _encode(self, texts, normalize_embeddings=False, **kwargs) -> np.ndarray:
        rows = torch.stack([self.table[t] for t in texts])
        return (F.normalize(rows, dim=-1) if normalize_embeddings else rows).numpy()

    encode_query = encode_document = _encode


class StubEmbedder:
    """litembed's Embedder interface over the same table."""

    prompts: dict[str, str] = {}

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table, self.calls = table, []

    def encode_texts(self, texts, batch_size=64, show_progress=False, truncate_dim=None, normalize=True,
                     prompt_name=None):
        self.calls.append(len(texts))
        rows = torch.stack([self.table[t] for t in texts])[:, :truncate_dim]
        return F.normalize(rows, dim=-1) if normalize else rows


def structured_case(n_queries: int = 40, n_random: int = 60, dim: int = 16, seed: int = 0, repeats: bool = True):
    """(rows, extra corpus, embedding table). Each query's positive is the query plus noise; each also has near
    neighbours at three distances in the extra corpus (some closer than the positive, so margins and max_score bite),
    and random distractors fill the rest. With ``repeats``, some anchors have 2–3 positives and some rows repeat."""
    g = torch.Generator().manual_seed(seed)
    table, rows, extra = {}, [], []
    for q in range(n_queries):
        query = torch.randn(dim, generator=g)
        table[f"q{q}"] = query
        n_pos = 1 + (q % 3 if repeats and q % 4 == 0 else 0)
        for p in range(n_pos):
            table[f"p{q}.{p}"] = query + (0.4 + 0.3 * p) * torch.randn(dim, generator=g)
            rows.append({"anchor": f"q{q}", "positive": f"p{q}.{p}"})
        for j, scale in enumerate((0.3, 0.6, 1.2)):
            table[f"n{q}.{j}"] = query + scale * torch.randn(dim, generator=g)
            extra.append(f"n{q}.{j}")
    for r in range(n_random):
        table[f"r{r}"] = torch.randn(dim, generator=g)
        extra.append(f"r{r}")
    if repeats:  # a repeated (anchor, positive) row, and an anchor whose rows are not adjacent
        rows += [dict(rows[1]), {"anchor": "q4", "positive": "p7.0"}]
    extra += extra[:5]  # repeated corpus texts: ST keeps each once
    return rows, extra, table


def st_rows(rows, table, corpus=None, seed=None, **options) -> list[dict]:
    if seed is not None:
        random.seed(seed)  # ST draws with the global generator
    out = util.mine_hard_negatives(datasets.Dataset.from_list(rows), StubST(table), corpus=corpus,
                                   output_format="n-tuple", verbose=False, **options)
    return out.to_list()


def our_rows(rows, table, corpus=None, **options) -> list[dict]:
    return mine_dataset(rows, StubEmbedder(table), corpus=corpus, **options).dataset.to_list()


CASES = {
    "top": {},
    "top_range": {"range_min": 3, "range_max": 15, "num_negatives": 4},
    "relative_margin": {"relative_margin": 0.05},
    "relative_margin_range": {"relative_margin": 0.1, "range_min": 2, "range_max": 12},
    "absolute_margin": {"absolute_margin": 0.02, "num_negatives": 5},
    "absolute_margin_zero": {"absolute_margin": 0.0},
    "max_score": {"max_score": 0.7},
    "min_score": {"min_score": 0.4, "num_negatives": 6},
    "all_filters": {"absolute_margin": 0.01, "relative_margin": 0.03, "max_score": 0.9, "min_score": 0.5,
                    "range_min": 1},
    "tight_range_drops": {"range_min": 4, "range_max": 8, "num_negatives": 4, "relative_margin": 0.0},
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("with_corpus", [True, False], ids=["extra_corpus", "positives_only"])
def test_top_sampling_equals_sentence_transformers(options, with_corpus):
    rows, extra, table = structured_case()
    corpus = extra if with_corpus else None
    theirs = st_rows(rows, table, corpus, **options)
    assert our_rows(rows, table, corpus, **options) == theirs
    assert theirs  # a case that mines nothing would compare nothing


def test_the_cases_exercise_what_they_are_named_after():
    """Dropped rows and filtered candidates really occur in the cases above (so their comparison means something)."""
    rows, extra, table = structured_case()
    tight = mine_dataset(rows, StubEmbedder(table), corpus=extra, **CASES["tight_range_drops"])
    assert 0 < tight.dropped < tight.pairs
    assert "dropped; consider adjusting range_max, range_min" in tight.summary()
    filtered = mine_dataset(rows, StubEmbedder(table), corpus=extra, **CASES["all_filters"])
    assert all(filtered.negatives.skipped.values()), filtered.negatives.skipped
    repeated = mine_dataset(rows, StubEmbedder(table), corpus=extra)
    assert (repeated.rows, repeated.pairs, repeated.queries) == (len(rows), len(rows) - 1, 40)
    assert "1 rows repeat an (anchor, positive) pair" in repeated.summary()


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("options", [{}, {"range_min": 2, "range_max": 20, "relative_margin": 0.05},
                                     {"num_negatives": 5, "max_score": 0.8}])
def test_random_sampling_equals_sentence_transformers_with_the_same_seed(seed, options):
    rows, extra, table = structured_case(seed=3)
    theirs = st_rows(rows, table, extra, seed=seed, sampling_strategy="random", **options)
    ours = our_rows(rows, table, extra, seed=seed, sampling_strategy="random", **options)
    assert ours == theirs
    assert ours != our_rows(rows, table, extra, seed=seed + 1, sampling_strategy="random", **options)


def test_more_negatives_than_the_corpus_holds_drops_those_rows_like_sentence_transformers():
    rows, _, table = structured_case(n_queries=6, repeats=False)
    options = {"num_negatives": 6, "range_max": 9}  # 6 texts, each query's positive among them: 5 candidates
    assert st_rows(rows, table, **options) == our_rows(rows, table, **options) == []
    mined = mine_dataset(rows, StubEmbedder(table), **options)
    assert (mined.dropped, mined.negatives.num_incomplete) == (6, 6)
    assert (mined.negatives.indices[:, 5] == -1).all() and (mined.negatives.indices[:, :5] >= 0).all()
    assert mined.dataset.column_names == ["anchor", "positive", *(f"negative_{i}" for i in range(1, 7))]
    options["num_negatives"] = 5
    assert st_rows(rows, table, **options) == our_rows(rows, table, **options) != []


@pytest.mark.parametrize("options", [{}, {"absolute_margin": 0.1, "max_score": 0.9}, {"range_max": 6}])
def test_a_query_whose_text_is_in_the_corpus_is_not_its_own_negative_as_in_sentence_transformers(options):
    """ST 6.3 leaves a query's own text out of its candidates (and widens the pool by one for it)."""
    rows, extra, table = structured_case()
    corpus = extra + [f"q{q}" for q in range(0, 40, 3)]  # some queries' own texts among the distractors
    ours = mine_dataset(rows, StubEmbedder(table), corpus=corpus, **options)
    assert ours.dataset.to_list() == st_rows(rows, table, corpus, **options)
    # its own text scores 1.0, so without the rule it would be every such query's first negative
    assert all(r["anchor"] not in (r["negative_1"], r["negative_2"], r["negative_3"]) for r in ours.dataset.to_list())


def test_duplicate_anchors_exclude_all_their_positives_and_share_negatives():
    rows, extra, table = structured_case()
    mined = mine_dataset(rows, StubEmbedder(table), corpus=extra, num_negatives=8).dataset.to_list()
    for anchor in ("q4", "q8", "q16"):  # 3 (q4's own two and p7.0 in a later row), 3 and 2 positives
        mine = [r for r in mined if r["anchor"] == anchor]
        positives = {r["positive"] for r in rows if r["anchor"] == anchor}
        assert {r["positive"] for r in mine} == positives and len(positives) > 1
        negatives = [tuple(r[f"negative_{i}"] for i in range(1, 9)) for r in mine]
        assert len(set(negatives)) == 1 and not positives & set(negatives[0])


def test_a_distinct_query_text_embeds_once_and_renamed_columns_are_kept():
    rows, extra, table = structured_case()
    embedder = StubEmbedder(table)
    renamed = [{"question": r["anchor"], "answer": r["positive"], "id": i} for i, r in enumerate(rows)]
    mined = mine_dataset(renamed, embedder, anchor_column="question", positive_column="answer", corpus=extra)
    assert embedder.calls == [40, len(set(extra) | {r["positive"] for r in rows})]
    assert mined.dataset.column_names == ["question", "answer", "negative_1", "negative_2", "negative_3"]
    theirs = st_rows(rows, table, extra)
    assert [list(r.values()) for r in mined.dataset.to_list()] == [list(r.values()) for r in theirs]


def test_chunking_changes_nothing():
    g = torch.Generator().manual_seed(5)
    queries, corpus = torch.randn(37, 8, generator=g), torch.randn(101, 8, generator=g)
    positives = [[q, (q * 7) % 101][: 1 + q % 2] for q in range(37)]
    options = {"num_negatives": 4, "range_min": 2, "relative_margin": 0.05}
    whole = mine_hard_negatives(queries, corpus, positives, **options)
    chunked = mine_hard_negatives(queries, corpus, positives, chunk_size=9, query_chunk_size=5, **options)
    assert torch.equal(whole.indices, chunked.indices)
    torch.testing.assert_close(whole.scores, chunked.scores)
    assert whole.skipped == chunked.skipped and whole.range_max == 2 + 4 * 10 + 2
    random_whole = mine_hard_negatives(queries, corpus, positives, sampling_strategy="random", seed=3, **options)
    random_chunked = mine_hard_negatives(queries, corpus, positives, sampling_strategy="random", seed=3,
                                         chunk_size=9, query_chunk_size=5, **options)
    assert torch.equal(random_whole.indices, random_chunked.indices)


def test_selection_follows_the_definition_on_a_hand_made_case():
    """One query on a 2-d circle: corpus at angles whose cosines are known; the positive is corpus row 1."""
    angles = torch.tensor([0.1, 0.3, 0.05, 0.5, 0.2, 1.0, 1.4, 0.25])  # cos: .995 .955 .999 .878 .980 .540 .170 .969
    corpus = torch.stack([angles.cos(), angles.sin()], 1)
    query = torch.tensor([[1.0, 0.0]])
    ranked = lambda **o: mine_hard_negatives(query, corpus, [[1]], **o).indices[0].tolist()
    assert ranked(num_negatives=3) == [2, 0, 4]
    assert ranked(num_negatives=3, range_min=2) == [4, 7, 3]
    assert ranked(num_negatives=2, absolute_margin=0.0) == [3, 5]  # strictly below the positive's .955
    assert ranked(num_negatives=2, relative_margin=0.5) == [6, -1]  # below .955/2: only row 6
    assert ranked(num_negatives=2, max_score=0.97, min_score=0.5) == [7, 3]
    assert ranked(num_negatives=2, max_score=0.97, min_score=0.5, range_max=7) == [7, 3]
    for one_each in (torch.tensor([1]), [1]):  # one positive per query, as a tensor or a flat list
        assert mine_hard_negatives(query, corpus, one_each, num_negatives=1).indices.tolist() == [[2]]


@pytest.mark.parametrize("options, message", [
    ({"num_negatives": 0}, "num_negatives must be ≥ 1"),
    ({"range_min": -1, "range_max": 5}, "range_min must be ≥ 0"),
    ({"range_min": 5, "range_max": 5}, "range_min must be smaller than range_max"),
    ({"range_min": 2, "range_max": 4, "num_negatives": 3}, "cannot mine 3 negatives per query: only 2 candidates"),
    ({"sampling_strategy": "best"}, "sampling_strategy must be one of"),
    ({"chunk_size": 0}, "chunk_size and query_chunk_size must be ≥ 1"),
])
def test_bad_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        mine_hard_negatives(torch.randn(2, 4), torch.randn(6, 4), [[0], [1]], **options)


@pytest.mark.parametrize("queries, corpus, positives, message", [
    (torch.randn(2, 4), torch.randn(6, 3), [[0], [1]], "same D"),
    (torch.randn(2, 4), torch.randn(0, 4), [[0], [1]], "nothing to mine"),
    (torch.randn(2, 4), torch.randn(6, 4), [[0]], "1 entries for 2 queries"),
    (torch.randn(2, 4), torch.randn(6, 4), [[0], []], "query 1 has no positive"),
    (torch.randn(2, 4), torch.randn(6, 4), [[0], [6]], r"positive_ids\[1\] holds 6, outside the corpus of 6"),
    (torch.randn(2, 4), torch.randn(6, 4), torch.zeros(2, 1), r"must be \(Q,\)"),
])
def test_bad_inputs_are_refused(queries, corpus, positives, message):
    with pytest.raises(ValueError, match=message):
        mine_hard_negatives(queries, corpus, positives)


@pytest.mark.parametrize("rows, message", [
    ([], "no rows"),
    ([{"anchor": "a"}], "positive_column 'positive': row 1 .* has no such key"),
    ([{"anchor": "a", "positive": "b"}, {"anchor": " ", "positive": "c"}], "anchor_column 'anchor': 1 row.* rows 2"),
])
def test_bad_rows_are_refused_naming_the_row(rows, message):
    with pytest.raises(ValueError, match=message):
        mine_dataset(rows, StubEmbedder({}))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_bert_dir) -> str:
    """A tiny random BERT exported as litembed exports, with a query prompt (ST's encode_query applies it)."""
    from lightning_modules.text_encoder import TextEncoder

    directory = str(tmp_path_factory.mktemp("tiny-export"))
    TextEncoder(tiny_bert_dir, pooling="mean", max_length=64, prompts={"query": "query: "}).save(directory)
    return directory


def extra_corpus(n: int = 30) -> list[str]:
    return [f"Unrelated note {i} about {['gardening', 'sailing', 'paths and files', 'mail'][i % 4]}." for i in range(n)]


@pytest.mark.parametrize("options", [{"range_min": 2, "relative_margin": 0.0005}, {"max_score": 0.99},
                                     {"sampling_strategy": "random", "num_negatives": 2}])
def test_a_real_model_mines_what_sentence_transformers_mines(tiny_export, options):
    """The Embedder (load_model) and ST's own model on the same export: prompts, embeddings and selection agree."""
    from sentence_transformers import SentenceTransformer

    from conftest import qa_rows
    from inference.models import load_model

    rows = qa_rows(40) + [{"anchor": r["anchor"], "positive": f"Also: {r['positive']}"} for r in qa_rows(6)]
    random.seed(3)
    theirs = util.mine_hard_negatives(datasets.Dataset.from_list(rows), SentenceTransformer(tiny_export, device="cpu"),
                                      corpus=extra_corpus(), output_format="n-tuple", verbose=False, **options)
    ours = mine_dataset(rows, load_model(tiny_export, "cpu"), corpus=extra_corpus(), seed=3, **options)
    assert ours.dataset.to_list() == theirs.to_list()
    assert 0 < len(theirs)


def test_output_scores_are_sentence_transformers_scores(tiny_export):
    """The n-tuple-scores format of ST's ``mine_hard_negatives(..., output_scores=True)``: the same rows, and per row
    [the positive's score, each negative's] equal within float32 rounding."""
    from sentence_transformers import SentenceTransformer

    from conftest import qa_rows
    from inference.models import load_model

    rows = qa_rows(40) + [{"anchor": r["anchor"], "positive": f"Also: {r['positive']}"} for r in qa_rows(6)]
    options = {"range_min": 1, "num_negatives": 2}
    theirs = util.mine_hard_negatives(datasets.Dataset.from_list(rows), SentenceTransformer(tiny_export, device="cpu"),
                                      corpus=extra_corpus(), output_format="n-tuple", output_scores=True,
                                      verbose=False, **options).to_list()
    ours = mine_dataset(rows, load_model(tiny_export, "cpu"), corpus=extra_corpus(), output_scores=True,
                        **options).dataset.to_list()
    assert [{k: v for k, v in r.items() if k != "scores"} for r in ours] == [
        {k: v for k, v in r.items() if k != "scores"} for r in theirs]
    assert all(len(r["scores"]) == 3 for r in ours) and len(ours) > 0
    for mine, st in zip(ours, theirs):
        assert mine["scores"] == pytest.approx(st["scores"], abs=1e-5)
    # the teacher's scores of the same rows, from a model's embeddings, are those mine_dataset wrote for that model
    from inference.mining import teacher_scores

    rescored = teacher_scores(datasets.Dataset.from_list(ours), load_model(tiny_export, "cpu"))
    torch.testing.assert_close(torch.tensor(rescored), torch.tensor([r["scores"] for r in ours]), rtol=0, atol=1e-5)


def run_mine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "mine.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


@pytest.fixture(scope="module")
def mined_dir(tmp_path_factory, tiny_export) -> tuple[str, str]:
    """mine.py on a train/validation/test jsonl folder with an extra corpus: (output folder, its stdout)."""
    from conftest import write_pairs_dir

    root = tmp_path_factory.mktemp("mine-cli")
    data = write_pairs_dir(root / "pairs")
    corpus = root / "extra.txt"
    corpus.write_text("\n".join(extra_corpus()) + "\n\n")
    output = str(root / "mined")
    run = run_mine("--model", tiny_export, "--dataset", data, "--output", output, "--corpus", str(corpus),
                   "--range_min", "1", "--relative_margin", "0.0005", "--batch_size", "16")
    assert run.returncode == 0, run.stderr
    return output, run.stdout


def test_cli_writes_a_litembed_dataset_with_the_negative_columns(mined_dir):
    from datamodules.loading import load_splits

    output, stdout = mined_dir
    splits = load_splits(output, {})
    assert sorted(splits) == ["test", "train", "validation"]
    columns = ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert splits["train"].column_names == columns and 0 < len(splits["train"]) <= 48
    source = load_splits(os.path.join(os.path.dirname(output), "pairs"), {})
    for name in ("validation", "test"):  # copied unchanged (HF gives a folder's splits one schema: null negatives)
        assert splits[name].select_columns(columns[:2]).to_list() == source[name].to_list()
    for row in splits["train"]:
        negatives = {row[c] for c in columns[2:]}
        assert len(negatives) == 3 and row["positive"] not in negatives
    assert f"Wrote {len(splits['train'])} rows to {os.path.join(output, 'train.jsonl')}" in stdout
    assert (f"python train.py fit --config configs/demo/text.yaml --data.init_args.dataset {output} "
            f"--data.init_args.columns '[{', '.join(columns)}]'") in stdout
    assert "skipped" in stdout and "relative_margin of 0.0005" in stdout


def test_the_printed_command_trains_on_the_mined_folder(mined_dir, tiny_export, tmp_path):
    """The command mine.py prints, with a tiny model swapped in, runs a 2-step fit on the negative columns."""
    from train import cli_main

    output, stdout = mined_dir
    command = shlex.split(stdout.split("Train on it:\n")[1].strip())
    assert command[:3] == ["python", "train.py", "fit"]
    tiny = [f"--model.init_args.encoder.init_args.model_name_or_path={tiny_export}",
            "--model.init_args.loss.init_args.dims=[32, 16]", "--model.init_args.evaluate_before_training=false",
            "--trainer.callbacks.init_args.monitor=val/dim_32_cosine_ndcg@10",
            "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--test_after_fit=false",
            NO_EXPORT]
    cli = cli_main(command[2:] + tiny)
    assert cli.trainer.global_step == 2
    assert cli.datamodule.columns == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert len(batch["features"]) == 5  # anchor, positive and three negatives reach the loss
    assert sum(1 for row in logged_rows(cli.trainer.log_dir) if row.get("train/loss")) == 2


@pytest.mark.parametrize("extra, message", [
    (["--anchor_column", "question"], r"column\(s\) \['question'\] not found; .*Set --anchor_column"),
    (["--split", "dev"], r"--split 'dev': split not found .*splits found: \['test', 'train', 'validation'\]"),
    (["--corpus", "missing.txt"], "--corpus missing.txt: no such file"),
    (["--batch_size", "0"], "--batch_size and --truncate_dim must be ≥ 1"),
])
def test_cli_input_errors_name_the_flag_before_the_model_loads(tmp_path, pairs_dir, capsys, extra, message):
    import mine

    with pytest.raises(SystemExit) as exit_info:
        mine.main(["--model", "no/such-model", "--dataset", pairs_dir, "--output", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_refuses_an_output_folder_holding_other_files_and_a_missing_dataset(tmp_path, pairs_dir, capsys):
    import mine

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_text("")
    for dataset, output, message in [(pairs_dir, tmp_path / "out", "holds other files \\(old.parquet\\)"),
                                     (str(tmp_path / "nothing.jsonl"), tmp_path / "new", "^error: --dataset ")]:
        with pytest.raises(SystemExit):
            mine.main(["--model", "no/such-model", "--dataset", dataset, "--output", str(output)])
        assert re.search(message, capsys.readouterr().err, re.M)


@pytest.mark.parametrize("output, dataset, problem", [
    ("pairs", "pairs", r"is --dataset pairs \(the same path\): the mined files would overwrite"),
    ("pairs/", "./pairs", r"is --dataset \./pairs \(the same path\)"),
    ("{tmp}/pairs", "pairs", r"is --dataset pairs \(the same path\)"),
    ("link", "pairs", r"is --dataset pairs \(the same path\)"),
    ("pairs/mined", "pairs", r"lies inside --dataset pairs: the mined files would be read as part of it"),
    ("pairs", "link/train.jsonl", r"holds --dataset link/train.jsonl: the mined files could overwrite it"),
])
def test_cli_refuses_an_output_that_overlaps_the_dataset_before_reading_it(tmp_path, monkeypatch, capsys, output,
                                                                           dataset, problem):
    import mine
    from conftest import write_pairs_dir

    monkeypatch.chdir(tmp_path)
    write_pairs_dir(tmp_path / "pairs")
    (tmp_path / "link").symlink_to(tmp_path / "pairs")
    before = {p.name: p.read_bytes() for p in (tmp_path / "pairs").iterdir()}
    output = output.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        mine.main(["--model", "no/such-model", "--dataset", dataset, "--output", output])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: --output {re.escape(output)} {problem}.*; choose an --output folder apart from "
                        rf"--dataset\n", err), err
    assert {p.name: p.read_bytes() for p in (tmp_path / "pairs").iterdir()} == before


def test_cli_refuses_an_output_that_would_overwrite_the_corpus(tmp_path, pairs_dir, capsys):
    import mine

    corpus = tmp_path / "out" / "train.jsonl"
    corpus.parent.mkdir()
    corpus.write_text('{"text": "a passage"}\n')
    with pytest.raises(SystemExit):
        mine.main(["--model", "no/such-model", "--dataset", pairs_dir, "--output", str(tmp_path / "out"),
                   "--corpus", str(corpus)])
    assert f"holds --corpus {corpus}: the mined files could overwrite it" in capsys.readouterr().err


def test_cli_output_scores_with_a_teacher_write_what_a_distillation_fit_reads(tmp_path, tiny_export, tiny_bert_dir):
    """mine.py --output_scores --teacher: the teacher's scores in a scores column; the printed command's data and loss
    flags train a distillation fit on it."""
    from conftest import write_pairs_dir
    from tests.commands import NO_EXPORT, text_recipe, train_args
    from train import cli_main

    teacher = str(tmp_path / "teacher")
    from lightning_modules.text_encoder import TextEncoder

    TextEncoder(tiny_bert_dir, pooling="cls", max_length=64).save(teacher)  # another model: other scores
    data = write_pairs_dir(tmp_path / "pairs")
    output = str(tmp_path / "mined")
    run = run_mine("--model", tiny_export, "--dataset", data, "--output", output, "--num_negatives", "2",
                   "--output_scores", "--teacher", teacher, "--batch_size", "16")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in open(os.path.join(output, "train.jsonl"))]
    assert all(len(row["scores"]) == 3 for row in rows)
    from inference.mining import teacher_scores
    from inference.models import load_model

    expected = teacher_scores(datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "scores"}
                                                          for r in rows]), load_model(teacher, "cpu"))
    torch.testing.assert_close(torch.tensor([r["scores"] for r in rows]), torch.tensor(expected), rtol=0, atol=1e-5)
    printed = run.stdout.split("Train on it:\n", 1)[1].strip()
    assert "--data.init_args.score_column scores --model.init_args.loss.init_args.loss losses.MarginMSELoss" in printed
    assert "'[anchor, positive, negative_1, negative_2]'" in printed
    cli_main(train_args(*text_recipe(tiny_bert_dir, output), "--data.columns=[anchor, positive, negative_1, negative_2]",
                        "--data.score_column=scores", "--model.loss.loss=losses.MarginMSELoss",
                        "--data.test_split=test", NO_EXPORT, save_dir=tmp_path / "runs"))
    refused = run_mine("--model", tiny_export, "--dataset", data, "--output", str(tmp_path / "x"), "--teacher", teacher)
    assert refused.returncode == 2 and "--teacher scores the mined rows for --output_scores" in refused.stderr
