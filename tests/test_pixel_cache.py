"""Preprocessed images are computed once and reused across epochs and evaluations: batches, losses, metrics and the
exported model equal recomputing them; workers share what they stored; the budget and the location are honoured."""

import logging
import os
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

import datamodules.image_captions as image_captions
import datamodules.pixel_cache as pixel_cache
from datamodules.image_captions import ImageCaptionDataModule
from datamodules.pixel_cache import PixelCache, plan_capacity
from lightning_modules.clip import CLIPEmbeddingModule
from lightning_modules.clip_backends import OpenClip, TransformersClip
from tests.commands import clip_recipe, train_args
from tests.test_tower_cache import exported, logged
from tests.tiny import TINY_HF_CLIP_CONFIG, TINY_OPEN_CLIP_CFG
from train import cli_main


def fit(tmp_path, backend, *extra, epochs=2):
    return cli_main(train_args(*clip_recipe(backend), f"--trainer.max_epochs={epochs}", "--test_after_fit=false",
                               "--model.learn_logit_scale=true", *extra, save_dir=tmp_path))


def counting_loads(monkeypatch) -> list:
    calls = []
    load = image_captions.decode

    def counted(*args, **kwargs):
        calls.append(1)
        return load(*args, **kwargs)

    monkeypatch.setattr(image_captions, "decode", counted)
    return calls


@pytest.mark.slow  # two CLIP fits (~20 s)
def test_each_image_is_preprocessed_once_and_training_equals_recomputing(tmp_path, monkeypatch):
    loads = counting_loads(monkeypatch)
    cached = fit(tmp_path / "cached", "transformers", "--data.num_workers=0")
    dm = cached.datamodule
    assert dm.pixel_offsets == {"val": 0, "train": 32} and dm.pixel_cache.stored() == 96
    # 64 training + 32 evaluation images, each decoded once (+ one to learn the shape) in 2 epochs and 4 evaluations
    assert len(loads) == 96 + 1
    loads.clear()
    recomputed = fit(tmp_path / "recomputed", "transformers", "--data.num_workers=0", "--data.preprocess_cache_gb=0")
    evaluations = 4  # Lightning's sanity check, the base model's, one per epoch
    assert recomputed.datamodule.pixel_cache is None and len(loads) == 2 * 64 + evaluations * 32
    # every loss, learning rate and metric of every step, bit for bit; and the same exported weights
    assert logged(cached) == logged(recomputed) and len(logged(cached)) > 10
    ours, theirs = exported(cached), exported(recomputed)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def prepared(tmp_path, encoder, **options) -> ImageCaptionDataModule:
    """A DataModule set up for fit with ``encoder``'s processor, its cache in ``tmp_path``."""
    dm = ImageCaptionDataModule(builtin_rows=96, image_size=32, val_size=32, batch_size=8,
                                preprocess_cache_dir=str(tmp_path), **{"num_workers": 0, **options})
    dm.connect(CLIPEmbeddingModule(encoder).data_needs())
    dm.setup("fit")
    return dm


def test_random_training_crops_are_recomputed_and_evaluation_images_cached(tmp_path):
    dm = prepared(tmp_path, OpenClip(model_cfg=TINY_OPEN_CLIP_CFG))
    assert dm.pixel_offsets == {"val": 0}  # open_clip's random resized crop: new pixels every epoch
    for batch in dm.train_dataloader():
        pass
    for batch in dm.val_dataloader()[1]:  # the image stream
        pass
    assert dm.pixel_cache.stored() == 32 and dm.pixel_cache.capacity == 32


def test_workers_fill_the_cache_for_the_main_process_and_later_epochs(tmp_path, monkeypatch):
    dm = prepared(tmp_path, TransformersClip(config=TINY_HF_CLIP_CONFIG), num_workers=2)
    first = [b["features"][0]["pixel_values"] for b in dm.train_dataloader()]
    assert dm.pixel_cache.stored() == 64  # every training image, stored by the two workers

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(image_captions, "decode", refuse)
    again = [b["features"][0]["pixel_values"]  # the same epoch again, in this process: all read from the cache
             for b in dm.train_source.dataloader(epoch=0, rank=0, world=1, options={})]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)


def test_a_locked_tower_with_its_embedding_table_needs_no_pixel_cache(tmp_path):
    dm = ImageCaptionDataModule(builtin_rows=96, image_size=32, val_size=32, batch_size=8, num_workers=0)
    # a model that caches a locked image tower looks its embeddings up
    dm.connect(CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), lock_image=True).data_needs())
    dm.setup("fit")
    assert dm.pixel_cache is None and dm.pixel_cache_parts() == []


