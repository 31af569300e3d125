"""AdamW with decoupled weight decay groups and warmup schedules that step once per optimizer step.

The schedules reproduce `transformers.get_scheduler` (what sentence-transformers' trainer uses), so a recipe ported
from ST sees the same learning rate at every step.
"""

import math
from collections.abc import Iterable

import torch
from torch import nn

SCHEDULES = ("constant", "linear", "cosine")


def uses_loss_scaler(trainer) -> bool:
    """fp16 mixed precision: Lightning's loss scaler unscales the gradients and skips non-finite steps itself, so the
    optimizer is not fused with it and the non-finite guard (``callbacks.nonfinite``) leaves its steps alone."""
    return str(trainer.precision).startswith("16")


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split trainable parameters so biases, norm weights and scalars (logit scale) get no weight decay."""
    decay, no_decay = [], []
    for _, p in named_parameters:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base learning rate at optimizer step `step` (0-based), as in transformers' schedules."""
    if schedule not in SCHEDULES:
        raise ValueError(f"--model.init_args.lr_schedule must be one of {SCHEDULES}, got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def build_optimizer(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    schedule: str,
    warmup_ratio: float,
    total_steps: int,
    fused: bool = False,
) -> dict:
    """AdamW (``fused``: one kernel for all parameters, which can skip a step on the device) plus a per-step
    LambdaLR, as `configure_optimizers` returns."""
    params = parameter_groups(module.named_parameters(), weight_decay)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, fused=fused or None)
    warmup_steps = math.ceil(total_steps * warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(schedule, warmup_steps, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
