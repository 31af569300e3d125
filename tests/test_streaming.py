"""Streaming training data: HF IterableDataset read shard by shard, windowed duplicate-free batches, equal batches per
rank, bad rows skipped and reported, row caps as take(n)."""

import itertools
import json
import logging
import os

import pytest

from conftest import qa_rows, write_jsonl
from datamodules.image_captions import ImageCaptionDataModule
from datamodules.pairs import PairDataModule
from lightning_modules.clip import CLIPEmbeddingModule
from lightning_modules.clip_backends import TransformersClip
from lightning_modules.text import TextEmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from test_clip import imagefolder, png
from test_resume import command, logged
from tests.commands import NO_EXPORT, run_train
from tests.tiny import TINY_HF_CLIP_CONFIG
from train import cli_main


@pytest.fixture(scope="module")
def text_module(tiny_bert_dir):
    return TextEmbeddingModule(TextEncoder(tiny_bert_dir))


def make(cls, module, **kwargs):
    dm = cls(**{"num_workers": 0, "streaming": True, **kwargs})
    dm.connect(module.data_needs())
    dm.setup("fit")
    return dm


def rows_of(dm, loader_kwargs=None, rank=0, world=1, epoch=0):
    """The anchor texts of every batch the rank's loader yields in one epoch (tokens decoded back to text)."""
    options = {"num_workers": 0, "persistent_workers": False, "pin_memory": False, **(loader_kwargs or {})}
    loader = dm.train_source.dataloader(epoch=epoch, rank=rank, world=world, options=options)
    tokenizer = dm.processor.tokenizer
    batches = []
    for batch in loader:
        dm.on_before_batch_transfer(batch, 0)  # where the datamodule collects what the stream skipped
        batches.append([tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["features"][0]["input_ids"]])
    return batches, loader


