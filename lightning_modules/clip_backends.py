"""CLIP dual encoders behind one interface: HF transformers ``CLIPModel`` or open_clip, each exporting its own format.

Every backend pairs the model with a processor (tokenizer + image transforms) that holds no weights, so DataLoader
workers can receive ``backend.processor`` without a copy of the model.
"""

import gzip
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from copy import deepcopy

import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from lightning_modules.hub import ENCODER_FLAGS as FLAG, loading
from lightning_modules.lora import LoRA, add_lora, exportable, summary, tower_targets

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def offline_clip_tokenizer() -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer as a transformers ``CLIPTokenizer``, built offline from the BPE file open_clip ships.

    The vocabulary is open_clip's ``SimpleTokenizer`` order: 256 byte characters, the same with ``</w>``, the 48,894
    merges joined, then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 ids, identical to open_clip's).
    """
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges), "<|startoftext|>",
             "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:  # vocab.json + merges.txt load in every transformers release
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump({token: i for i, token in enumerate(vocab)}, f)
        with open(os.path.join(tmp, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


class HFClipProcessor:
    """Tokenizer + image processor of a HF CLIP model, called the way sentence-transformers calls them.

    Training images get the same deterministic resize + centre crop as evaluation, as in sentence-transformers.
    """

    random_train_transform = False  # an image's pixels are the same every epoch
    takes_tensors = True  # (3, H, W) uint8 images give the same pixels as PIL images: JPEGs skip PIL's decoder

    def __init__(self, hf_processor: CLIPProcessor, max_length: int) -> None:
        self.hf_processor = hf_processor
        self.max_length = max_length

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return dict(self.hf_processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                                return_tensors="pt"))

    def image_transform(self, image: Image.Image | Tensor, train: bool) -> Tensor:
        return self.hf_processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]  # (3, H, W)


class OpenClipProcessor:
    """open_clip's tokenizer (fixed-length ids, pad 0) and its train (random resized crop) / val transforms."""

    random_train_transform = True  # a new crop of an image every epoch

    def __init__(self, tokenizer: Callable[[list[str]], Tensor], train_transform: Callable[[Image.Image], Tensor],
                 val_transform: Callable[[Image.Image], Tensor]) -> None:
        self.tokenizer, self.train_transform, self.val_transform = tokenizer, train_transform, val_transform

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return {"input_ids": self.tokenizer(texts)}  # (B, context_length)

    def image_transform(self, image: Image.Image, train: bool) -> Tensor:
        return (self.train_transform if train else self.val_transform)(image)  # (3, H, W)


class ClipBackend(nn.Module, ABC):
    """A CLIP dual encoder: raw (un-normalised) projected text and image embeddings, tower locking and export.

    ``logit_scale`` (init log(1/0.07)) belongs to the model and is exported with it; whether it trains and its clamp
    to log(100) are the LightningModule's business.
    """

    processor: HFClipProcessor | OpenClipProcessor
    embedding_dim: int
    logit_scale: nn.Parameter
    name: str | None  # the model as the user named it; None: random init

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.processor.tokenize(texts)

    @property
    def adapter_summary(self) -> str | None:
        """The LoRA adapters and the parameters they train (console and card); None for full fine-tuning."""
        return summary(self.model)

    def image_transform(self, image: Image.Image, train: bool) -> Tensor:
        return self.processor.image_transform(image, train)

    @abstractmethod
    def encode_text(self, features: dict[str, Tensor]) -> Tensor:
        """Tokenised captions → (B, D) projected, un-normalised text embeddings."""

    @abstractmethod
    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) pixels → (B, D) projected, un-normalised image embeddings."""

    def lock_text(self, unlocked_layers: int = 0) -> None:
        """Freeze the text tower but its last ``unlocked_layers`` transformer layers (+ final norm and projection)."""
        self._lock("text", _check_unlocked(unlocked_layers, "text"))

    def lock_image(self, unlocked_layers: int = 0) -> None:
        """Freeze the image tower but its last ``unlocked_layers`` transformer layers (+ final norm, projection)."""
        self._lock("image", _check_unlocked(unlocked_layers, "image"))

    @abstractmethod
    def image_tower(self) -> list[nn.Module]:
        """The modules ``encode_image`` runs (vision transformer and projection)."""

    @abstractmethod
    def _lock(self, tower: str, unlocked_layers: int) -> None:
        """Freeze ``tower`` ("text" or "image") but its last ``unlocked_layers`` blocks, final norm and projection."""

    @abstractmethod
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer-block activations in the backward pass of both towers."""

    @abstractmethod
    def save(self, directory: str) -> None:
        """Export the model in the format its library loads."""


