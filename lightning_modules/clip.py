"""Fine-tune a CLIP dual encoder (HF transformers or open_clip) on image–caption pairs with in-batch negatives."""

import math
import warnings

import torch
from torch import Tensor, nn

from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info

from datamodules.batches import FEATURES, IDS, IMAGE_INDEX, PIXEL_VALUES
from datamodules.contract import DataNeeds
from lightning_modules.base import EmbeddingModule
from lightning_modules.clip_backends import ClipBackend
from losses import MultipleNegativesRankingLoss
from metrics.collector import EmbeddingCollector

# A locked image tower is kept in eval mode on purpose (a constant function); Lightning's warning about modules in
# eval mode at the start of training would name it in every such run.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learnable temperature so logits stay ≤ 100


class CLIPEmbeddingModule(EmbeddingModule):
    """A CLIP model trained like sentence-transformers trains it: the loss sees one embedding per data column.

    Args:
        encoder: the CLIP backend, e.g. ``lightning_modules.clip_backends.TransformersClip`` (HF ``CLIPModel``; the
            seed recipe) or ``lightning_modules.clip_backends.OpenClip``.
        learn_logit_scale: train the model's logit scale (init log(1/0.07); with SigLipLoss its own, init log 10;
            clamped to log(100)) and pass it to the loss as ``scale``, as open_clip does; False keeps the loss's fixed
            ``scale`` (the seed: 20; SigLIP's initial 10).
        lock_text: freeze the text tower (open_clip's ``--lock-text``).
        lock_text_unlocked_layers: with ``lock_text``, leave this many last text layers trainable.
        lock_image: freeze the image tower (open_clip's ``--lock-image``).
        lock_image_unlocked_layers: with ``lock_image``, leave this many last vision layers trainable.
        gradient_checkpointing: trade compute for activation memory in both towers.
        cache_locked_image_tower: with ``lock_image`` and no unlocked layer, the image tower is a constant function
            (frozen and kept in eval mode, as LiT locks it): each distinct image is embedded once, before the first
            step, into a table on the device, and training and evaluation batches carry table rows instead of pixels.
            Training then costs the text tower alone, no image is decoded again, and every loss, gradient and metric
            equals recomputing the tower (tested). The training images are numbered only for map-style data whose
            training transform is deterministic (HF CLIP's; open_clip's random crop makes each epoch's image new):
            otherwise only evaluation images are. The table is rebuilt, not checkpointed.
        loss: the training loss; default ``MultipleNegativesRankingLoss()`` (scale 20, cosine). ``losses.SigLipLoss``
            trains SigLIP's sigmoid loss: the model then holds its learnable scale and bias (``sigmoid_logit_scale``,
            ``sigmoid_logit_bias``, initialised from the loss's options, clamped as open_clip does), which the export
            leaves out (the bias does not change retrieval ranks).
        **kwargs: optimiser, schedule and evaluation options of ``EmbeddingModule``.
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
        cache_locked_image_tower: bool = True,
        loss: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(loss or MultipleNegativesRankingLoss(), **kwargs)
        sigmoid = self.losses_with("takes_bias")
        for flag in self.losses_with("takes_guide"):
            raise ValueError(f"{flag}: GISTEmbedLoss's guide is a text model, and a CLIP model's training columns "
                             f"hold images: train CLIP with losses.MultipleNegativesRankingLoss (or "
                             f"losses.PositiveAwareMNRL, which screens with the model's own scores)")
        for flag in self.named_losses():
            if sigmoid and flag not in sigmoid:
                raise ValueError(f"{flag} is a softmax loss and {next(iter(sigmoid))} is SigLipLoss: a model trains "
                                 f"with one or the other (SigLIP's scale and bias would go untrained in the softmax "
                                 f"steps, which stalls DDP); give every source losses.SigLipLoss, or none")
        self.encoder = encoder
        self.learn_logit_scale = learn_logit_scale
        self.sigmoid = bool(sigmoid)
        # unused parameters would stall DDP: the encoder's softmax scale is not SigLIP's
        self.encoder.logit_scale.requires_grad_(learn_logit_scale and not self.sigmoid)
        if sigmoid:  # SigLIP's scale (as a log) and bias: the model's parameters, as CLIP's scale is
            siglip = next(iter(sigmoid.values()))
            self.sigmoid_logit_scale = nn.Parameter(torch.tensor(float(siglip.init_logit_scale)),
                                                    requires_grad=learn_logit_scale)
            self.sigmoid_logit_bias = nn.Parameter(torch.tensor(float(siglip.init_logit_bias)))
            if not learn_logit_scale:
                rank_zero_info(f"SigLipLoss with --model.init_args.learn_logit_scale false: the scale stays "
                               f"{math.exp(siglip.init_logit_scale):.4g} and only the bias is learned (SigLIP learns "
                               f"both: set learn_logit_scale true)")
        if lock_text:
            self.encoder.lock_text(lock_text_unlocked_layers)
        if lock_image:
            self.encoder.lock_image(lock_image_unlocked_layers)
        if gradient_checkpointing:
            self.encoder.set_grad_checkpointing(True)
        self.image_is_constant = lock_image and lock_image_unlocked_layers == 0
        self.cache_image_tower = cache_locked_image_tower and self.image_is_constant
        self._image_table: Tensor | None = None  # (N, D) embeddings of the datamodule's image_table(), in its order
        self.train(self.training)  # a locked image tower is in eval mode from the start

    @property
    def constant_towers(self) -> frozenset[str]:
        """Towers whose embeddings the datamodule should let this model look up by number instead of computing."""
        return frozenset({"image"}) if self.cache_image_tower else frozenset()

    def data_needs(self) -> DataNeeds:
        return DataNeeds(self.processor, self.constant_towers)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_is_constant:  # locked means a constant function: no dropout, no batch statistics
            for module in self.encoder.image_tower():
                module.eval()
        return self

    @property
    def processor(self):
        """Weights-free ``tokenize(texts)`` and ``image_transform(image, train)`` the datamodule's workers call."""
        return self.encoder.processor

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        if IMAGE_INDEX in features:
            return self._image_table[features[IMAGE_INDEX]]
        if PIXEL_VALUES in features:
            return self.encoder.encode_image(features[PIXEL_VALUES])
        return self.encoder.encode_text(features)

    def tower(self, features: dict[str, Tensor]) -> str:
        return "image" if PIXEL_VALUES in features or IMAGE_INDEX in features else "text"

    @torch.no_grad()
    def _build_image_table(self) -> None:
        """Embed every image of the datamodule's ``image_table()`` once (each rank a share, then gathered): a
        collective, called by every rank from the same hooks."""
        if not self.cache_image_tower or self._image_table is not None:
            return
        collector = EmbeddingCollector().to(self.device)
        with self.trainer.precision_plugin.forward_context():  # the dtype a recomputed embedding would have
            for batch in self.data.image_table_loader():
                batch = move_data_to_device(batch, self.device)
                collector.update(batch[IDS], self.encoder.encode_image(batch[FEATURES][PIXEL_VALUES]))
        self._image_table = collector.compute()
        rank_zero_info(f"Locked image tower: {self._image_table.shape[0]} distinct images embedded once "
                       f"(--model.init_args.cache_locked_image_tower)")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._build_image_table()

    def on_validation_start(self) -> None:
        self._build_image_table()

    def on_test_start(self) -> None:
        self._build_image_table()

    def on_predict_start(self) -> None:
        self._build_image_table()

    def loss_kwargs(self) -> dict:
        if self.sigmoid:
            return {"scale": self.sigmoid_logit_scale.exp(), "bias": self.sigmoid_logit_bias}
        return {"scale": self.encoder.logit_scale.exp()} if self.learn_logit_scale else {}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.learn_logit_scale:  # open_clip clamps every model's scale, SigLIP's too
            with torch.no_grad():
                (self.sigmoid_logit_scale if self.sigmoid else self.encoder.logit_scale).clamp_(0, MAX_LOGIT_SCALE)

    def training_log_values(self) -> dict[str, Tensor]:
        values = super().training_log_values()
        kwargs = self.loss_kwargs()
        if "scale" in kwargs:  # the loss's scale (1/temperature), as open_clip logs it
            values["train/logit_scale"] = kwargs["scale"].detach()
        if "bias" in kwargs:
            values["train/logit_bias"] = kwargs["bias"].detach()
        return values

    def loss_parameters(self, source: str | None = None) -> dict:
        parameters = super().loss_parameters(source)
        kwargs = self.loss_kwargs()
        if self.sigmoid:  # the model's learned scale and bias, which the export leaves out
            parameters.update(logit_scale=round(kwargs["scale"].item(), 4), logit_bias=round(kwargs["bias"].item(), 4))
        elif self.learn_logit_scale:  # not the loss's configured scale: the model's, learned
            parameters.update(scale=round(kwargs["scale"].item(), 4), scale_learned=True)
        return parameters

    def export(self, directory: str) -> None:
        self.encoder.save(directory)