def test_stream_yields_full_duplicate_free_batches_reshuffled_each_epoch(text_module, tmp_path):
    rows = qa_rows(60) + [{"anchor": "the same question", "positive": f"answer number {i}"} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    dm = make(PairDataModule, text_module, dataset=str(tmp_path), val_split=None, batch_size=8)
    assert dm.equal_batch_sizes and "train" not in dm.splits  # nothing read before training
    first, loader = rows_of(dm)
    assert len(loader) == len(first) == 80 // 8
    for batch in first:
        assert len(batch) == 8 and len(set(batch)) == 8  # "the same question" at most once per batch
    second, _ = rows_of(dm, epoch=1)
    assert first != second


def test_ranks_read_their_own_shards_and_yield_the_same_number_of_batches(text_module, tmp_path):
    # three files = three shards for two ranks: HF falls back to every rank keeping every other row
    for i in range(3):
        write_jsonl(tmp_path / f"train-{i:05d}-of-00003.jsonl", qa_rows(30, offset=100 * i))
    dm = make(PairDataModule, text_module, dataset=str(tmp_path), val_split=None, batch_size=4)
    per_rank = [rows_of(dm, rank=r, world=2)[0] for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 90 // (4 * 2)
    seen = [{text for batch in batches for text in batch} for batches in per_rank]
    assert not seen[0] & seen[1]  # no row is read by both ranks


def test_workers_share_the_epoch_and_each_uses_its_own_shard(text_module, tmp_path):
    for i in range(2):
        write_jsonl(tmp_path / f"train-{i:05d}-of-00002.jsonl", qa_rows(40, offset=100 * i))
    dm = make(PairDataModule, text_module, dataset=str(tmp_path), val_split=None, batch_size=8)
    batches, loader = rows_of(dm, {"num_workers": 2, "persistent_workers": True})
    assert len(batches) == len(loader) == 10
    texts = [text for batch in batches for text in batch]
    assert len(set(texts)) == len(texts)  # the two workers read different files
    again, _ = rows_of(dm, {"num_workers": 4, "persistent_workers": True})  # more workers than shards: capped
    assert len(again) == 10


def test_two_persistent_workers_serve_the_same_epochs_run_after_run(text_module, tmp_path):
    """Each epoch's batches are a function of the seed alone, whatever the workers' timing. HF's ``set_epoch`` adds
    to an epoch counter that forked workers share: two workers setting epoch 1 at once could read 2000. Setting it
    from the workers failed this test in 5 of 6 runs (the second loop already differed)."""
    for i in range(2):
        write_jsonl(tmp_path / f"train-{i:05d}-of-00002.jsonl", qa_rows(40, offset=100 * i))

    def epochs(count: int = 6) -> list[list[list[list[int]]]]:
        dm = make(PairDataModule, text_module, dataset=str(tmp_path), val_split=None, batch_size=8, shuffle_buffer=20)
        options = {"num_workers": 2, "persistent_workers": True, "pin_memory": False}
        loader = dm.train_source.dataloader(epoch=0, rank=0, world=1, options=options)
        # as Lightning does: a fresh iterator per epoch, left after len(loader) batches without being exhausted
        return [[batch["features"][0]["input_ids"].tolist() for batch in itertools.islice(loader, len(loader))]
                for _ in range(count)]

    first = epochs()
    assert all(len(epoch) == 10 for epoch in first) and first[0] != first[1]  # reshuffled every epoch
    for run in range(4):
        assert epochs() == first, f"run {run + 2}"


def test_max_train_rows_takes_the_first_rows(text_module, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(100))
    dm = make(PairDataModule, text_module, dataset=str(tmp_path), val_split=None, batch_size=8, max_train_rows=40)
    batches, loader = rows_of(dm)
    assert len(loader) == 5
    numbers = {int(text.split()[-1].rstrip("?")) for batch in batches for text in batch}
    assert numbers <= set(range(40))


def test_validation_held_out_from_the_stream_start(text_module, tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", qa_rows(50))
    dm = make(PairDataModule, text_module, dataset=str(tmp_path / "pairs.jsonl"), val_size=10, batch_size=8)
    assert len(dm.streams["val"]["query"]) == 10 and len(dm.train_source.dataloader(
        epoch=0, rank=0, world=1, options={"num_workers": 0, "persistent_workers": False, "pin_memory": False})) == 5
    batches, _ = rows_of(dm)
    held_out = set(dm.streams["val"]["query"])
    assert not held_out & {text for batch in batches for text in batch}
    with pytest.raises(ValueError, match="--data.init_args.val_size must be a row count with streaming"):
        PairDataModule(streaming=True, val_size=0.1)


def test_unknown_length_needs_a_row_cap_or_max_steps(text_module, tmp_path, monkeypatch):
    # a hub dataset without row counts in its metadata (local files are counted when they are read at start-up)
    monkeypatch.setattr("datamodules.base.count_rows", lambda *args, **kwargs: None)
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, qa_rows(30))
    with pytest.raises(ValueError, match=r"set --data.init_args.max_train_rows \(rows per epoch\) or --trainer.max_steps "
                                         r"\(the run is then one epoch of that many optimizer steps, validated at its end\)"):
        make(PairDataModule, text_module, dataset=str(path), val_split=None, batch_size=8)


@pytest.mark.slow  # a whole process (~16 s)
def test_unknown_length_with_max_steps_validates_the_weights_it_exports(tiny_bert_dir, tmp_path):
    """The refusal's advice typed back: the run is one epoch of max_steps optimizer steps (here of 2 batches each),
    so it validates at the end of that epoch and exports the validated weights. An endless epoch was never
    validated: the model was exported after the base-model row alone."""
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", qa_rows(96)), ("validation", qa_rows(16, 1000)), ("test", qa_rows(16, 2000))):
        write_jsonl(data / f"{split}.json", rows)  # JSON lines in .json files: no row count without reading them
    run_train(command(tiny_bert_dir, str(data), tmp_path, "--data.streaming=true", "--trainer.max_steps=3",
                      "--trainer.accumulate_grad_batches=2"))
    run_dir = tmp_path / "run" / "version_0"
    rows = logged(str(run_dir))
    trained = [row for row in rows if row.get("train/loss")]
    validated = [row for row in rows if row.get("val/dim_32_cosine_ndcg@10")]
    assert {row["epoch"] for row in trained} == {"0"}  # one epoch: 6 batches, 3 optimizer steps
    assert [row["step"] for row in validated] == [trained[-1]["step"]]  # the trained weights, at the last step
    report = json.loads((run_dir / "report.json").read_text())
    assert [int(row["step"]) for row in validated] == [report["exported_step"]] == [3]  # the card shows it
    assert os.path.exists(run_dir / "model" / "model.safetensors")


def test_bad_rows_are_skipped_counted_and_reported(text_module, tmp_path, caplog):
    rows = qa_rows(40)
    rows[7]["positive"] = "  "
    rows[21]["anchor"] = None
    write_jsonl(tmp_path / "train.jsonl", rows)
    dm = make(PairDataModule, text_module, dataset=str(tmp_path), val_split=None, batch_size=8)
    batches, _ = rows_of(dm)
    assert len(batches) == 40 // 8  # the epoch keeps its length: the stream is read again to fill it
    report = dm._epoch_report
    assert report.skipped >= 2 and report.repeated_passes == 1
    with caplog.at_level(logging.WARNING):
        dm.report_epoch(0)
    assert "training row(s) skipped" in caplog.text and "column 'positive' has an empty or non-text value ('  ')" in caplog.text
    assert "case 7?" in caplog.text  # the row is named by its other values


def test_a_fit_reports_the_rows_its_stream_skipped_at_the_end_of_the_epoch(tiny_bert_dir, tmp_path, caplog):
    """The report a fit makes (``callbacks.data_report``), not only the datamodule's count."""
    rows = qa_rows(41)  # 5 batches of 8 from the 40 good rows: the stream is read once
    rows[3]["positive"] = "  "
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", qa_rows(16, 1000))
    with caplog.at_level(logging.WARNING):
        cli_main(command(tiny_bert_dir, str(tmp_path), tmp_path / "runs", "--data.streaming=true",
                         "--data.batch_size=8", "--trainer.max_epochs=1", "--data.test_split=null",
                         "--model.evaluate_before_training=false", NO_EXPORT))
    assert caplog.text.count("training row(s) skipped") == 1
    assert "epoch 0, rank 0: 1 training row(s) skipped, e.g.:" in caplog.text
    assert f"{tmp_path} (train stream): column 'positive' has an empty or non-text value ('  ') in the row " \
           f"{{'anchor': 'How do I handle sending mail case 3?'}}" in caplog.text


def test_imagefolder_stream_skips_unreadable_images_or_refuses_them(tmp_path, caplog):
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG))
    imagefolder(tmp_path / "train", n_images=12, captions_per_image=2)
    with open(tmp_path / "train" / "img5.png", "wb") as f:
        f.write(png("red")[:40])  # truncated
    dm = make(ImageCaptionDataModule, module, dataset=str(tmp_path), val_split=None, batch_size=4)
    options = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    loader = dm.train_source.dataloader(epoch=0, rank=0, world=1, options=options)
    assert len(loader) == 24 // 4
    for batch in loader:
        dm.on_before_batch_transfer(batch, 0)
        assert batch["features"][0]["pixel_values"].shape == (4, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        dm.report_epoch(0)
    assert "img5.png" in caplog.text and "not an image format PIL can read" in caplog.text
    dm = make(ImageCaptionDataModule, module, dataset=str(tmp_path), val_split=None, batch_size=4, on_bad_image="error")
    with pytest.raises(ValueError, match=r"img5.png(.|\n)*--data.init_args.on_bad_image skip"):
        list(dm.train_source.dataloader(epoch=0, rank=0, world=1, options=options))


def test_stream_never_puts_one_image_twice_in_a_batch(tmp_path):
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG))
    imagefolder(tmp_path / "train", n_images=10, captions_per_image=5)
    dm = make(ImageCaptionDataModule, module, dataset=str(tmp_path), val_split=None, batch_size=5)
    rows = []
    dm.train_source.collate = lambda batch: {"rows": batch}
    options = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    for batch in dm.train_source.dataloader(epoch=0, rank=0, world=1, options=options):
        paths = [r["image"]["path"] for r in batch["rows"]]
        assert len(set(paths)) == len(paths) == 5
        rows += batch["rows"]
    assert len(rows) == 50 - 50 % 5


