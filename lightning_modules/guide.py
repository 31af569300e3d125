"""A guided loss's guide model and its embeddings of the training texts (``losses.GISTEmbedLoss``).

The guide is frozen, so its embedding of a training text never changes: for map-style training data every distinct
text of every training column (as the model reads it, prompt included) is embedded once, before the first step, each
rank a share, then gathered into a table on the host; a batch's guide embeddings are rows of that table, looked up by
the batch's ``rows``. Guided training then costs the model's step and a lookup, where sentence-transformers' GIST runs
the guide on every column of every batch. Streamed data has no table ahead: the guide embeds each batch's texts,
decoded from the model's tokens (sentence-transformers' path when the tokenizers differ).

The guide is loaded with ``inference.models.load_model`` (``pkg:``, a hub name, a local or exported model, a run or a
checkpoint) and kept out of the module's parameters: it is not trained, checkpointed or exported.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from datamodules.batches import FEATURES, ROWS, SOURCE
from datamodules.contract import RetrievalData, TrainingTexts
from inference.models import Embedder, load_model
from metrics.collector import EmbeddingCollector


@dataclass
class GuideTable:
    """One guide's embeddings of one source's training texts: ``table[index[c, position[row]]]``."""

    embeddings: Tensor  # (T, D') the distinct texts' embeddings, float32, on the host
    index: Tensor  # (C, N) per column, each row's text's position in ``embeddings``
    position: dict[int, int]  # a row's ``__row__`` → its position among the N training rows

    def lookup(self, rows: list[int], device: torch.device) -> list[Tensor]:
        positions = torch.tensor([self.position[row] for row in rows], dtype=torch.long)
        return [self.embeddings[column[positions]].to(device, non_blocking=True) for column in self.index]


class Guides:
    """Guide models by name and their tables by (guide, source), built by ``build`` before the first step."""

    def __init__(self) -> None:
        self.models: dict[str, Embedder] = {}
        self.tables: dict[tuple[str, str | None], GuideTable | None] = {}

    def build(self, guided: dict[str | None, tuple[str, int]], data: RetrievalData, device: torch.device,
              rank: int, world: int) -> None:
        """Load each guide and embed each guided source's training texts (a collective under DDP: every rank calls
        it, with the same ``guided``).

        Args:
            guided: per training source (None: the one dataset) whose loss is guided, its guide and guide batch size.
        """
        for source, (guide, batch_size) in guided.items():
            if (guide, source) in self.tables:
                continue
            if guide not in self.models:
                self.models[guide] = load_model(guide, device=str(device))
            texts = data.training_texts(source)
            self.tables[guide, source] = None if texts is None else self._table(
                self.models[guide], texts, batch_size, device, rank, world)
            where = f"source {source!r}: " if source else ""
            if texts is None:
                rank_zero_info(f"{where}guide {guide}: the training data streams, so the guide embeds each batch")
            else:
                table = self.tables[guide, source]
                rank_zero_info(f"{where}guide {guide}: {table.embeddings.shape[0]} distinct training texts embedded "
                               f"once, looked up per batch")

    @staticmethod
    def _table(model: Embedder, texts: TrainingTexts, batch_size: int, device: torch.device, rank: int,
               world: int) -> GuideTable:
        distinct: dict[str, int] = {}
        index = torch.tensor([[distinct.setdefault(t, len(distinct)) for t in column] for column in texts.columns],
                             dtype=torch.long)  # (C, N)
        values = list(distinct)
        mine = list(range(rank, len(values), world))  # this rank's share, gathered below
        embeddings = model.encode_texts([values[i] for i in mine], batch_size=batch_size)
        if world > 1 and dist.is_available() and dist.is_initialized():
            collector = EmbeddingCollector().to(device)
            collector.update(torch.tensor(mine, dtype=torch.long, device=device), embeddings.to(device))
            embeddings = collector.compute()
        return GuideTable(embeddings.float().cpu(), index, {row: i for i, row in enumerate(texts.rows)})

    def embeddings(self, guide: str, batch: dict, tokenizer, device: torch.device) -> list[Tensor]:
        """The guide's (B, D') embeddings of each column of a training batch, in column order."""
        table = self.tables[guide, batch.get(SOURCE)]
        if table is not None:
            return table.lookup(batch[ROWS], device)
        model = self.models[guide]
        return [model.encode_texts(tokenizer.batch_decode(features["input_ids"], skip_special_tokens=True),
                                   batch_size=len(features["input_ids"])).to(device)
                for features in batch[FEATURES]]