def _check_unlocked(unlocked_layers: int, tower: str) -> int:
    if unlocked_layers < 0:
        raise ValueError(f"--model.init_args.lock_{tower}_unlocked_layers must be ≥ 0, got {unlocked_layers}")
    return unlocked_layers


class TransformersClip(ClipBackend):
    """HF transformers ``CLIPModel``; ``save`` writes a directory that ``SentenceTransformer(directory)`` loads.

    Args:
        model_name_or_path: hub name (e.g. ``openai/clip-vit-large-patch14``) or local directory holding the
            ``CLIPModel`` and its processor files. Leave unset and pass ``config`` for a randomly initialised model.
        config: ``CLIPConfig`` kwargs with ``text_config`` and ``vision_config`` dicts (e.g.
            ``tests.tiny.TINY_HF_CLIP_CONFIG``), for random init with OpenAI's tokenizer (built offline) and a CLIP
            image processor sized to the vision config; ignored when ``model_name_or_path`` is set.
        max_length: tokens kept per caption (capped at the text model's ``max_position_embeddings``).
        lora: train LoRA adapters (``lightning_modules.lora.LoRA``) in ``lora_towers`` instead of every weight;
            target modules default to each tower's attention query and value projections (``["all-linear"]``: every
            linear layer of the towers). The export merges them.
        lora_towers: ``text``, ``image`` or both.
    """

    def __init__(self, model_name_or_path: str | None = None, config: dict | None = None, max_length: int = 77,
                 lora: LoRA | None = None, lora_towers: list[str] = ["text", "image"]) -> None:
        super().__init__()
        self.name = model_name_or_path
        if model_name_or_path is not None:
            with loading(f"{FLAG}.model_name_or_path", model_name_or_path):
                # fp32 master weights whatever the checkpoint's dtype; mixed precision is the Trainer's job.
                self.model = CLIPModel.from_pretrained(model_name_or_path).float()
                processor = CLIPProcessor.from_pretrained(model_name_or_path)
        elif config is not None:
            self.model = CLIPModel(CLIPConfig(**deepcopy(config)))
            size = self.model.config.vision_config.image_size
            processor = CLIPProcessor(tokenizer=offline_clip_tokenizer(), image_processor=CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}))
        else:
            raise ValueError(f"set {FLAG}.model_name_or_path (hub name or local directory) or {FLAG}.config "
                             f"(random init)")
        max_length = min(max_length, self.model.config.text_config.max_position_embeddings)
        processor.tokenizer.model_max_length = max_length  # saved with it: sentence-transformers truncates alike
        self.processor = HFClipProcessor(processor, max_length)
        self.embedding_dim = self.model.config.projection_dim
        if lora is not None:
            self.model = add_lora(self.model, lora, f"{FLAG}.lora", tower_targets(
                lora, list(lora_towers), {"text": "text_model", "image": "vision_model"}, ["q_proj", "v_proj"],
                ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"], f"{FLAG}.lora_towers"))

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def encode_text(self, features: dict[str, Tensor]) -> Tensor:
        out = self.model.get_text_features(input_ids=features["input_ids"],
                                           attention_mask=features.get("attention_mask"))
        return out if isinstance(out, Tensor) else out.pooler_output  # (B, D); transformers 5 returns an output object

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, Tensor) else out.pooler_output  # (B, D)

    def image_tower(self) -> list[nn.Module]:
        return [self.model.vision_model, self.model.visual_projection]

    def _lock(self, tower: str, unlocked_layers: int) -> None:
        m = self.model
        body, final_norm, projection = (
            (m.text_model, m.text_model.final_layer_norm, m.text_projection) if tower == "text"
            else (m.vision_model, m.vision_model.post_layernorm, m.visual_projection))
        body.requires_grad_(False)
        projection.requires_grad_(False)
        if unlocked_layers > 0:
            for module in [*body.encoder.layers[-unlocked_layers:], final_norm, projection]:
                module.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*; 4.x has only the old names.
        if enable:  # non-reentrant: a frozen (locked) embedding layer would otherwise cut the gradient
            (getattr(self.model, "activation_checkpointing_enable", None)
             or self.model.gradient_checkpointing_enable)({"use_reentrant": False})
        else:
            (getattr(self.model, "activation_checkpointing_disable", None)
             or self.model.gradient_checkpointing_disable)()

    def save(self, directory: str) -> None:
        """Write ``CLIPModel`` + processor files and sentence-transformers' module files (one multimodal Transformer).

        ``SentenceTransformer(directory)`` encodes captions with ``get_text_features`` and images with
        ``get_image_features``, exactly as this backend; ``CLIPModel.from_pretrained(directory)`` loads it too.
        """
        os.makedirs(directory, exist_ok=True)
        model = exportable(self.model)
        model.save_pretrained(directory)
        self.processor.hf_processor.save_pretrained(directory)
        with torch.no_grad():  # what get_*_features returns decides where sentence-transformers finds the embedding
            probe = model.get_text_features(input_ids=torch.zeros(1, 1, dtype=torch.long,
                                                                  device=self.logit_scale.device))
        method_output_name = None if isinstance(probe, Tensor) else "pooler_output"
        files = {
            # The module path every release reads (6.x aliases it to sentence_transformers.base.modules.transformer).
            "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}],
            "sentence_bert_config.json": {
                "transformer_task": "feature-extraction",
                "modality_config": {
                    "text": {"method": "get_text_features", "method_output_name": method_output_name},
                    "image": {"method": "get_image_features", "method_output_name": method_output_name},
                },
                "module_output_name": "sentence_embedding",
            },
            "config_sentence_transformers.json": {
                "__version__": {"pytorch": torch.__version__},
                "model_type": "SentenceTransformer",
                "prompts": {"query": "", "document": ""},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        }
        for name, content in files.items():
            with open(os.path.join(directory, name), "w") as f:
                json.dump(content, f, indent=2)


class OpenClip(ClipBackend):
    """An open_clip model; ``save`` writes open_clip's own directory format.

    Args:
        arch: open_clip model name (``ViT-B-32``, ``ViT-L-14``, …; see ``open_clip.list_models()``), or a directory
            that ``save`` wrote, as ``local-dir:/path/to/dir`` (config + weights; ``pretrained`` is ignored), or
            ``hf-hub:org/repo``.
        pretrained: open_clip pretrained tag (e.g. ``openai``, ``laion2b_s34b_b79k``; downloads) or a local weights
            file (``.safetensors``/``.bin``/``.pt``). None: random init.
        model_cfg: a custom architecture (``{"embed_dim": …, "vision_cfg": {…}, "text_cfg": {…}}``, e.g.
            ``tests.tiny.TINY_OPEN_CLIP_CFG``) at random init, instead of ``arch``.
        max_length: text context length; None keeps the model's (77 for OpenAI CLIP). Changing it resizes the
            text positional embedding.
        lora: train LoRA adapters (``lightning_modules.lora.LoRA``) in ``lora_towers``; target modules default to the
            residual blocks' MLP (``c_fc``, ``c_proj``); ``attn`` adapts the attention (one ``nn.MultiheadAttention``,
            which peft adapts as a whole). The export merges them.
        lora_towers: ``text``, ``image`` or both.
    """

    def __init__(self, arch: str = "ViT-B-32", pretrained: str | None = None, model_cfg: dict | None = None,
                 max_length: int | None = None, lora: LoRA | None = None,
                 lora_towers: list[str] = ["text", "image"]) -> None:
        super().__init__()
        # open_clip names a pretrained model by architecture and tag (hf-hub: ids are hub models as they are)
        self.name = (arch if arch.startswith("hf-hub:") else None if model_cfg is not None or pretrained is None
                     else f"{arch} ({pretrained})")
        if model_cfg is not None and pretrained is not None:
            raise ValueError(f"{FLAG}.pretrained cannot be combined with {FLAG}.model_cfg: to load a saved custom "
                             f"model pass {FLAG}.arch local-dir:<directory written by save()>")
        with tempfile.TemporaryDirectory() as tmp:
            if model_cfg is not None:  # open_clip builds custom architectures from a directory's open_clip_config.json
                with open(os.path.join(tmp, OPEN_CLIP_CONFIG), "w") as f:
                    json.dump({"model_cfg": model_cfg}, f)
                arch = f"local-dir:{tmp}"
            # an hf-hub: arch or a pretrained tag downloads; open_clip reports a failure as RuntimeError or OSError
            download = ("arch", arch) if arch.startswith("hf-hub:") else ("pretrained", pretrained)
            with loading(f"{FLAG}.{download[0]}", download[1], (RuntimeError, OSError)):
                self.model_cfg = deepcopy(model_cfg) if model_cfg is not None else open_clip.get_model_config(arch)
                self.model, train_transform, val_transform = open_clip.create_model_and_transforms(
                    arch, pretrained=pretrained, force_context_length=max_length)
            context_length = open_clip.get_model_tokenize_cfg(self.model)["context_length"]
            tokenizer = open_clip.get_tokenizer(arch, context_length=context_length)
        self.model_cfg["text_cfg"]["context_length"] = context_length
        self.processor = OpenClipProcessor(tokenizer, train_transform, val_transform)
        self.embedding_dim = self.model_cfg["embed_dim"]
        if lora is not None:
            names = lora.target_modules or []
            if any(n in ("in_proj", "out_proj", "in_proj_weight") for n in names):
                raise ValueError(f"{FLAG}.lora.target_modules {names}: open_clip's attention is one "
                                 f"nn.MultiheadAttention whose projections never run as layers, so adapters on them "
                                 f"would not train; name attn (peft adapts the whole attention) or the MLP's c_fc "
                                 f"and c_proj (the default)")
            self.model = add_lora(self.model, lora, f"{FLAG}.lora", tower_targets(
                lora, list(lora_towers), {"text": "transformer", "image": "visual.transformer"}, ["c_fc", "c_proj"],
                ["attn", "c_fc", "c_proj"], f"{FLAG}.lora_towers"))

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def encode_text(self, features: dict[str, Tensor]) -> Tensor:
        return self.model.encode_text(features["input_ids"])  # (B, D)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values)  # (B, D)

    def image_tower(self) -> list[nn.Module]:
        return [self.model.visual]

    def _lock(self, tower: str, unlocked_layers: int) -> None:
        # open_clip counts groups: the projection alone is the last group, last block + final norm the one before it.
        groups = unlocked_layers + 1 if unlocked_layers else 0
        if tower == "text":
            self.model.lock_text_tower(groups)
        else:
            self.model.lock_image_tower(groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def save(self, directory: str) -> None:
        """Write ``open_clip_model.safetensors`` + ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``).

        Reload with ``open_clip.create_model_and_transforms("local-dir:<directory>")`` and
        ``open_clip.get_tokenizer("local-dir:<directory>")`` (any architecture), with
        ``create_model_and_transforms(arch, pretrained="<directory>/open_clip_model.safetensors")`` for a built-in
        ``arch``, or here with ``OpenClip(arch="local-dir:<directory>")``.
        """
        os.makedirs(directory, exist_ok=True)
        model = exportable(self.model)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(directory, OPEN_CLIP_WEIGHTS))
        with open(os.path.join(directory, OPEN_CLIP_CONFIG), "w") as f:
            json.dump({"model_cfg": self.model_cfg,
                       "preprocess_cfg": open_clip.get_model_preprocess_cfg(model)}, f, indent=2)
