"""What ``train.py predict`` writes: each evaluation stream's embeddings, row i for item i, and what each item is."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from datamodules.batches import EMBEDDINGS, IDS, STREAM
from metrics.collector import EmbeddingCollector


class PredictionWriter(BasePredictionWriter):
    """Writes the embeddings ``predict_step`` returns (``{"stream", "ids", "embeddings"}`` per batch) once every
    stream is complete: ``<output_dir>/<stream>.npy``, (N, D) float32 with row i the embedding of item i, and
    ``<stream>.parquet``, row for row, with ``id`` (0 … N-1) and the datamodule's ``item_columns`` (a text; an image's
    file, key and row). It prints one line per stream saying where.

    Under DDP each rank embeds every world_size-th item, the last ranks repeating a few to even out: the collectors
    gather every rank's rows, keep each id once, and rank 0 writes.

    Args:
        output_dir: where to write; relative paths go under the trainer's log directory (the run's folder).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._collectors: dict[str, EmbeddingCollector] = {}

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._collectors.clear()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        stream = prediction[STREAM]
        if stream not in self._collectors:
            self._collectors[stream] = EmbeddingCollector().to(pl_module.device)
        self._collectors[stream].update(prediction[IDS], prediction[EMBEDDINGS])

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run:
            self._collectors.clear()
            rank_zero_info("fast_dev_run: one batch per stream, so no predictions written")
            return
        # trainer.log_dir broadcasts rank 0's and compute() gathers every rank's rows: collectives, so every rank
        # calls them, the streams in the same order (each rank has every stream: the loaders give each at least one)
        log_dir = trainer.log_dir
        directory = self.output_dir if os.path.isabs(self.output_dir) or log_dir is None else os.path.join(
            log_dir, self.output_dir)
        streams = {name: self._collectors[name].compute() for name in sorted(self._collectors)}  # name: (N, D)
        self._collectors.clear()
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            os.makedirs(directory, exist_ok=True)
            lines = []
            for name, embeddings in streams.items():
                path = os.path.join(directory, f"{name}.npy")
                np.save(path, embeddings.cpu().numpy().astype(np.float32))
                items = {"id": np.arange(len(embeddings)), **datamodule.item_columns(datamodule.predict_stage, name)}
                pq.write_table(pa.table(items), os.path.join(directory, f"{name}.parquet"))
                lines.append(f"Wrote {len(embeddings)} embeddings of dim {embeddings.shape[1]} for stream {name!r} "
                             f"to {path}")
            print("\n".join(lines), flush=True)
        trainer.strategy.barrier()  # every rank returns from predict with the files written
