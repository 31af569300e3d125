"""Bad or awkward training data: repeated values never yield a batch the loss refuses, and every error about data rows
names the option to set, the file and the file's line (or 1-based row), and all bad rows up to a limit."""

import csv
import json
import logging
import re

import datasets
import pytest
import torch
import yaml

from conftest import qa_rows, write_jsonl, write_pairs_dir
from datamodules.checks import check_texts, text_value
from datamodules.loading import count_rows
from datamodules.locations import Where
from datamodules.splits import with_row_numbers
from datamodules.files import DataFileError
from datamodules.pairs import PairDataModule
from datamodules.sources import BadRow
from lightning_modules.text import TextEmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from losses import MultipleNegativesRankingLoss
from test_errors import TEXT, builds, fails
from test_text import fit_args
from tests.commands import NO_EXPORT
from train import cli_main

LOADER = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}


@pytest.fixture(scope="module")
def tiny_module(tiny_bert_dir):
    return TextEmbeddingModule(TextEncoder(tiny_bert_dir))


def setup_dm(module, **kwargs):
    dm = PairDataModule(**{"num_workers": 0, **kwargs})
    dm.connect(module.data_needs())
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
        "--data.init_args.val_size=null", NO_EXPORT]))
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
    from datamodules.locations import Where

    where = Where("builtin:x (train split)", "builtin:x", "train")
    assert where.rows([41, 2], total=5) == "rows 3, 42 of the train split (counting from 1), and 3 more"


def multi_line_csv(path, rows) -> str:
    """``rows`` as a csv whose positives hold line breaks (quoted cells over 3 lines each), CRLF line ends."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["anchor", "positive"])
        writer.writerows([row["anchor"], row["positive"] and row["positive"].replace(": ", ":\n", 1) + "\n(end)"]
                         for row in rows)
    return str(path)


def crlf_jsonl_with_blank_lines(path, rows) -> str:
    """``rows`` as CRLF JSON lines with a blank line (and a blank CRLF line) after every 20th row."""
    with open(path, "w", newline="") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row) + "\r\n" + ("\r\n  \n" if i % 20 == 0 else ""))
    return str(path)


def test_a_stream_counts_csv_records_and_json_lines_not_newlines(tiny_module, tmp_path):
    """96 rows each: the newline count said 3 × 96 + 1 for the csv, 96 + 10 for the jsonl; the epoch (and so the LR
    schedule and the card) followed it. Map-style messages name the rows by the file's line all the same."""
    csv_path = multi_line_csv(tmp_path / "train.csv", qa_rows(96))
    jsonl_path = crlf_jsonl_with_blank_lines(tmp_path / "pairs.jsonl", qa_rows(96))
    assert count_rows(csv_path, "train") == count_rows(jsonl_path, "train") == 96
    for path in (csv_path, jsonl_path):
        dm = setup_dm(tiny_module, dataset=path, val_split=None, streaming=True, batch_size=8)
        assert dm.train_source.rows == 96 and dm.train_source.steps_per_epoch(1) == 12

    rows = qa_rows(96)
    rows[40]["positive"] = ""  # csv: record 41 starts on line 122 (the header, then 3 lines per record) ...
    rows[90]["anchor"] = None  # ... and record 91 on line 270 (record 41 is 1 line); jsonl: line 91 + 2 × 5 blank
    with pytest.raises(ValueError, match=r"1 row has an empty or missing 'anchor' \(e.g. None\): line 270 of \S+/"
                                         r"bad.csv;\n  1 row has an empty or missing 'positive' \(e.g. None\): "
                                         r"line 122 of \S+/bad.csv"):
        setup_dm(tiny_module, dataset=multi_line_csv(tmp_path / "bad.csv", rows), val_split=None)
    with pytest.raises(ValueError, match=r"1 row has an empty or missing 'anchor' \(e.g. None\): line 101 of \S+/"
                                         r"bad.jsonl"):
        setup_dm(tiny_module, dataset=crlf_jsonl_with_blank_lines(tmp_path / "bad.jsonl", rows), val_split=None)


def test_two_formats_for_one_split_are_refused_naming_both_files(tiny_module, tmp_path):
    data = tmp_path / "data"
    write_pairs_dir(data)
    write_jsonl(data / "train-extra.jsonl", qa_rows(5, offset=900))
    multi_line_csv(data / "train.csv", qa_rows(10, offset=700))
    for streaming in (False, True):
        with pytest.raises(ValueError, match=r"data: the train split has files of 2 formats \(.csv, .jsonl\): \S+/"
                                             r"train-extra.jsonl, \S+/train.csv, \S+/train.jsonl; HF datasets would "
                                             r"read \S+/train-extra.jsonl, \S+/train.jsonl and drop \S+/train.csv. "
                                             r"Convert them to one format, move the others out of the folder, or name each "
                                             r"split's files with --data.init_args.data_files"):
            setup_dm(tiny_module, dataset=str(data), streaming=streaming, val_size=10 if streaming else None)


