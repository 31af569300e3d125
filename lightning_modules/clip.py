"""Fine-tune a CLIP dual encoder (HF transformers or open_clip) on image–caption pairs with in-batch negatives."""

import math

import torch
from torch import Tensor, nn

from lightning_modules.base import EmbeddingModule
from lightning_modules.clip_backends import ClipBackend
from losses import MultipleNegativesRankingLoss

MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learnable temperature so logits stay ≤ 100


class CLIPEmbeddingModule(EmbeddingModule):
    """A CLIP model trained like sentence-transformers trains it: the loss sees one embedding per data column.

    Args:
        encoder: the CLIP backend, e.g. ``lightning_modules.clip_backends.TransformersClip`` (HF ``CLIPModel``; the
            seed recipe) or ``lightning_modules.clip_backends.OpenClip``.
        learn_logit_scale: train the model's logit scale (init log(1/0.07), clamped to log(100)) and pass it to the
            loss as ``scale``, as open_clip does; False keeps the loss's fixed ``scale`` (the seed: 20).
        lock_text: freeze the text tower (open_clip's ``--lock-text``).
        lock_text_unlocked_layers: with ``lock_text``, leave this many last text layers trainable.
        lock_image: freeze the image tower (open_clip's ``--lock-image``).
        lock_image_unlocked_layers: with ``lock_image``, leave this many last vision layers trainable.
        gradient_checkpointing: trade compute for activation memory in both towers.
        loss: the training loss; default ``MultipleNegativesRankingLoss()`` (scale 20, cosine).
        **kwargs: optimiser, schedule, evaluation and export options of ``EmbeddingModule``.
    """

    def __init__(
        self,
        encoder: ClipBackend,
        learn_logit_scale: bool = False,
        lock_text: bool = False,
        lock_text_unlocked_layers: int = 0,
        lock_image: bool = False,
        lock_image_unlocked_layers: int = 0,
        gradient_checkpointing: bool = False,
        loss: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(loss or MultipleNegativesRankingLoss(), **kwargs)
        self.encoder = encoder
        self.learn_logit_scale = learn_logit_scale
        self.encoder.logit_scale.requires_grad_(learn_logit_scale)  # unused parameters would stall DDP
        if lock_text:
            self.encoder.lock_text(lock_text_unlocked_layers)
        if lock_image:
            self.encoder.lock_image(lock_image_unlocked_layers)
        if gradient_checkpointing:
            self.encoder.set_grad_checkpointing(True)

    @property
    def processor(self):
        """Weights-free ``tokenize(texts)`` and ``image_transform(image, train)`` the datamodule's workers call."""
        return self.encoder.processor

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        if "pixel_values" in features:
            return self.encoder.encode_image(features["pixel_values"])
        return self.encoder.encode_text(features)

    def tower(self, features: dict[str, Tensor]) -> str:
        return "image" if "pixel_values" in features else "text"

    def loss_kwargs(self) -> dict:
        return {"scale": self.encoder.logit_scale.exp()} if self.learn_logit_scale else {}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.learn_logit_scale:
            with torch.no_grad():
                self.encoder.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def export(self, directory: str) -> None:
        self.encoder.save(directory)
