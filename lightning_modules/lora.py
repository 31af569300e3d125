"""LoRA adapters on a Hugging Face backbone through ``peft``: the base weights freeze, low-rank adapters train.

From Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (https://arxiv.org/abs/2106.09685). An
adapted linear layer computes ``W x + (alpha / r) · B A x`` with A (r × in) and B (out × r) trained, B starting at 0,
so the adapted model starts as the base model. The export merges ``(alpha / r) · B A`` into W: a plain model that loads
without peft and embeds exactly as the trained adapters do.
"""

import copy
import warnings
from dataclasses import dataclass, field

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

# peft asks transformers a deprecated question about gradient checkpointing when it wraps a model; not ours to fix
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass
class LoRA:
    """LoRA options (``--model.init_args.encoder.init_args.lora``; peft's ``LoraConfig``).

    Args:
        r: the adapters' rank.
        alpha: scaling numerator: the update is ``alpha / r · B A``.
        dropout: dropout on the adapters' input.
        target_modules: names (or name suffixes) of the linear layers to adapt; ``["all-linear"]`` adapts every linear
            layer but the output head; default: peft's choice for the architecture (the attention's query and value
            projections of BERT, Qwen2, Llama, …).
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | None = field(default=None)


def add_lora(model: nn.Module, options: LoRA, flag: str) -> nn.Module:
    """``model`` with LoRA adapters (a ``peft.PeftModel``); every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    if options.r < 1:
        raise ValueError(f"{flag}.r must be ≥ 1 (the adapters' rank), got {options.r}")
    if not 0 <= options.dropout < 1:
        raise ValueError(f"{flag}.dropout must be in [0, 1), got {options.dropout}")
    targets = options.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=targets,
                        bias="none")
    try:
        adapted = get_peft_model(model, config)
    except ValueError as err:  # peft: no default targets for this architecture, or names that match nothing
        raise ValueError(f"{flag}.target_modules: {err} Name the linear layers to adapt (e.g. [q_proj, v_proj], or "
                         f"[all-linear])") from err
    rank_zero_info(summary(adapted))
    return adapted


def summary(model: nn.Module) -> str:
    """What the adapters are and how many parameters train, as the console and the model card say it."""
    config = model.peft_config["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    targets = ", ".join(sorted(config.target_modules)) if not isinstance(config.target_modules, str) else \
        config.target_modules
    return (f"LoRA adapters (r={config.r}, alpha={config.lora_alpha:g}, dropout={config.lora_dropout:g}) on {targets}: "
            f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%); the export merges them "
            f"into the base weights")


def merged(model: nn.Module) -> nn.Module:
    """A copy of an adapted model with the adapters merged into the base weights (plain ``transformers`` model)."""
    return copy.deepcopy(model).merge_and_unload()


def is_adapted(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")
