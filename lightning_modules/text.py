"""Fine-tune a BERT-style text encoder on (anchor, positive, negatives…) columns with in-batch negatives."""

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_modules.base import EmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from losses import MatryoshkaLoss, MultipleNegativesRankingLoss


class TextEmbeddingModule(EmbeddingModule):
    """A sentence-transformers-style text embedding model trained with an in-batch-negatives loss.

    Args:
        model_name_or_path: hub name or local directory of a HF encoder (``BAAI/bge-base-en-v1.5``).
        config: HF config kwargs with ``model_type`` for a randomly initialised encoder (tests, experiments).
        tokenizer_name_or_path: tokenizer source; defaults to ``model_name_or_path``.
        pooling: ``cls`` or ``mean``.
        normalize: L2-normalise embeddings (exported as ST's Normalize module).
        max_length: tokens kept per text.
        query_prompt: prepended to query texts (the data's query column), as ST's ``prompts``.
        document_prompt: prepended to every other column.
        gradient_checkpointing: trade compute for activation memory in the encoder.
        loss: the training loss; default ``MultipleNegativesRankingLoss()``; wrap it in ``MatryoshkaLoss`` to train and
            evaluate embedding prefixes.
        **kwargs: optimiser, schedule, evaluation and export options of ``EmbeddingModule``.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        config: dict | None = None,
        tokenizer_name_or_path: str | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = 512,
        query_prompt: str = "",
        document_prompt: str = "",
        gradient_checkpointing: bool = False,
        loss: nn.Module | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_schedule: str = "linear",
        warmup_ratio: float = 0.0,
        evaluate_before_training: bool = True,
        export_dir: str | None = "model",
    ) -> None:
        super().__init__(loss or MultipleNegativesRankingLoss(), lr, weight_decay, betas, eps, lr_schedule,
                         warmup_ratio, evaluate_before_training, export_dir)
        self.save_hyperparameters(ignore=["loss"])
        self.encoder = TextEncoder(model_name_or_path, config, tokenizer_name_or_path, pooling, normalize, max_length,
                                   {"query": query_prompt, "document": document_prompt})
        if gradient_checkpointing:
            self.encoder.model.gradient_checkpointing_enable()
        if isinstance(self.loss, MatryoshkaLoss) and max(self.loss.dims) > self.encoder.embedding_dim:
            raise ValueError(f"--model.loss.init_args.dims: {max(self.loss.dims)} is larger than the model's embedding "
                             f"size {self.encoder.embedding_dim}; use dims ≤ {self.encoder.embedding_dim}")

    @property
    def processor(self):
        """Picklable tokenizer the datamodule runs in its DataLoader workers."""
        return self.encoder.processor

    @property
    def eval_dims(self) -> Sequence[int | None]:
        return self.loss.dims if isinstance(self.loss, MatryoshkaLoss) else [None]

    def embed_columns(self, batch: dict) -> list[Tensor]:
        return [self.encoder(features) for features in batch["features"]]

    def embed_stream(self, batch: dict) -> Tensor:
        return self.encoder(batch["features"])

    def export(self, directory: str) -> None:
        self.encoder.save(directory, model_card=self.model_card())

    def model_card(self) -> str:
        """A short README for the exported model: base model, loss, and the last validation metrics."""
        lines = ["---", "library_name: sentence-transformers", "tags:", "- sentence-transformers", "- litembed", "---",
                 "# litembed text embedding model", "",
                 f"Fine-tuned from `{self.hparams.model_name_or_path or 'a randomly initialised encoder'}` with "
                 f"litembed (PyTorch Lightning) using `{self.loss}`.", "",
                 "```python", "from sentence_transformers import SentenceTransformer",
                 "model = SentenceTransformer(\"path/to/this/directory\")", "```"]
        if self.history:
            lines += ["", "## Validation metrics", "", "| metric | base | final |", "|:--|--:|--:|"]
            base, final = self.history[0][1], self.history[-1][1]
            lines += [f"| {k.removeprefix('val/')} | {base.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in final.items()]
        return "\n".join(lines) + "\n"