def test_a_budget_smaller_than_the_data_caches_evaluation_images_first(tmp_path, caplog):
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG))
    one_image = 3 * 32 * 32 * 4  # float32 pixels at the tiny config's 32 px
    dm = ImageCaptionDataModule(builtin_rows=96, image_size=32, val_size=32, batch_size=8, num_workers=0,
                                preprocess_cache_gb=40 * one_image / 2**30, preprocess_cache_dir=str(tmp_path))
    dm.connect(module.data_needs())
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert dm.pixel_cache.capacity == 40
    assert "40 of 96 (val 32 + train 64" in caplog.text and "--data.init_args.preprocess_cache_gb" in caplog.text
    assert "the other 56 are preprocessed every time" in caplog.text
    assert os.listdir(tmp_path) == []  # the file is unlinked at once: the mapping lives on, nothing is left behind
    for batch in dm.val_dataloader()[1]:  # the image stream
        pass
    for batch in dm.train_dataloader():
        pass
    assert dm.pixel_cache.stored() == 40


def test_stored_pixels_reach_every_forked_worker_and_later_passes():
    cache = PixelCache(6, (2, 3), torch.float32, pixel_cache.default_directory())
    value = {"now": 1.0}

    def collate(numbers):  # pixels computed now are `now`; stored ones keep the value of the pass that stored them
        return torch.stack([cache.pixels(n, lambda: torch.full((2, 3), value["now"])) for n in numbers])

    loader = DataLoader(list(range(10)), batch_size=2, num_workers=2, collate_fn=collate)
    first = torch.cat(list(loader))
    value["now"] = 2.0
    second = torch.cat(list(loader))  # new worker processes: they find what the first pass's workers stored
    assert cache.stored() == 6 and (first == 1).all()
    assert (second[:6] == 1).all() and (second[6:] == 2).all()  # numbers 6-9 are beyond the capacity


def test_under_spawn_the_cache_travels_by_its_file_and_is_removed_at_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(pixel_cache.multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    removals = []
    monkeypatch.setattr(pixel_cache.atexit, "register", lambda f, path: removals.append((f, path)))
    cache = PixelCache(4, (3,), torch.float32, str(tmp_path))
    twin = pickle.loads(pickle.dumps(cache))
    twin.pixels(2, lambda: torch.tensor([1.0, 2.0, 3.0]))
    assert cache.stored() == 1 and torch.equal(cache.data[2], torch.tensor([1.0, 2.0, 3.0]))
    (remove, path), = removals
    remove(path)
    assert not os.path.exists(path)


def test_files_of_killed_processes_are_removed_and_others_kept(tmp_path):
    dead, alive = tmp_path / "litembed-pixels-999999999-abc.bin", tmp_path / f"litembed-pixels-{os.getpid()}-x.bin"
    dead.write_bytes(b"x"), alive.write_bytes(b"x")
    PixelCache(1, (1,), torch.float32, str(tmp_path))
    assert not dead.exists() and alive.exists()


def test_capacity_follows_the_budget_and_half_the_room_past_a_reserve(tmp_path, monkeypatch):
    assert plan_capacity(1000, 2**20, 0.5, str(tmp_path), 1) == 512
    assert plan_capacity(100, 2**20, 0.5, str(tmp_path), 1) == 100
    free = {"bytes": pixel_cache.RESERVE + 64 * 2**20}
    monkeypatch.setattr(pixel_cache.shutil, "disk_usage", lambda d: type("u", (), {"free": free["bytes"]})())
    assert plan_capacity(1000, 2**20, 0.5, str(tmp_path), 2) == 16  # 64 MiB past the reserve, half, two processes
    free["bytes"] = 64 * 2**20  # a container's /dev/shm: all of it left to the DataLoader workers
    assert plan_capacity(1000, 2**20, 0.5, str(tmp_path), 1) == 0
    assert pixel_cache.default_directory() == pixel_cache.tempfile.gettempdir()


@pytest.mark.parametrize("option, message", [
    ({"preprocess_cache_gb": -1}, "--data.init_args.preprocess_cache_gb must be ≥ 0"),
    ({"preprocess_cache_dir": "/no/such/dir"}, "--data.init_args.preprocess_cache_dir '/no/such/dir' is not a dir")])
def test_bad_cache_options_name_the_flag(option, message):
    with pytest.raises(ValueError, match=message):
        ImageCaptionDataModule(**option)
