import io
import json
import os

import datasets
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datamodules.image_captions import ImageCaptionDataModule
from lightning_modules.clip import CLIPEmbeddingModule
from lightning_modules.clip_backends import OpenClip, TransformersClip
from tests.commands import clip_recipe, train_args
from tests.tiny import TINY_HF_CLIP_CONFIG
from train import cli_main

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def fit_args(tmp_path, backend, *extra):
    return train_args(*clip_recipe(backend), "--data.batch_size=16", *extra, save_dir=tmp_path)


def test_transformers_backend_fit_and_sentence_transformers_export(tmp_path):
    from sentence_transformers import SentenceTransformer

    cli = cli_main(fit_args(tmp_path, "transformers"))
    module, dm = cli.model, cli.datamodule
    assert [s for s, _ in module.history] == [-1, 4]
    final = module.history[-1][1]
    assert {"val/eval_cosine_ndcg@10", "val/eval-image2text_cosine_ndcg@10"} <= set(final)

    st = SentenceTransformer(os.path.join(cli.trainer.log_dir, "model"), device="cpu")
    image = dm.splits["validation"][0]["image"]
    pil = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    caption = dm.splits["validation"][0]["caption"]
    module.eval()
    with torch.no_grad():
        ours_image = module.encoder.encode_image(module.processor.image_transform(pil, False)[None])
        ours_text = module.encoder.encode_text(module.processor.tokenize([caption]))
    assert F.cosine_similarity(ours_image, st.encode([pil], convert_to_tensor=True)).item() >= 0.9999
    assert F.cosine_similarity(ours_text, st.encode([caption], convert_to_tensor=True)).item() >= 0.9999


def test_open_clip_backend_fit_and_export(tmp_path):
    cli = cli_main(fit_args(tmp_path, "open_clip", "--model.learn_logit_scale=true"))
    module = cli.model
    assert module.history[-1][1]["val/eval_cosine_ndcg@10"] > 0
    assert module.encoder.logit_scale.item() <= torch.log(torch.tensor(100.0)).item()
    reloaded = OpenClip(arch=f"local-dir:{os.path.join(cli.trainer.log_dir, 'model')}").eval()
    module.eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded.encode_image(pixels), module.encoder.encode_image(pixels), atol=1e-5)


def png(colour: str, size=(20, 20), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).convert(mode).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    return buffer.getvalue()


