"""What fit logs while it trains, numbered and averaged the way sentence-transformers' trainer logs it.

Every ``log_every_n_steps`` optimizer steps one row goes to every logger, at the optimizer step count *after* the step
(the step in checkpoint names, in the console and in the card; evaluations are logged at the same count):

- ``train/loss``: the mean training loss over the optimizer steps since the previous row (a step's loss being the mean
  of its accumulated batches), as ST's trainer logs ``loss``; all devices' steps count. A step with a non-finite loss
  was skipped (``NonFiniteGuard``), not trained: it is left out of the mean, as ST's ``logging_nan_inf_filter`` does.
- ``lr-<Optimizer>[/pg<i>]``: each parameter group's learning rate for the next step (ST's ``learning_rate``),
  spelt as Lightning's ``LearningRateMonitor`` spells it;
- ``train/<source>_loss``: with several training sources (``datamodules.mixture``), the mean loss of each source's
  batches since the previous row, all devices' (every device trains on the same source at a step);
- ``train/samples_per_s``: training rows of the last ``window`` batches on all devices per wall-clock second;
- what the module and the other callbacks add (their ``training_log_values()``): the learned logit scale
  (``CLIPEmbeddingModule``), skipped steps (``NonFiniteGuard``).

Nothing here waits for the device between rows: the loss is summed on the device, the rate measured on the host. At
a row, one small all-reduce (under DDP) and one copy to the host, where Lightning's own logging synchronised too.
"""

import time
from collections import deque

import torch
from lightning.pytorch import Callback
from torch import Tensor

from datamodules.batches import ROWS, SOURCE
from metrics.keys import TRAIN_LOSS, source_loss_key
from reporting.metrics_log import log_row


class TrainingLog(Callback):
    """Log the training rows described above, and show ``samples/s`` on the progress bar. ``train.py`` adds one to
    every fit.

    A checkpoint carries the loss summed since the last row, so a resumed run logs the same means as an uninterrupted
    one.

    Args:
        window: batches the ``samples/s`` rate is averaged over.
    """

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.rate: float | None = None
        self._times: deque[tuple[float, int]] = deque(maxlen=window + 1)
        self._step_loss: Tensor | None = None  # (1,) this optimizer step's loss so far (its accumulated batches)
        self._sum: Tensor | None = None  # (2,) finite step losses since the last row: their sum, their count
        self._restored: list[float] | None = None  # a checkpoint's sum and count, for rank 0 to go on from
        # a mixture's: each source's finite batch losses since the last row (their sum, their count), on the device
        self._sources: dict[str, Tensor] = {}
        self._rank, self._world, self._strategy = 0, 1, None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._rank, self._world, self._strategy = trainer.global_rank, trainer.world_size, trainer.strategy
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
        self._measure_rate(trainer, batch)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):  # Lightning divided it by accumulate_grad_batches: the sum is the step's mean
            loss = loss.detach().float().reshape(1)
            self._step_loss = loss if self._step_loss is None else self._step_loss + loss
            source = batch.get(SOURCE) if isinstance(batch, dict) else None
            if source is not None:
                batch_loss = loss * trainer.accumulate_grad_batches
                finite = torch.isfinite(batch_loss)
                added = torch.cat([torch.where(finite, batch_loss, 0.0), finite.float()])
                held = self._sources.get(source)
                self._sources[source] = added if held is None else held.to(added.device) + added
        if trainer.fit_loop._should_accumulate():
            return
        if self._step_loss is not None:
            finite = torch.isfinite(self._step_loss)
            step = torch.cat([torch.where(finite, self._step_loss, 0.0), finite.float()])  # (2,)
            self._sum = self._accumulated(step.device) + step
            self._step_loss = None
        if trainer.log_every_n_steps and trainer.global_step % trainer.log_every_n_steps == 0:
            self._log_row(trainer, pl_module)

    def _measure_rate(self, trainer, batch) -> None:
        rows = batch.get(ROWS) if isinstance(batch, dict) else None
        self._times.append((time.perf_counter(), len(rows) if rows is not None else 0))
        if len(self._times) < 2:
            return
        elapsed = self._times[-1][0] - self._times[0][0]
        count = sum(n for _, n in list(self._times)[1:]) * trainer.world_size
        if elapsed > 0 and count:
            self.rate = count / elapsed

    def _accumulated(self, device: torch.device) -> Tensor:
        if self._sum is not None:
            return self._sum
        restored = self._restored if self._restored is not None and self._rank == 0 else [0.0, 0.0]
        self._restored = None
        return torch.tensor(restored, device=device)

    def _log_row(self, trainer, pl_module) -> None:
        row: dict[str, float] = {}
        if self._sum is not None:
            # (a copy: the all-reduce works in place)
            total = self._strategy.reduce(self._sum.clone(), reduce_op="sum") if self._world > 1 else self._sum
            loss_sum, steps = total.tolist()  # the one copy to the host per row
            if steps:
                row[TRAIN_LOSS] = loss_sum / steps
            self._sum = None
        sums, self._sources = self._source_sums(), {}
        row.update({source_loss_key(name): total / count for name, (total, count) in sums.items() if count})
        row.update(learning_rates(trainer))
        if self.rate is not None:
            row["train/samples_per_s"] = self.rate
        for source in [pl_module, *trainer.callbacks]:
            if source is not self and callable(getattr(source, "training_log_values", None)):
                row.update({k: float(v) for k, v in source.training_log_values().items()})
        log_row(trainer, row)

    def _source_sums(self) -> dict[str, list[float]]:
        """Each source's finite batch losses since the last row, summed over all devices (which trained the same
        sources): name → [sum, count]."""
        if not self._sources:
            return {}
        names = sorted(self._sources)  # the same on every rank: every rank trains the same source at a step
        device = self._strategy.root_device if self._strategy is not None else torch.device("cpu")
        stacked = torch.stack([self._sources[name].to(device) for name in names])
        if self._world > 1:
            stacked = self._strategy.reduce(stacked, reduce_op="sum")
        return dict(zip(names, stacked.tolist()))

    def state_dict(self) -> dict:
        # every rank writes its state (Lightning saves rank 0's): the loss of every device goes in rank 0's, so the
        # resumed run's next row averages what the uninterrupted one would
        sources = self._source_sums()
        if self._sum is None:
            return {"loss_sum": list(self._restored or [0.0, 0.0]), "source_loss_sums": sources}
        total = self._strategy.reduce(self._sum.clone(), reduce_op="sum") if self._world > 1 else self._sum
        return {"loss_sum": total.tolist(), "source_loss_sums": sources}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = list(state_dict.get("loss_sum", [0.0, 0.0]))
        self._sum = None
        # rank 0 goes on from every device's sums, the others from zeros (the next row adds all ranks' up); every
        # rank holds the same sources, which the row's all-reduce stacks in one order
        sums = state_dict.get("source_loss_sums", {})
        self._sources = {name: torch.tensor(values if self._rank == 0 else [0.0, 0.0]) for name, values in sums.items()}


def learning_rates(trainer) -> dict[str, float]:
    """Each optimizer's parameter groups' learning rates, keyed as ``LearningRateMonitor`` keys them."""
    rates = {}
    for optimizer in trainer.optimizers:
        name = f"lr-{type(optimizer).__name__}"
        groups = optimizer.param_groups
        for i, group in enumerate(groups):
            rates[name if len(groups) == 1 else f"{name}/pg{i + 1}"] = float(group["lr"])
    return rates

