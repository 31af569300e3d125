"""Bad or awkward training data: repeated values never yield a batch the loss refuses, and every error about data rows
names the option to set, the file and the file's line (or 1-based row), and all bad rows up to a limit."""

import logging
import re

import pytest
import torch

from conftest import qa_rows, write_jsonl
from datamodules.pairs import PairDataModule
from lightning_modules.text import TextEmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from losses import MultipleNegativesRankingLoss
from test_text import fit_args
from train import cli_main

LOADER = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}


@pytest.fixture(scope="module")
def tiny_module(tiny_bert_dir):
    return TextEmbeddingModule(TextEncoder(tiny_bert_dir))


def setup_dm(module, **kwargs):
    dm = PairDataModule(**{"num_workers": 0, **kwargs})
    dm.processor = module.processor
    dm.setup("fit")
    return dm


def yes_rows(n=300, every=12):
    """The bug report's data: ordinary pairs of which 25 (of 300) share the positive "Yes."."""
    rows = qa_rows(n)
    for i in range(0, n, every):
        rows[i]["positive"] = "Yes."
    return rows


def test_repeated_positive_yields_no_one_row_batch_and_says_so_once(tiny_module, tmp_path, caplog):
    path = write_jsonl(tmp_path / "train.jsonl", yes_rows())
    with caplog.at_level(logging.INFO):
        dm = setup_dm(tiny_module, dataset=path, val_split=None, batch_size=16)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    counts = re.search(r"train.jsonl \(train split\): repeated values shrink the training batches. Epoch 0 \(the "
                       r"others alike\): 300 rows make 18 batches of 16, 1 smaller batch \((\d+) rows\) and leave "
                       r"(\d+) rows out", warnings[0])
    assert counts and int(counts[1]) + int(counts[2]) == 300 - 18 * 16
    assert re.search(r"'Yes.' \(column 'positive'\) is in 25 of the 300 rows \(lines 1, 13, 25, 37, 49, 61, 73, 85, "
                     r"97, 109 of \S+/train.jsonl, and 15 more\)", warnings[0])
    for flag in ("--data.init_args.batch_size to about 12", "--data.init_args.no_duplicates false",
                 "--data.init_args.drop_last true"):
        assert flag in warnings[0]

    for epoch in range(3):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            loader = dm.train_source.dataloader(epoch=epoch, rank=0, world=1, options=LOADER)
            batches = list(loader)
        sizes = [len(b["features"][0]["input_ids"]) for b in batches]
        assert min(sizes) >= 2 and sizes.count(16) == 18 and len(loader) == len(batches)
        left_out = 300 - sum(sizes)
        assert left_out > 0 and f"epoch {epoch}: {left_out} of 300 training rows left out" in caplog.text
        decode = tiny_module.processor.tokenizer.batch_decode
        positives = [decode(b["features"][1]["input_ids"], skip_special_tokens=True) for b in batches]
        assert all(batch.count("yes.") <= 1 for batch in positives)  # lower-cased by the tokenizer
        ranks = [dm.train_source.dataloader(epoch=epoch, rank=r, world=2, options=LOADER) for r in (0, 1)]
        shards = [list(loader.batch_sampler) for loader in ranks]
        assert len(ranks[0]) == len(ranks[1]) == len(shards[0]) == len(shards[1])
        assert all(len(b) >= 2 for shard in shards for b in shard)
        # left out before padding: the ranks together serve the rows of the unsharded epoch, no other
        assert {i for shard in shards for b in shard for i in b} == {i for b in loader.batch_sampler for i in b}


