import pytest
import torch
from torch import nn
from transformers import get_scheduler

from lightning_modules.optim import build_optimizer, parameter_groups, warmup_lambda


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("total,ratio", [(100, 0.1), (4, 0.1), (63, 0.0), (7, 0.5)])
def test_schedule_matches_transformers(schedule, total, ratio):
    """The lr at every optimizer step equals transformers' scheduler (what ST's trainer uses)."""
    import math

    warmup = math.ceil(total * ratio)
    ours = build_optimizer(nn.Linear(2, 2), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                           schedule=schedule, warmup_ratio=ratio, total_steps=total)
    hf_name = "constant_with_warmup" if schedule == "constant" else schedule
    ref_opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    ref = get_scheduler(hf_name, ref_opt, num_warmup_steps=warmup, num_training_steps=total)
    sched = ours["lr_scheduler"]["scheduler"]
    assert ours["lr_scheduler"]["interval"] == "step"
    for _ in range(total):
        assert sched.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
        ours["optimizer"].step(), sched.step(), ref_opt.step(), ref.step()


def test_no_decay_on_bias_norm_and_scalars():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model.register_parameter("logit_scale", nn.Parameter(torch.tensor(2.0)))
    decay, no_decay = parameter_groups(model.named_parameters(), weight_decay=0.1)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4)]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_frozen_parameters_are_not_optimised():
    model = nn.Linear(4, 4)
    model.bias.requires_grad_(False)
    groups = parameter_groups(model.named_parameters(), weight_decay=0.0)
    assert sum(len(g["params"]) for g in groups) == 1


def test_unknown_schedule():
    with pytest.raises(ValueError, match="--model.init_args.lr_schedule"):
        warmup_lambda("exponential", 0, 10)


def test_clipping_without_a_loss_scaler_clips_the_true_gradient():
    """bf16/fp32 (no scaler): the module clips itself, so fused AdamW on CUDA can be combined with max_grad_norm."""
    from types import SimpleNamespace

    from lightning_modules.text import TextEmbeddingModule

    module = TextEmbeddingModule.__new__(TextEmbeddingModule)
    nn.Module.__init__(module)
    module.layer = nn.Linear(4, 4)
    module._fabric = None
    module._trainer = SimpleNamespace(precision="bf16-mixed", strategy=SimpleNamespace())
    module._loss_scaler = lambda: False
    module.layer.weight.grad = torch.full((4, 4), 10.0)
    module.layer.bias.grad = torch.full((4,), 10.0)
    optimizer = torch.optim.AdamW(module.layer.parameters())
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    norm = torch.cat([module.layer.weight.grad.flatten(), module.layer.bias.grad]).norm()
    assert norm.item() == pytest.approx(1.0, rel=1e-5)


def test_fsdp_clips_the_global_norm_through_the_root_module():
    """Under FSDP each rank holds shards of the gradients: clip_grad_norm_ of the FSDP root computes the global norm,
    while torch.nn.utils.clip_grad_norm_ would clip each shard by its own."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_modules.text import TextEmbeddingModule

    module = TextEmbeddingModule.__new__(TextEmbeddingModule)
    nn.Module.__init__(module)
    strategy = FSDPStrategy.__new__(FSDPStrategy)
    clipped = []
    strategy.model = SimpleNamespace(clip_grad_norm_=clipped.append)
    module._fabric = None
    module._trainer = SimpleNamespace(precision="bf16-mixed", strategy=strategy)
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert clipped == [1.0]
