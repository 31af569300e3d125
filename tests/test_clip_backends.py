"""CLIP backends at tiny random init: shapes, training, tower locking, checkpointing, pickling, both export formats."""

import json
import os
import pickle

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from lightning_modules.clip_backends import OpenClip, TransformersClip, offline_clip_tokenizer
from tests.tiny import TINY_HF_CLIP_CONFIG, TINY_OPEN_CLIP_CFG

CAPTIONS = ["A man riding a wave on top of a surfboard.", "Two   DOGS play in the snow!!", "naïve café — 42 🙂",
            "it's the user's bike", "a plate of food", "A red double-decker bus", "cat", "x " * 100]
# Per backend and tower: every parameter of the tower, and what stays trainable with unlocked_layers=1.
TOWERS = {
    "transformers": {
        "text": (("model.text_model.", "model.text_projection."),
                 ("model.text_model.encoder.layers.1.", "model.text_model.final_layer_norm.",
                  "model.text_projection.")),
        "image": (("model.vision_model.", "model.visual_projection."),
                  ("model.vision_model.encoder.layers.1.", "model.vision_model.post_layernorm.",
                   "model.visual_projection.")),
    },
    "open_clip": {
        "text": (("model.token_embedding.", "model.positional_embedding", "model.transformer.", "model.ln_final.",
                  "model.text_projection"),
                 ("model.transformer.resblocks.1.", "model.ln_final.", "model.text_projection")),
        "image": (("model.visual.",),
                  ("model.visual.transformer.resblocks.1.", "model.visual.ln_post.", "model.visual.proj")),
    },
}

CHECKPOINTING = {  # whether both towers' transformer blocks recompute activations
    "transformers": lambda m: all(tower.encoder.layers[-1].gradient_checkpointing
                                  for tower in (m.text_model, m.vision_model)),
    "open_clip": lambda m: m.transformer.grad_checkpointing and m.visual.transformer.grad_checkpointing,
}


def make_backend(name: str, **kwargs):
    return TransformersClip(config=TINY_HF_CLIP_CONFIG, **kwargs) if name == "transformers" \
        else OpenClip(model_cfg=TINY_OPEN_CLIP_CFG, **kwargs)


def images(n: int = 8) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)) for i in range(n)]


