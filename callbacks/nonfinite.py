"""Optimizer steps with a non-finite loss or gradient are skipped on the device and reported, never applied: a
callback, which ``train.py`` adds to every fit (``--max_nonfinite_steps``).

Before each optimizer step one flag is computed on the device (``torch._amp_foreach_non_finite_check_and_unscale_``,
the check GradScaler runs, over all gradients, OR-ed with the step's losses) and handed to AdamW as ``found_inf``:
fused AdamW then leaves the weights, its moments and its step count untouched when the flag is set, without the host
waiting for the device. The flags are read on the host every ``log_every_n_steps`` steps (one sync, when Lightning
logs anyway): each skipped step is reported with its rows, and the run stops once more than ``max_steps`` were
skipped. An optimizer that is not fused (some device without fused AdamW) gets the same skip with one sync per step.
"""

import logging

import torch
from lightning.pytorch import Callback
from torch import Tensor

from datamodules.batches import ROWS, SOURCE
from lightning_modules.optim import uses_loss_scaler

log = logging.getLogger(__name__)

ROWS_SHOWN = 10  # rows named per skipped step


class NonFiniteSteps(RuntimeError):
    """More optimizer steps had a non-finite loss or gradient than ``--max_nonfinite_steps``."""


class NonFiniteGuard(Callback):
    """Flag each optimizer step on the device, skip the flagged ones, report them with their rows, stop the run past
    ``max_steps``; ``train/nonfinite_steps`` in the training rows (``callbacks.training_log``). A checkpoint carries the
    count, so a resumed run stops where the uninterrupted one would.

    Under fp16 mixed precision the loss scaler finds and skips non-finite steps itself (and litembed's AdamW is not
    fused with it): the guard leaves those steps alone.

    Args:
        max_steps: skipped steps tolerated; one more stops the run.
    """

    def __init__(self, max_steps: int = 10) -> None:
        if max_steps < 0:
            raise ValueError(f"--max_nonfinite_steps must be ≥ 0, got {max_steps}")
        self.max_steps = max_steps
        self._trainer = None  # for the training rows' locations when a checkpoint drains the queue
        self.skipped = 0  # skipped steps seen on the host
        self._loss_bad: Tensor | None = None  # (1,) any non-finite loss among this optimizer step's batches
        self._rows: list[tuple[str | None, object]] = []  # this step's (source, row): a mixture's source, a file row
        self._found: Tensor | None = None  # (1,) float 0/1: this step was skipped
        self._pending: list[tuple[int, Tensor, list]] = []  # (step, flag, rows) not yet read on the host
        self._total: Tensor | None = None  # (1,) skipped steps of this process's flags, on the device
        self._restored = 0  # skipped steps of the run before the checkpoint this process resumed
        self._batch_rows: tuple[str | None, list | None] = (None, None)  # the batch being trained on: source, rows

    # the Lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_rows = (batch.get(SOURCE), batch.get(ROWS)) if isinstance(batch, dict) else (None, None)

    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        # the loss Lightning backpropagates (divided by accumulate_grad_batches; with GradCache, the step's whole loss)
        source, rows = self._batch_rows
        self.loss(loss, rows, source)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not uses_loss_scaler(trainer):  # fp16's loss scaler skips such steps itself
            self.before_step(optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # after TrainingLog's (train.py adds this callback after it): the row of a step that stops the run is written
        if not trainer.fit_loop._should_accumulate():
            self.after_step(trainer.global_step, trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.report(trainer)

    def training_log_values(self) -> dict[str, Tensor]:
        """For ``TrainingLog``'s rows: the run's skipped steps so far, on the device (read once per row)."""
        skipped = self.count()
        return {} if skipped is None else {"train/nonfinite_steps": skipped.squeeze()}

    # the guard itself
    def loss(self, loss: Tensor, rows: list | None, source: str | None = None) -> None:
        bad = ~torch.isfinite(loss.detach()).reshape(1)
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        self._rows.extend((source, row) for row in rows or [])

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Flag the step (on the device) and make the optimizer skip it when the flag is set."""
        groups: dict[tuple, list[Tensor]] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        if not groups and self._loss_bad is None:
            return
        device = next(iter(groups))[0] if groups else self._loss_bad.device
        found = torch.zeros(1, device=device)
        one = torch.ones(1, device=device)
        for (grad_device, _), grads in groups.items():
            flag = found if grad_device == device else torch.zeros(1, device=grad_device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, one.to(grad_device))  # scale 1: check only
            if flag is not found:
                found = torch.maximum(found, flag.to(device))
        if self._loss_bad is not None:
            found = torch.maximum(found, self._loss_bad.to(device).float())
        self._found = found
        if all(group.get("fused") for group in optimizer.param_groups):
            optimizer.found_inf = found[0]  # fused AdamW: no update, moments and step count unchanged, if found == 1
        elif found.item():
            for group in optimizer.param_groups:  # a parameter without a gradient is not updated at all
                for p in group["params"]:
                    p.grad = None

    def after_step(self, step: int, trainer) -> None:
        """Queue the step's flag; every ``log_every_n_steps`` steps, report and maybe stop."""
        found, self._found = self._found, None
        rows, self._rows, self._loss_bad = self._rows, [], None
        if found is None:
            return
        self._total = found if self._total is None else self._total + found
        self._pending.append((step, found, rows))
        if len(self._pending) >= max(1, trainer.log_every_n_steps):
            self.report(trainer)

    def count(self) -> Tensor | None:
        """(1,) the run's skipped steps so far, this optimizer step's included (whether or not its batch-end hook has
        queued it yet), on the device; None before the first step's flag."""
        flags = [t for t in (self._total, self._found) if t is not None]
        return sum(flags) + self._restored if flags else None

    def report(self, trainer) -> None:
        """Read the queued flags (one sync), warn about each skipped step, stop past ``max_steps``."""
        self._drain(trainer)
        if self.skipped > self.max_steps:
            last = [c.last_model_path for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")]
            raise NonFiniteSteps(
                f"{self.skipped} optimizer steps had a non-finite loss or gradient, more than "
                f"--max_nonfinite_steps {self.max_steps}: stopping. None of them was applied to the "
                f"weights{f'; the last checkpoint is {last[0]}' if last else ''}. {HINT}")

    def _drain(self, trainer=None) -> None:
        if not self._pending:
            return
        data = getattr(trainer, "datamodule", None)  # datamodules.contract.RetrievalData
        pending, self._pending = self._pending, []
        flags = torch.cat([flag for _, flag, _ in pending]).cpu()  # the one sync
        for (step, _, rows), flag in zip(pending, flags.tolist()):
            if flag:
                self.skipped += 1
                shown = "; ".join(_named_rows(data, source, rows) for source, rows in _by_source(rows).items())
                log.warning("optimizer step %d skipped: non-finite loss or gradient (%d skipped so far, the run stops "
                            "after %d); the batch's rows: %s.%s", step, self.skipped, self.max_steps,
                            shown or "unknown", f" {HINT}" if self.skipped == 1 else "")

    # the checkpoint
    def state_dict(self) -> dict:
        self._drain(self._trainer)
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = self._restored = state_dict.get("skipped", 0)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # a checkpoint of an earlier litembed, whose model kept the count (Lightning calls load_state_dict after this
        # hook, when the checkpoint holds this callback's state)
        if self.state_key not in checkpoint.get("callbacks", {}):
            self.load_state_dict(checkpoint.get("litembed", {}).get("nonfinite", {}))


HINT = ("Usual causes: a learning rate too high (lower --model.init_args.lr), fp16 overflow (--trainer.precision "
        "bf16-mixed or 32-true), a similarity scale too large for the precision (lower the loss's scale), or an "
        "empty or degenerate row in the batch.")


def _by_source(rows: list[tuple[str | None, object]]) -> dict[str | None, list]:
    grouped: dict[str | None, list] = {}
    for source, row in rows:
        grouped.setdefault(source, []).append(row)
    return grouped


def _named_rows(data, source: str | None, rows: list) -> str:
    """``rows`` (of ``source`` in a mixture) as the data names them (files and lines), else their numbers."""
    known = [r for r in rows if r is not None]
    kwargs = {"source": source} if source is not None else {}
    shown = data.training_rows(known[:ROWS_SHOWN], total=len(rows), **kwargs) \
        if hasattr(data, "training_rows") and known else None
    return shown or ", ".join(str(r) for r in rows[:ROWS_SHOWN]) + (", …" if len(rows) > ROWS_SHOWN else "")