def test_corpus_from_train_cannot_stream():
    with pytest.raises(ValueError, match="corpus_from_train .* cannot be combined with --data.init_args.streaming true"):
        PairDataModule(streaming=True, corpus_from_train=True)


def test_streamed_eval_splits_are_capped(text_module, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(40))
    write_jsonl(tmp_path / "validation.jsonl", qa_rows(30, offset=500))
    dm = make(PairDataModule, text_module, dataset=str(tmp_path), batch_size=8, max_eval_rows=12)
    assert len(dm.streams["val"]["query"]) == 12 and dm.streams["val"]["query"][0].endswith("case 500?")


def test_parquet_streams_in_small_batches_through_a_buffered_reader(tmp_path):
    """A parquet row group of ~100 MB (datasets' default) is not decoded whole per Arrow batch, nor pre-buffered."""
    import datasets

    from datamodules.loading import STREAM_JSON_CHUNK, STREAM_PARQUET_ROWS, load_splits, stream_read_options

    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list(qa_rows(300)).to_parquet(str(tmp_path / "pq" / "train.parquet"))  # one row group
    write_jsonl(tmp_path / "train.jsonl", qa_rows(3))
    for source in (str(tmp_path / "pq"), str(tmp_path / "pq" / "train.parquet")):
        options = stream_read_options(source, None)
        assert options["batch_size"] == STREAM_PARQUET_ROWS
        scan = options["fragment_scan_options"]
        assert scan.use_buffered_stream and not scan.pre_buffer
    # JSON lines in chunks of 1 MB (HF infers the columns from the first chunk, parsing it line by line in Python)
    assert stream_read_options(str(tmp_path / "train.jsonl"), None) == {"chunksize": STREAM_JSON_CHUNK}
    json_stream = load_splits(str(tmp_path / "train.jsonl"), {}, streaming=True)["train"]
    assert [row["anchor"] for row in json_stream] == [r["anchor"] for r in qa_rows(3)]
    stream = load_splits(str(tmp_path / "pq"), {}, streaming=True)["train"]
    tables = list(stream.iter(batch_size=1000))  # HF re-batches; the rows are all there, in order
    assert [row for t in tables for row in t["anchor"]] == [r["anchor"] for r in qa_rows(300)]