def test_files_matching_no_split_are_named_and_each_split_says_its_files(tiny_module, tmp_path, caplog):
    data = tmp_path / "data"
    write_pairs_dir(data)
    write_jsonl(data / "extra.jsonl", qa_rows(5, offset=900))
    with caplog.at_level(logging.INFO):
        setup_dm(tiny_module, dataset=str(data), test_split=None)
    assert re.search(r"data: 1 data file\(s\) match no split name \(train, validation, test, and HF's other spellings\)"
                     r" and are not read: \S+/extra.jsonl. Rename them \(e.g. train-2.jsonl\) or name every split's "
                     r"files with --data.init_args.data_files", caplog.text)
    assert re.search(r"\n  train split: \S+/train.jsonl \(48 rows\)\n  validation split: \S+/validation.jsonl \(20 "
                     r"rows\)\n  test split \(not used\): \S+/test.jsonl", caplog.text), caplog.text


GOOD = "".join(json.dumps(row) + "\n" for row in qa_rows(20))
GOOD_CSV = "anchor,positive\n" + "".join(f"q{i},p{i}\n" for i in range(20))
BAD_FILES = {  # name: (content, the message after the file's path)
    "truncated.jsonl": (GOOD + '{"anchor": "q", "positive": "p', r"1 bad line\(s\): line 21: not valid JSON at "
                        r"column 29 \(Unterminated string starting at\). Fix or remove those lines"),
    "not_an_object.jsonl": ("".join(GOOD.splitlines(keepends=True)[:2]) + "\n[1, 2]\n" + GOOD, r"1 bad line\(s\): "
                            r"line 4: not a JSON object \(one row\) but a list"),
    "nan.jsonl": (GOOD + '{"anchor": "q", "positive": NaN}\n', r"1 bad line\(s\): line 21: not valid JSON \(NaN is "
                  r"not a JSON value; write null or a number\)"),
    "more_fields.csv": (GOOD_CSV + "a,b,c\n", r"1 bad line\(s\): line 22: 3 field\(s\), the header \(line 1\) "
                        r"has 2: quote values holding commas, or fill the missing fields"),
    "fewer_fields.csv": (GOOD_CSV[:22] + "lonely\n" + GOOD_CSV[22:], r"1 bad line\(s\): line 3: 1 field\(s\), "
                         r"the header \(line 1\) has 2"),
    "empty.jsonl": ("\n \r\n", r"no rows \(the file is empty or holds only a header or blank lines\); fill it or "
                    r"remove it"),
    "header_only.csv": ("anchor,positive\n", r"no rows \(the file is empty or holds only a header"),
    "lone_surrogate.jsonl": (GOOD + '{"anchor": "q \\ud800", "positive": "p"}\n', r"1 bad line\(s\): line 21: "
                             r"column 'anchor' holds a lone surrogate escape \(such as \\ud800\), which is no "
                             r"character"),
    "latin1.jsonl": (GOOD + '{"anchor": "caf\xe9", "positive": "p"}\n', r"1 bad line\(s\): line 21: not UTF-8 "
                     r"\(byte 0xe9 at column 16\): re-encode the file as UTF-8"),
    "duplicate_column.csv": ("anchor,positive,positive\n" + "".join(f"q{i},p{i},r{i}\n" for i in range(20)),
                             r"1 bad line\(s\): line 1: the header names column\(s\) \['positive'\] more than once"),
    "number.jsonl": (GOOD + '{"anchor": "q", "positive": 5}\n{"anchor": "r", "positive": ["a", 1]}\n',
                     r"2 bad line\(s\): line 21: column 'positive' holds int 5, not a text; line 22: column 'positive' "
                     r"holds list \['a', 1\], not a text"),
}


def write_bad(path, content: str) -> str:
    path.write_bytes(content.encode("utf-8", "surrogatepass") if "\xe9" not in content else content.encode("latin-1"))
    return str(path)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_file_is_one_message_naming_the_file_and_line(tiny_module, tmp_path, name, streaming):
    """No library traceback: in a folder, the bad file is the second of its split (a stream would have met it only
    mid-training)."""
    content, message = BAD_FILES[name]
    data = tmp_path / "data"
    data.mkdir()
    csv_file = name.endswith(".csv")
    write_bad(data / f"train.{'csv' if csv_file else 'jsonl'}", GOOD_CSV if csv_file else GOOD)
    path = write_bad(data / f"train-2-{name}", content)
    with pytest.raises(DataFileError, match=rf"^{re.escape(path)}: {message}"):
        setup_dm(tiny_module, dataset=str(data), streaming=streaming, val_split=None, batch_size=4)


def test_a_bad_file_stops_train_py_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_bad(tmp_path / "train.jsonl", BAD_FILES["truncated.jsonl"][0])
    message = fails(capsys, "--config", TEXT, f"--data.init_args.dataset={path}")
    assert message.startswith(f"{path}: 1 bad line(s): line 21: not valid JSON")


