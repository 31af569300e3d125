"""Training pairs per second on the progress bar and in the metrics log, measured on the host: no device sync."""

import time
from collections import deque

from lightning.pytorch import Callback


class SamplesPerSecond(Callback):
    """Show ``samples/s`` (rows of the last ``window`` training batches on all devices per wall-clock second) on the
    progress bar and log it as ``train/samples_per_s`` at every logging step.

    Only host values are read (each batch's row count and the clock). ``LightningModule.log`` would turn the rate into
    a device tensor (a copy that waits for the queued kernels, every step), so the rate goes to the progress bar and
    the loggers directly. With asynchronous CUDA execution it is the host loop's rate, which the device paces within
    a few steps.

    Args:
        window: batches the rate is averaged over.
    """

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.rate: float | None = None
        self._times: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def setup(self, trainer, pl_module, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if stage == "fit" and bar is not None and not getattr(bar, "_shows_samples_per_s", False):
            metrics = bar.get_metrics

            def with_rate(trainer, pl_module):
                shown = metrics(trainer, pl_module)
                return shown if self.rate is None else {**shown, "samples/s": f"{self.rate:.1f}"}

            bar.get_metrics, bar._shows_samples_per_s = with_rate, True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._times.clear()  # an evaluation or an epoch boundary is not training time

    def on_validation_end(self, trainer, pl_module) -> None:
        self._times.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        rows = batch.get("rows") if isinstance(batch, dict) else None
        self._times.append((time.perf_counter(), len(rows) if rows is not None else 0))
        if len(self._times) < 2:
            return
        elapsed = self._times[-1][0] - self._times[0][0]
        count = sum(n for _, n in list(self._times)[1:]) * trainer.world_size
        if elapsed <= 0 or not count:
            return
        self.rate = count / elapsed
        step = trainer.global_step
        if trainer.is_global_zero and step % trainer.log_every_n_steps == 0 and not trainer.fit_loop._should_accumulate():
            for logger in trainer.loggers:
                logger.log_metrics({"train/samples_per_s": self.rate}, step=step)
