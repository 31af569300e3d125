"""Optimizer steps with a non-finite loss or gradient are skipped on the device and reported, never applied.

Before each optimizer step one flag is computed on the device (``torch._amp_foreach_non_finite_check_and_unscale_``,
the check GradScaler runs, over all gradients, OR-ed with the step's losses) and handed to AdamW as ``found_inf``:
fused AdamW then leaves the weights, its moments and its step count untouched when the flag is set, without the host
waiting for the device. The flags are read on the host every ``log_every_n_steps`` steps (one sync, when Lightning
logs anyway): each skipped step is reported with its rows, and the run stops once more than ``max_steps`` were
skipped. An optimizer that is not fused (some device without fused AdamW) gets the same skip with one sync per step.
"""

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ROWS_SHOWN = 10  # rows named per skipped step


class NonFiniteSteps(RuntimeError):
    """More optimizer steps had a non-finite loss or gradient than ``--model.init_args.max_nonfinite_steps``."""


class NonFiniteGuard:
    """Per-run state: the current step's flag and rows, the steps not yet looked at, the count skipped.

    Args:
        max_steps: skipped steps tolerated; one more stops the run.
    """

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.skipped = 0  # skipped steps seen on the host
        self._loss_bad: Tensor | None = None  # (1,) any non-finite loss among this optimizer step's batches
        self._rows: list = []  # this step's rows (file rows where the data knows them)
        self._found: Tensor | None = None  # (1,) float 0/1: this step was skipped
        self._pending: list[tuple[int, Tensor, list]] = []  # (step, flag, rows) not yet read on the host
        self._total: Tensor | None = None  # (1,) skipped steps of this process's flags, on the device
        self._restored = 0  # skipped steps of the run before the checkpoint this process resumed

    def loss(self, loss: Tensor, rows: list | None) -> None:
        bad = ~torch.isfinite(loss.detach()).reshape(1)
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        self._rows.extend(rows or [])

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
        """(1,) the run's skipped steps so far, this optimizer step's included (it is queued only when the module's
        batch-end hook runs, after the callbacks'), on the device; None before the first step's flag."""
        flags = [t for t in (self._total, self._found) if t is not None]
        return sum(flags) + self._restored if flags else None

    def report(self, trainer) -> None:
        """Read the queued flags (one sync), warn about each skipped step, stop past ``max_steps``."""
        self._drain(trainer)
        if self.skipped > self.max_steps:
            last = [c.last_model_path for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")]
            raise NonFiniteSteps(
                f"{self.skipped} optimizer steps had a non-finite loss or gradient, more than "
                f"--model.init_args.max_nonfinite_steps {self.max_steps}: stopping. None of them was applied to the "
                f"weights{f'; the last checkpoint is {last[0]}' if last else ''}. {HINT}")

    def _drain(self, trainer=None) -> None:
        if not self._pending:
            return
        where = getattr(getattr(trainer, "datamodule", None), "where", {}).get("train")
        pending, self._pending = self._pending, []
        flags = torch.cat([flag for _, flag, _ in pending]).cpu()  # the one sync
        for (step, _, rows), flag in zip(pending, flags.tolist()):
            if flag:
                self.skipped += 1
                known = [r for r in rows if r is not None]
                shown = (where.rows(known[:ROWS_SHOWN], total=len(rows)) if where is not None and known else
                         ", ".join(str(r) for r in rows[:ROWS_SHOWN]) + (", …" if len(rows) > ROWS_SHOWN else ""))
                log.warning("optimizer step %d skipped: non-finite loss or gradient (%d skipped so far, the run stops "
                            "after %d); the batch's rows: %s.%s", step, self.skipped, self.max_steps,
                            shown or "unknown", f" {HINT}" if self.skipped == 1 else "")

    def state_dict(self, trainer=None) -> dict:
        self._drain(trainer)
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = self._restored = state.get("skipped", 0)


HINT = ("Usual causes: a learning rate too high (lower --model.init_args.lr), fp16 overflow (--trainer.precision "
        "bf16-mixed or 32-true), a similarity scale too large for the precision (lower the loss's scale), or an "
        "empty or degenerate row in the batch.")
