"""`train.py predict` writes each evaluation stream's embeddings (row i for item i) and what each item is, and says where:
the embeddings of a checkpoint, equal to the module's own ``embed`` of the items, each item once (under DDP too)."""

import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import write_pairs_dir
from datamodules.images import load_image
from tests.commands import clip_recipe, run_train, text_recipe, train_args
from train import cli_main


def text_args(model_dir, data_dir):
    return [*text_recipe(model_dir, data_dir), "--model.encoder.max_length=64", "--data.eval_batch_size=7"]


def clip_args():
    return [*clip_recipe(), "--data.builtin_rows=48", "--data.val_size=17", "--data.eval_batch_size=5"]


def fit_checkpoint(tmp_path, model_data_args):
    """A few optimizer steps, then the module's weights saved as a checkpoint."""
    cli = cli_main(train_args(*model_data_args, "--trainer.max_steps=3", "--test_after_fit=false",
                              "--model.evaluate_before_training=false", "--export.dirpath=null", "--model.lr=1e-3",
                              save_dir=tmp_path / "fit"))
    path = str(tmp_path / "fit.ckpt")
    cli.trainer.save_checkpoint(path)
    return cli.model.eval(), path


def predict_args(model_data_args, save_dir, *extra) -> list[str]:
    return train_args(*model_data_args, *extra, save_dir=save_dir, subcommand="predict")


def written(directory, stream):
    return np.load(os.path.join(directory, f"{stream}.npy")), pq.read_table(os.path.join(directory, f"{stream}.parquet"))


@pytest.fixture(scope="module")
def odd_pairs(tmp_path_factory) -> str:
    """Streams of 21 items: two ranks embed 11 each, one item twice."""
    return write_pairs_dir(tmp_path_factory.mktemp("odd-pairs"), train=32, validation=8, test=21)


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory, tiny_bert_dir, odd_pairs):
    """The module (in eval mode) and the checkpoint of a few steps on ``odd_pairs``: what the tests predict with."""
    return fit_checkpoint(tmp_path_factory.mktemp("text-fit"), text_args(tiny_bert_dir, odd_pairs))


def test_predict_writes_the_checkpoints_embeddings_of_every_item(tmp_path, tiny_bert_dir, odd_pairs, text_checkpoint,
                                                                 capsys):
    module, ckpt = text_checkpoint
    capsys.readouterr()
    cli = cli_main(predict_args(text_args(tiny_bert_dir, odd_pairs), tmp_path / "predict", f"--ckpt_path={ckpt}"))
    directory = os.path.join(cli.trainer.log_dir, "predictions")
    out = capsys.readouterr().out
    streams = cli.datamodule.streams["test"]
    for stream, role in (("query", "query"), ("corpus", "document")):
        embeddings, items = written(directory, stream)
        texts = streams[stream]
        assert embeddings.dtype == np.float32 and embeddings.shape == (len(texts), 32)
        assert items.column("id").to_pylist() == list(range(len(texts)))
        assert items.column("text").to_pylist() == texts  # row i is item i, each item once
        with torch.no_grad():
            expected = module.embed(module.processor(texts, role)).numpy()
        np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=0)
        assert (f"Wrote {len(texts)} embeddings of dim 32 for stream {stream!r} to "
                f"{os.path.join(directory, f'{stream}.npy')}") in out.splitlines()


def test_predict_output_dir_from_the_command_line(tmp_path, tiny_bert_dir, pairs_dir):
    cli = cli_main(predict_args(text_args(tiny_bert_dir, pairs_dir), tmp_path,
                                "--trainer.callbacks=callbacks.prediction_writer.PredictionWriter",
                                f"--trainer.callbacks.output_dir={tmp_path / 'out'}"))
    assert sum(type(c).__name__ == "PredictionWriter" for c in cli.trainer.callbacks) == 1  # it replaces the default
    assert sorted(os.listdir(tmp_path / "out")) == ["corpus.npy", "corpus.parquet", "query.npy", "query.parquet"]


def test_clip_predict_writes_captions_and_images(tmp_path, capsys):
    module, ckpt = fit_checkpoint(tmp_path, clip_args())
    cli = cli_main(predict_args(clip_args(), tmp_path / "predict", f"--ckpt_path={ckpt}"))
    directory = os.path.join(cli.trainer.log_dir, "predictions")
    dm = cli.datamodule
    captions, images = dm.streams["val"]["caption"], dm.streams["val"]["image"]
    embeddings, items = written(directory, "caption")
    assert items.column("text").to_pylist() == captions
    with torch.no_grad():
        expected = module.embed(module.processor.tokenize(captions))
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-5, rtol=0)

    embeddings, items = written(directory, "image")
    assert items.column_names == ["id", "file", "image_key", "row"]
    assert items.column("image_key").to_pylist() == list(dict.fromkeys(dm.keys["validation"]))
    rows = dm.splits["validation"]["__row__"]
    assert [rows.index(r) for r in items.column("row").to_pylist()] == [
        dm.keys["validation"].index(k) for k in items.column("image_key").to_pylist()]  # each image's first row
    pixels = torch.stack([module.processor.image_transform(load_image(v, where="test"), False) for v in images])
    with torch.no_grad():
        expected = module.embed({"pixel_values": pixels})
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-5, rtol=0)
    assert f"Wrote {len(images)} embeddings of dim" in capsys.readouterr().out


@pytest.mark.slow  # 2 gloo processes (~18 s)
def test_predict_with_two_processes_writes_each_item_once(tmp_path, tiny_bert_dir, odd_pairs, text_checkpoint):
    """Two gloo ranks embed 11 of the 21 items each (rank 1 repeats item 0): the files equal one process's."""
    _, ckpt = text_checkpoint
    one = cli_main(predict_args(text_args(tiny_bert_dir, odd_pairs), tmp_path / "one", f"--ckpt_path={ckpt}"))
    run = run_train(predict_args(text_args(tiny_bert_dir, odd_pairs), tmp_path / "ddp", "--trainer.devices=2",
                                 "--trainer.strategy=ddp", f"--ckpt_path={ckpt}"))
    (directory,) = glob.glob(str(tmp_path / "ddp" / "**" / "predictions"), recursive=True)
    assert run.stdout.count("Wrote 21 embeddings of dim 32") == 2  # rank 0 alone: one line per stream
    for stream in ("query", "corpus"):
        embeddings, items = written(directory, stream)
        reference, reference_items = written(os.path.join(one.trainer.log_dir, "predictions"), stream)
        assert items.equals(reference_items)
        np.testing.assert_allclose(embeddings, reference, atol=1e-5, rtol=0)