def test_identical_rows_fail_at_setup_naming_the_value_the_file_and_what_to_do(tiny_module, tmp_path):
    path = write_jsonl(tmp_path / "same.jsonl", [{"anchor": "Is it?", "positive": "Yes."}] * 40)
    message = (r"same.jsonl \(train split\): no batch of two or more rows can be formed without repeating a value "
               r"\(--data.init_args.no_duplicates true\): 'Is it\?' \(column 'anchor'\) is in 40 of the 40 rows "
               r"\(lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 of \S+/same.jsonl, and 30 more\). Remove the repeated rows, or "
               r"set --data.init_args.no_duplicates false")
    with pytest.raises(ValueError, match=message):
        setup_dm(tiny_module, dataset=path, val_split=None, batch_size=16)
    dm = setup_dm(tiny_module, dataset=path, val_split=None, batch_size=16, no_duplicates=False)
    assert len(dm.train_dataloader()) == 3


@pytest.mark.parametrize("rows, match", [
    (qa_rows(10), r"10 rows make no batch of 16 \(--data.init_args.drop_last true\): lower --data.init_args.batch_size "
                  r"or set --data.init_args.drop_last false"),
    ([{"anchor": f"q{i}", "positive": "Yes." if i < 30 else f"p{i}"} for i in range(40)],
     r"no batch of 16 rows can be formed without repeating a value \(--data.init_args.no_duplicates true\): 'Yes.' "
     r"\(column 'positive'\) is in 30 of the 40 rows .* or --data.init_args.drop_last false"),
])
def test_drop_last_without_a_full_batch_fails_at_setup(tiny_module, tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        setup_dm(tiny_module, dataset=write_jsonl(tmp_path / "p.jsonl", rows), val_split=None, batch_size=16,
                 drop_last=True)


def test_the_loss_names_the_real_flag_and_the_rows_it_got():
    with pytest.raises(ValueError, match=r"got batch size 1: this batch had 1 row\(s\) and so no negative. Set "
                                         r"--data.init_args.batch_size ≥ 2; if it is, the data loader yielded"):
        MultipleNegativesRankingLoss()(torch.randn(1, 4), torch.randn(1, 4))


def test_fit_finishes_on_data_with_a_repeated_positive(tiny_bert_dir, tmp_path):
    """The bug report's run stopped at step 18 of epoch 0 on a one-row batch; the flags its messages name exist."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", yes_rows())
    write_jsonl(data / "validation.jsonl", qa_rows(12, offset=500))
    write_jsonl(data / "test.jsonl", qa_rows(12, offset=600))
    cli = cli_main(fit_args(tmp_path, tiny_bert_dir, str(data), [32, 16], "val/dim_32_cosine_ndcg@10", extra=[
        "--trainer.max_epochs=2", "--data.init_args.batch_size=16", "--data.init_args.no_duplicates=true",
        "--data.init_args.drop_last=false", "--data.init_args.columns=[anchor, positive]",
        "--data.init_args.val_size=null"]))
    source = cli.datamodule.train_source
    steps = [len(source.dataloader(epoch=e, rank=0, world=1, options=LOADER)) for e in (0, 1)]
    assert cli.trainer.current_epoch == 2 and cli.model.global_step == sum(steps) and min(steps) > 18


def lines_named(message: str) -> set[int]:
    return {int(n) for group in re.findall(r"lines? ([\d, ]+) of", message) for n in group.split(", ")}


def test_bad_texts_with_val_size_are_named_by_file_line_in_one_error(tiny_module, tmp_path):
    rows = qa_rows(300)
    for line, value in ((70, ""), (91, None), (240, "  "), (5, ""), (6, None)):
        rows[line - 1]["positive"] = value
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError) as err:
        setup_dm(tiny_module, dataset=path, val_size=0.3, seed=0)
    message = str(err.value)
    # held out and shuffled: some bad rows in validation, some in train, all in one error by their file lines
    held_out = re.search(r"train.jsonl \(validation rows held out of the train split by --data.init_args.val_size\): "
                         r"(\d) rows? ha(?:s|ve) an empty or missing 'positive' \(e.g. .*\): lines? [\d, ]+ of \S+/"
                         r"train.jsonl.\nFill or remove those rows, or name other columns with --data.init_args.columns",
                         message)
    kept = re.search(r"train.jsonl \(train split\): (\d) rows? ha(?:s|ve) an empty or missing 'positive'", message)
    assert held_out and kept and int(held_out[1]) + int(kept[1]) == 5
    assert lines_named(message) == {5, 6, 70, 91, 240}


def test_many_bad_rows_are_counted_beyond_those_named(tiny_module, tmp_path):
    rows = qa_rows(40)
    for i in range(3, 40, 3):  # 13 rows
        rows[i]["anchor"] = ""
    rows[7]["positive"] = None
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError, match=r"13 rows have an empty or missing 'anchor' \(e.g. ''\): lines 4, 7, 10, 13, "
                                         r"16, 19, 22, 25, 28, 31 of \S+/pairs.jsonl, and 3 more;\n  1 row has an "
                                         r"empty or missing 'positive' \(e.g. None\): line 8 of \S+/pairs.jsonl."):
        setup_dm(tiny_module, dataset=path, val_split=None)


def test_blank_lines_count_in_the_line_numbers(tiny_module, tmp_path):
    rows = qa_rows(6)
    rows[4]["positive"] = " "
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, rows)
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:2]) + "\n  \n" + "".join(text[2:]))  # HF skips blank lines; editors count them
    with pytest.raises(ValueError, match=r"1 row has an empty or missing 'positive' \(e.g. ' '\): line 7 of "):
        setup_dm(tiny_module, dataset=str(path), val_split=None)


def test_bad_rows_in_a_validation_file_and_a_second_train_file(tiny_module, tmp_path):
    write_jsonl(tmp_path / "train-00000-of-00002.jsonl", qa_rows(10))
    second = qa_rows(10, offset=10)
    second[2]["anchor"] = None
    write_jsonl(tmp_path / "train-00001-of-00002.jsonl", second)
    validation = qa_rows(10, offset=100)
    validation[6]["positive"] = "  "
    write_jsonl(tmp_path / "validation.jsonl", validation)
    with pytest.raises(ValueError) as err:
        setup_dm(tiny_module, dataset=str(tmp_path))
    assert re.search(r"\(validation split\): 1 row has an empty or missing 'positive' \(e.g. '  '\): line 7 of \S+/"
                     r"validation.jsonl.\n", str(err.value))
    assert re.search(r"\(train split\): 1 row has an empty or missing 'anchor' \(e.g. None\): line 3 of \S+/"
                     r"train-00001-of-00002.jsonl.\n", str(err.value))


def test_streamed_validation_rows_name_their_train_file_line(tiny_module, tmp_path):
    rows = qa_rows(40)
    rows[4]["anchor"] = ""
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"\(validation rows held out of the train split by --data.init_args.val_size"
                                         r"\): 1 row has an empty or missing 'anchor' \(e.g. ''\): line 5 of \S+/"
                                         r"train.jsonl"):
        setup_dm(tiny_module, dataset=str(tmp_path), val_size=10, streaming=True)


def test_missing_column_names_the_file_the_columns_found_and_the_flag(tiny_module, pairs_dir):
    with pytest.raises(ValueError) as err:
        setup_dm(tiny_module, dataset=pairs_dir, columns=["question", "positive"])
    for split in ("validation", "train"):
        assert re.search(rf"\({split} split\): column\(s\) \['question'\] not found; columns found: \['anchor', "
                         rf"'positive'\] \(in \S+/{split}.jsonl\). Set --data.init_args.columns to the data's column "
                         rf"names.", str(err.value)), split


def test_rows_of_a_builtin_split_count_from_1(tiny_module):
    from datamodules.common import Where

    where = Where("builtin:x (train split)", "builtin:x", "train")
    assert where.rows([41, 2], total=5) == "rows 3, 42 of the train split (counting from 1), and 3 more"
