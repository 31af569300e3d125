"""A locked image tower's embeddings are computed once and looked up: losses, metrics and the exported model equal
recomputing the tower, training batches carry image numbers instead of pixels, and no image is decoded again."""

import glob
import os

import pytest
import torch
from safetensors.torch import load_file

import datamodules.image_captions as image_captions
from datamodules.image_captions import ImageCaptionDataModule
from lightning_modules.clip import CLIPEmbeddingModule
from lightning_modules.clip_backends import TransformersClip
from tests.commands import WALL_CLOCK, clip_recipe, logged_rows, train_args
from tests.test_clip import imagefolder
from tests.tiny import TINY_HF_CLIP_CONFIG
from train import cli_main

def locked_fit(tmp_path, backend, *extra):
    return cli_main(train_args(*clip_recipe(backend), "--trainer.max_epochs=2", "--test_after_fit=false",
                               "--model.lock_image=true", "--model.learn_logit_scale=true", *extra, save_dir=tmp_path))


def logged(cli) -> list[dict]:
    # the wall-clock rate is the one column allowed to differ
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in logged_rows(cli.trainer.log_dir)]


def exported(cli) -> dict[str, torch.Tensor]:
    (path,) = glob.glob(os.path.join(cli.trainer.log_dir, "model", "*.safetensors"))
    return load_file(path)


@pytest.mark.slow  # two CLIP fits (~18 s); the open_clip case stays in the default suite
def test_hf_clip_locked_image_tower_is_embedded_once_and_equals_recomputing(tmp_path, monkeypatch):
    cached = locked_fit(tmp_path / "cached", "transformers")
    dm, module = cached.datamodule, cached.model
    assert dm.keyed_train_images and module.constant_towers == {"image"}
    # 64 distinct training images (shapes: one image per row) + 32 evaluation images, embedded once
    assert module._image_table.shape == (len(dm.train_image_rows) + len(dm.streams["val"]["image"]), 32)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["features"][0]) == {"image_index"} and "pixel_values" not in batch["features"][0]
    recomputed = locked_fit(tmp_path / "recomputed", "transformers", "--model.cache_locked_image_tower=false")
    assert not recomputed.datamodule.keyed_train_images and recomputed.model._image_table is None
    # every loss, learning rate and metric of every step, bit for bit; and the same exported weights
    assert logged(cached) == logged(recomputed) and len(logged(cached)) > 10
    ours, theirs = exported(cached), exported(recomputed)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the locked tower did not move, and stayed in eval mode while the rest trained
    assert not any(m.training for m in module.encoder.image_tower())
    assert module.encoder.model.text_model.training


def test_open_clip_random_crops_keep_training_images_computed_but_evaluation_images_cached(tmp_path):
    cached = locked_fit(tmp_path / "cached", "open_clip")
    dm, module = cached.datamodule, cached.model
    assert not dm.keyed_train_images  # a random crop is a new image every epoch: nothing to cache in training
    assert module._image_table.shape[0] == len(dm.streams["val"]["image"])
    recomputed = locked_fit(tmp_path / "recomputed", "open_clip", "--model.cache_locked_image_tower=false")
    assert logged(cached) == logged(recomputed)


def test_keyed_batches_never_decode_an_image(tmp_path, monkeypatch):
    imagefolder(tmp_path / "train", n_images=10, captions_per_image=3)
    imagefolder(tmp_path / "validation", n_images=4)
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), lock_image=True)
    dm = ImageCaptionDataModule(dataset=str(tmp_path), batch_size=4, num_workers=0)
    dm.connect(module.data_needs())  # a locked, cached image tower: constant_towers {"image"}
    dm.setup("fit")
    parts, offsets = dm.image_table()
    assert [len(p) for p in parts] == [10, 4] and offsets == {"train": 0, "val": 10}
    assert len({dm.keys["train"][r] for r in dm.train_image_rows}) == 10  # one row per distinct image

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(image_captions, "decode", refuse)
    numbers = []
    for batch in dm.train_dataloader():
        numbers += batch["features"][0]["image_index"].tolist()
    assert sorted(set(numbers)) == list(range(10)) and len(numbers) == 30  # 3 captions per image
    (image_stream,) = [loader for loader in dm.val_dataloader() if loader.collate_fn.stream == "image"]
    assert [i for b in image_stream for i in b["features"]["image_index"].tolist()] == [10, 11, 12, 13]


@pytest.mark.parametrize("kwargs", [{"lock_image": False}, {"lock_image": True, "lock_image_unlocked_layers": 1},
                                    {"lock_image": True, "cache_locked_image_tower": False}])
def test_no_cache_unless_the_whole_tower_is_locked(kwargs):
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), **kwargs)
    assert module.constant_towers == frozenset()
    assert any(m.training for m in module.encoder.image_tower()) == (not kwargs["lock_image"] or
                                                                      "lock_image_unlocked_layers" in kwargs)
