"""Fine-tune a BERT-style text encoder on (anchor, positive, negatives…) columns with in-batch negatives."""

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_modules.base import EmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from losses import MatryoshkaLoss, MultipleNegativesRankingLoss


class TextEmbeddingModule(EmbeddingModule):
    """A sentence-transformers-style text embedding model trained with an in-batch-negatives loss.

    Args:
        encoder: the text encoder (``lightning_modules.text_encoder.TextEncoder``: HF model, pooling, normalisation).
        loss: the training loss; default ``MultipleNegativesRankingLoss()``; wrap it in ``MatryoshkaLoss`` to train and
            evaluate embedding prefixes.
        **kwargs: optimiser, schedule and evaluation options of ``EmbeddingModule``.
    """

    def __init__(self, encoder: TextEncoder, loss: nn.Module | None = None, **kwargs) -> None:
        super().__init__(loss or MultipleNegativesRankingLoss(), **kwargs)
        for flag in self.losses_with("takes_bias"):
            raise ValueError(f"{flag}: SigLipLoss is for image–text models (lightning_modules.clip."
                             f"CLIPEmbeddingModule, which holds its learnable scale and bias); a text encoder trains "
                             f"with losses.MultipleNegativesRankingLoss, GISTEmbedLoss or a distillation loss")
        self.encoder = encoder
        if isinstance(self.loss, MatryoshkaLoss) and max(self.loss.dims) > encoder.embedding_dim:
            raise ValueError(f"--model.init_args.loss.init_args.dims: {max(self.loss.dims)} is larger than the model's "
                             f"embedding size {encoder.embedding_dim}; use dims ≤ {encoder.embedding_dim}")

    @property
    def processor(self):
        """Picklable tokenizer the datamodule runs in its DataLoader workers."""
        return self.encoder.processor

    @property
    def eval_dims(self) -> Sequence[int | None]:
        return self.loss.dims if isinstance(self.loss, MatryoshkaLoss) else [None]

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        return self.encoder(features)

    def export(self, directory: str, merge_adapters: bool = True) -> None:
        self.encoder.save(directory, merge_adapters)