def embed(backend, captions=CAPTIONS, imgs=None, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.stack([backend.image_transform(im, train=train) for im in (imgs or images(len(captions)))])
    return backend.encode_text(backend.tokenize(captions)), backend.encode_image(pixels)  # (B, D), (B, D)


def clip_loss(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T  # (B, B)
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def assert_same_direction(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert F.cosine_similarity(a.float(), b.float(), dim=-1).min() >= 0.9999


@pytest.fixture(params=["transformers", "open_clip"])
def backend_name(request) -> str:
    return request.param


def test_offline_hf_tokenizer_matches_open_clip():
    hf = offline_clip_tokenizer()(CAPTIONS, truncation=True, max_length=77)  # unpadded: one list per caption
    reference = open_clip.SimpleTokenizer()(CAPTIONS)  # (B, 77), zero-padded
    assert len(offline_clip_tokenizer()) == 49408
    for ids, ref in zip(hf["input_ids"], reference):
        assert ids == ref[: len(ids)].tolist()


def test_encode_shapes(backend_name):
    backend = make_backend(backend_name)
    for train in (True, False):
        assert backend.image_transform(images(1)[0], train=train).shape == (3, 32, 32)
    text, image = embed(backend)
    assert text.shape == image.shape == (len(CAPTIONS), backend.embedding_dim) == (8, 32)
    assert backend.logit_scale.item() == pytest.approx(np.log(1 / 0.07), abs=1e-4)


def test_training_step_updates_every_parameter(backend_name):
    torch.manual_seed(0)
    backend = make_backend(backend_name)
    before = {n: p.detach().clone() for n, p in backend.named_parameters()}
    optimizer = torch.optim.AdamW(backend.parameters(), lr=1e-3)
    clip_loss(*embed(backend, train=True), backend.logit_scale).backward()
    optimizer.step()
    unchanged = [n for n, p in backend.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged


@pytest.mark.parametrize("tower", ["text", "image"])
@pytest.mark.parametrize("unlocked_layers", [0, 1])
def test_lock_freezes_the_tower_but_its_last_layers(backend_name, tower, unlocked_layers):
    backend = make_backend(backend_name)
    everything = {n for n, _ in backend.named_parameters()}
    tower_prefixes, last_layer_prefixes = TOWERS[backend_name][tower]
    in_tower = {n for n in everything if n.startswith(tower_prefixes)}
    unlocked = {n for n in in_tower if n.startswith(last_layer_prefixes)} if unlocked_layers else set()
    getattr(backend, f"lock_{tower}")(unlocked_layers)
    assert {n for n, p in backend.named_parameters() if p.requires_grad} == everything - in_tower | unlocked
    assert "model.logit_scale" in everything - in_tower and backend.logit_scale.requires_grad
    if unlocked_layers:
        assert len(unlocked) > 3  # a whole transformer block, the final norm and the projection


def test_lock_rejects_negative_unlocked_layers(backend_name):
    with pytest.raises(ValueError, match="lock_text_unlocked_layers must be ≥ 0"):
        make_backend(backend_name).lock_text(-1)


def test_grad_checkpointing_gives_the_same_gradients(backend_name):
    torch.manual_seed(0)
    backend = make_backend(backend_name)
    backend.lock_text(1)  # frozen embeddings below checkpointed blocks must not cut the gradient
    grads = []
    for enable in (False, True):
        backend.zero_grad()
        backend.set_grad_checkpointing(enable)
        assert CHECKPOINTING[backend_name](backend.model) == enable
        clip_loss(*embed(backend), backend.logit_scale).backward()
        grads.append({n: p.grad.clone() for n, p in backend.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
    assert any(g.abs().sum() > 0 for n, g in grads[1].items() if "layers.1." in n or "resblocks.1." in n)


def test_tokenizer_and_transforms_are_picklable(backend_name):
    backend = make_backend(backend_name)
    image = images(1)[0]
    for processor in (pickle.loads(pickle.dumps(backend.processor)), pickle.loads(pickle.dumps(backend)).processor):
        for key, value in processor.tokenize(CAPTIONS).items():
            assert torch.equal(value, backend.tokenize(CAPTIONS)[key])
        assert torch.equal(processor.image_transform(image, train=False), backend.image_transform(image, train=False))
        assert processor.image_transform(image, train=True).shape == (3, 32, 32)


def test_open_clip_max_length_sets_the_context_length():
    backend = OpenClip(model_cfg=TINY_OPEN_CLIP_CFG, max_length=16)
    assert backend.tokenize(CAPTIONS)["input_ids"].shape == (8, 16)
    assert embed(backend)[0].shape == (8, 32)


@pytest.fixture(scope="module")
def hub_snapshot(tmp_path_factory) -> str:
    """A tiny CLIPModel laid out like openai/clip-vit-* on the hub: model, preprocessor_config.json, tokenizer files."""
    directory = str(tmp_path_factory.mktemp("tiny-clip-snapshot"))
    torch.manual_seed(0)
    backend = TransformersClip(config=TINY_HF_CLIP_CONFIG)
    backend.model.save_pretrained(directory)
    backend.processor.hf_processor.image_processor.save_pretrained(directory)
    backend.processor.hf_processor.tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def test_transformers_clip_loads_a_local_snapshot(hub_snapshot):
    backend = TransformersClip(model_name_or_path=hub_snapshot).eval()
    model, processor = CLIPModel.from_pretrained(hub_snapshot).eval(), CLIPProcessor.from_pretrained(hub_snapshot)
    inputs = processor(text=CAPTIONS, images=images(), padding=True, truncation=True, return_tensors="pt")
    text, image = embed(backend)
    torch.testing.assert_close(text, model.get_text_features(input_ids=inputs["input_ids"],
                                                             attention_mask=inputs["attention_mask"]).pooler_output)
    torch.testing.assert_close(image, model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output)


def test_transformers_clip_needs_a_model_source():
    with pytest.raises(ValueError, match="model_name_or_path"):
        TransformersClip()


@pytest.mark.parametrize("source", ["backend.save", "plain save_pretrained"])
@torch.no_grad()
def test_sentence_transformers_encodes_like_the_backend(tmp_path, hub_snapshot, source):
    from sentence_transformers import SentenceTransformer

    if source == "backend.save":
        torch.manual_seed(0)
        backend = TransformersClip(config=TINY_HF_CLIP_CONFIG, max_length=16).eval()  # ST must truncate alike
        directory = str(tmp_path / "export")
        backend.save(directory)
        with open(os.path.join(directory, "sentence_bert_config.json")) as f:
            assert json.load(f)["modality_config"]["image"] == {"method": "get_image_features",
                                                                "method_output_name": "pooler_output"}
        reloaded = TransformersClip(model_name_or_path=directory, max_length=16).eval()
        assert_same_direction(torch.cat(embed(reloaded)), torch.cat(embed(backend)))
    else:
        backend, directory = TransformersClip(model_name_or_path=hub_snapshot).eval(), hub_snapshot
    model = SentenceTransformer(directory, device="cpu")
    text, image = embed(backend)
    assert_same_direction(model.encode(CAPTIONS, convert_to_tensor=True), text)
    assert_same_direction(model.encode(images(), convert_to_tensor=True), image)


@torch.no_grad()
def test_open_clip_export_reloads_with_open_clip(tmp_path):
    torch.manual_seed(0)
    backend = OpenClip(model_cfg=TINY_OPEN_CLIP_CFG, max_length=32).eval()
    backend.logit_scale.fill_(3.0)  # a trained value, not the init
    backend.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["open_clip_config.json", "open_clip_model.safetensors"]
    source = f"local-dir:{tmp_path}"
    model, _, preprocess = open_clip.create_model_and_transforms(source)
    tokenizer = open_clip.get_tokenizer(source)
    model.eval()
    pixels = torch.stack([preprocess(im) for im in images()])
    assert model.logit_scale.item() == 3.0 and model.context_length == 32
    text, image = embed(backend)
    torch.testing.assert_close(model.encode_text(tokenizer(CAPTIONS)), text)
    torch.testing.assert_close(model.encode_image(pixels), image)
    torch.testing.assert_close(torch.cat(embed(OpenClip(arch=source).eval())), torch.cat([text, image]))


def test_open_clip_rejects_pretrained_with_a_custom_config():
    with pytest.raises(ValueError, match="pretrained cannot be combined"):
        OpenClip(model_cfg=TINY_OPEN_CLIP_CFG, pretrained="weights.safetensors")


@pytest.mark.slow
@torch.no_grad()
def test_open_clip_builtin_arch_reloads_from_the_weights_file(tmp_path):
    backend = OpenClip("ViT-B-32").eval()
    backend.save(str(tmp_path))
    reloaded = OpenClip("ViT-B-32", pretrained=str(tmp_path / "open_clip_model.safetensors")).eval()
    torch.testing.assert_close(torch.cat(embed(reloaded)), torch.cat(embed(backend)))
