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


def add_lora(model: nn.Module, options: LoRA, flag: str, targets: str | list[str] | None = None) -> nn.Module:
    """``model`` with LoRA adapters (a ``peft.PeftModel``); every other weight frozen. ``targets``: what to adapt when
    the caller decides it (a regular expression over module names, e.g. one tower's layers); default: the options'
    ``target_modules``, else peft's choice for the architecture."""
    from peft import LoraConfig, get_peft_model

    if options.r < 1:
        raise ValueError(f"{flag}.r must be ≥ 1 (the adapters' rank), got {options.r}")
    if not 0 <= options.dropout < 1:
        raise ValueError(f"{flag}.dropout must be in [0, 1), got {options.dropout}")
    if targets is None:
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


def summary(model: nn.Module) -> str | None:
    """What the adapters are and how many parameters train, as the console and the model card say it; None for a
    model without adapters (full fine-tuning)."""
    if not is_adapted(model):
        return None
    from peft.tuners.lora import LoraLayer

    config = model.peft_config["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    kinds = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in adapted}))
    return (f"LoRA adapters (r={config.r}, alpha={config.lora_alpha:g}, dropout={config.lora_dropout:g}) on "
            f"{len(adapted)} layers ({kinds}): {trainable:,} of {total:,} parameters train "
            f"({100 * trainable / total:.2f}%)")


EXPORT_FORMS = ("merged", "separate")


def export_sentence(form: str) -> str:
    """How the card says the adapters were exported (``--export.adapters``)."""
    if form == "separate":
        return ("The export holds the adapters alone (peft's adapter_config.json and adapter_model.safetensors): "
                "`SentenceTransformer(path)` loads them onto the base model named there, with `peft` installed.")
    return "The export has them merged into the base weights: it loads as a plain model, without `peft`."


def tower_targets(options: LoRA, towers: list[str], prefixes: dict[str, str], default: list[str],
                  all_linear: list[str], flag: str) -> str:
    """A regular expression for peft matching the layers named in ``options.target_modules`` (default ``default``;
    ``["all-linear"]``: ``all_linear``) inside the chosen ``towers``, each tower's modules starting with its prefix."""
    import re

    unknown = sorted(set(towers) - set(prefixes))
    if not towers or unknown:
        raise ValueError(f"{flag}: lora_towers must name some of {sorted(prefixes)}, got {towers}")
    names = options.target_modules or default
    if names == ["all-linear"]:
        names = all_linear
    scope = "|".join(re.escape(prefixes[t]) for t in towers)
    return rf"({scope})\..*\.({'|'.join(re.escape(n) for n in names)})"


def exportable(model: nn.Module) -> nn.Module:
    """The model to save: an adapted one as a copy with the adapters merged into the base weights (a plain model that
    loads without peft), any other as it is."""
    return copy.deepcopy(model).merge_and_unload() if is_adapted(model) else model


def is_adapted(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")