def test_invisible_characters_are_an_empty_text(tiny_module, tmp_path):
    rows = qa_rows(30)
    rows[4]["positive"] = "\u200b\u200c\u200d"
    rows[9]["positive"] = " \u2060\ufeff\t"
    rows[11]["anchor"] = "\u00a0\u3000"  # no-break and ideographic spaces
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError, match=r"1 row has an empty or missing 'anchor' \(e.g. '\\xa0\\u3000'\): line 12 of "
                                         r"\S+;\n  2 rows have an empty or missing 'positive' \(e.g. '\\u200b\\u200c"
                                         r"\\u200d'\): lines 5, 10 of "):
        setup_dm(tiny_module, dataset=path, val_split=None)
    with pytest.raises(BadRow, match=r"column 'positive' has an empty or non-text value \('\\u2060'\)"):
        text_value({"anchor": "q", "positive": "\u2060"}, "positive", "stream")


def test_a_non_text_value_in_a_loaded_split_names_its_rows_the_column_and_the_type(tmp_path):
    """Data HF loaded that litembed did not read first (a hub dataset): the rows, not ``extension<arrow.json>``."""
    path = write_bad(tmp_path / "train.jsonl", BAD_FILES["number.jsonl"][0])
    split = with_row_numbers(datasets.load_dataset("json", data_files={"train": path}, split="train"))
    with pytest.raises(ValueError, match=r"^org/pairs \(train split\): 2 rows have a non-text 'positive' \(e.g. 5, of "
                                         r"type int\): rows 21, 22 of the train split \(counting from 1\).\nFill or "
                                         r"remove those rows, or name other columns with --data.init_args.columns."):
        check_texts(split, ["anchor", "positive"], Where("org/pairs (train split)", "org/pairs", "train"))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_train_rows": 0}, r"--data.init_args.max_train_rows must be ≥ 1, got 0 \(null: no cap\)"),
    ({"max_train_rows": -5}, r"--data.init_args.max_train_rows must be ≥ 1, got -5"),
    ({"max_eval_rows": 0}, r"--data.init_args.max_eval_rows must be ≥ 1, got 0"),
    ({"val_size": -3}, r"--data.init_args.val_size must be a row count ≥ 1 or a fraction between 0 and 1 \(null: hold "
                       r"out nothing\), got -3"),
    ({"val_size": 1.5}, r"--data.init_args.val_size must be a row count ≥ 1 or a fraction between 0 and 1"),
    ({"eval_batch_size": 0}, r"--data.init_args.eval_batch_size must be ≥ 1, got 0"),
    ({"num_workers": -1}, r"--data.init_args.num_workers must be ≥ 0 \(0: batches are prepared in the main process; "
                          r"null: chosen per device\), got -1"),
    ({"columns": ["anchor", "positive", "anchor"]}, r"--data.init_args.columns names \['anchor'\] more than once"),
])
def test_out_of_range_options_name_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        PairDataModule(**kwargs)


@pytest.mark.parametrize("val_size, message", [
    (300, r"--data.init_args.val_size 300: the train split has 40 rows, so none would be left to train on; hold out "
          r"fewer \(a count below 40, or a fraction between 0 and 1\)"),
    (1.0, r"\(validation rows held out of the train split by --data.init_args.val_size\): 1 query against 1 item "
          r"to rank: with fewer than 2 of either a retrieval metric says nothing \(against one item every ranking "
          r"is right: 1.0 whatever the model\). Evaluate on more rows: raise --data.init_args.val_size \(a row count, "
          r"or a fraction between 0 and 1; 1.0 is one row\)"),
])
@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_a_held_out_set_too_big_or_too_small_is_refused(tiny_module, tmp_path, val_size, message, streaming):
    path = write_jsonl(tmp_path / "train.jsonl", qa_rows(40))
    with pytest.raises(ValueError, match=message):
        setup_dm(tiny_module, dataset=path, val_size=val_size, streaming=streaming)


def test_val_size_one_is_refused_by_train_py_and_the_flag_exists(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "train.jsonl", qa_rows(40))
    message = fails(capsys, "--config", TEXT, f"--data.init_args.dataset={path}", "--data.init_args.val_size=1.0")
    assert "1 query against 1 item to rank" in message and "raise --data.init_args.val_size" in message
    for flag in ("--data.init_args.val_size=0.25", "--data.init_args.max_eval_rows=10",
                 "--data.init_args.num_workers=0", "--data.init_args.eval_batch_size=8",
                 "--data.init_args.max_train_rows=100", "--data.init_args.data_files={train: x.jsonl}"):
        key, value = flag.removeprefix("--").split("=", 1)
        assert builds(TEXT, flag).config[key] == yaml.safe_load(value)


def test_a_small_evaluation_is_warned_about_with_its_numbers(tiny_module, tmp_path, caplog):
    path = write_jsonl(tmp_path / "train.jsonl", qa_rows(40))
    with caplog.at_level(logging.WARNING):
        setup_dm(tiny_module, dataset=path, val_size=5)
    assert ("(validation rows held out of the train split by --data.init_args.val_size): 5 queries against 5 items to "
            "rank: each query moves its metrics by 1/5; for steadier numbers raise --data.init_args.val_size") \
        in caplog.text