def imagefolder(root, n_images=12, captions_per_image=3, broken=()):
    """An imagefolder split: images + metadata.jsonl, several captions per image (like COCO)."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.jsonl"), "w") as meta:
        for i in range(n_images):
            name = f"img{i}.png"
            if name not in broken:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(png(COLOURS[i % 8], size=(20 + i, 20)))
            for c in range(captions_per_image):
                meta.write(json.dumps({"file_name": name, "caption": f"caption {c} of image {i}"}) + "\n")


@pytest.fixture(scope="module")
def module():
    return CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG))


def make_dm(module, **kwargs):
    dm = ImageCaptionDataModule(**{"num_workers": 0, "batch_size": 4, **kwargs})
    dm.connect(module.data_needs())
    dm.setup("fit")
    return dm


def test_imagefolder_splits_dedup_and_both_directions(module, tmp_path):
    imagefolder(tmp_path / "train", n_images=12)
    imagefolder(tmp_path / "validation", n_images=5)
    dm = make_dm(module, dataset=str(tmp_path))
    assert len(dm.splits["train"]) == 36 and len(dm.streams["val"]["image"]) == 5
    caption_to_image, image_to_captions = dm.retrieval_tasks("val")
    assert all(len(rel) == 1 for rel in caption_to_image.relevant)  # corpus deduplicated by image
    assert all(len(rel) == 3 for rel in image_to_captions.relevant)  # every caption of the image is relevant
    batch = next(iter(dm.train_dataloader()))
    assert batch["features"][0]["pixel_values"].shape == (4, 3, 32, 32)


def test_one_image_never_twice_in_a_batch(module, tmp_path):
    imagefolder(tmp_path / "train", n_images=10, captions_per_image=5)
    dm = make_dm(module, dataset=str(tmp_path), val_split=None, batch_size=6)
    keys = dm.keys["train"]
    batches = list(dm.train_dataloader().batch_sampler)
    assert all(len({keys[i] for i in b}) == len(b) for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(50))


def test_parquet_with_image_bytes(module, tmp_path):
    rows = [{"image": {"bytes": png(COLOURS[i % 8], (16 + i, 16)), "path": None}, "caption": f"a {COLOURS[i % 8]} square {i}"}
            for i in range(20)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    path = str(tmp_path / "pairs.parquet")
    datasets.Dataset.from_list(rows, features=features).to_parquet(path)
    dm = make_dm(module, dataset=path, val_size=5)
    assert len(dm.splits["train"]) == 15 and len(dm.streams["val"]["image"]) == 5
    assert next(iter(dm.val_dataloader()[1]))["features"]["pixel_values"].shape[1:] == (3, 32, 32)


def test_bad_images_are_counted_and_named(module, tmp_path, caplog):
    imagefolder(tmp_path / "train", n_images=8, captions_per_image=1, broken=("img3.png",))
    with open(tmp_path / "train" / "img5.png", "wb") as f:
        f.write(png("red")[:40])  # truncated
    dm = make_dm(module, dataset=str(tmp_path), val_split=None)
    assert len(dm.splits["train"]) == 6
    assert "2 of 8 rows have unreadable images" in caplog.text and "img3.png" in caplog.text and "row 5" in caplog.text
    with pytest.raises(ValueError, match=r"2 of 8 rows have unreadable images(.|\n)*--data.init_args.on_bad_image skip"):
        make_dm(module, dataset=str(tmp_path), val_split=None, on_bad_image="error")


def test_odd_image_modes_are_converted(module, tmp_path):
    os.makedirs(tmp_path / "train")
    modes = {"cmyk.jpg": ("CMYK", "cyan"), "rgba.png": ("RGBA", (255, 0, 0, 128)), "grey.png": ("L", 128),
             "i16.png": ("I;16", 30000)}
    with open(tmp_path / "train" / "metadata.jsonl", "w") as meta:
        for name, (mode, colour) in modes.items():
            Image.new(mode, (12, 12), colour).save(tmp_path / "train" / name)
            meta.write(json.dumps({"file_name": name, "caption": f"a {mode} image"}) + "\n")
    dm = make_dm(module, dataset=str(tmp_path), val_split=None)
    batch = next(iter(dm.train_dataloader()))
    assert len(dm.splits["train"]) == 4 and batch["features"][0]["pixel_values"].shape == (4, 3, 32, 32)


def test_missing_caption_column_and_empty_caption(module, tmp_path):
    imagefolder(tmp_path / "train", n_images=4)
    with pytest.raises(ValueError, match=r"column\(s\) \['text'\] not found; columns found: \['image', 'caption'\]"):
        make_dm(module, dataset=str(tmp_path), val_split=None, caption_column="text")
    with open(tmp_path / "train" / "metadata.jsonl", "a") as meta:
        meta.write(json.dumps({"file_name": "img0.png", "caption": ""}) + "\n")
    with pytest.raises(ValueError, match=r"1 row has an empty or missing 'caption' \(e.g. ''\): line 13 of \S+"
                                         r"/train/metadata.jsonl.\nFill or remove .* --data.init_args.caption_column"):
        make_dm(module, dataset=str(tmp_path), val_split=None)


def test_batch_too_small():
    with pytest.raises(ValueError, match="--data.init_args.batch_size must be ≥ 2 for in-batch negatives"):
        ImageCaptionDataModule(batch_size=1)


def test_lock_text_tower_freezes_it():
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), lock_text=True)
    text = [p.requires_grad for n, p in module.encoder.model.named_parameters() if n.startswith("text_")]
    vision = [p.requires_grad for n, p in module.encoder.model.named_parameters() if n.startswith("vision_")]
    assert not any(text) and all(vision) and not module.encoder.logit_scale.requires_grad
