"""Tiny model configs for tests and CPU smoke runs: 2 layers, width 32, random init, nothing downloaded.

A forward and backward of 8 pairs takes milliseconds on a CPU. Importable as ``tests.tiny`` from the checkout (the
benchmarks' ``--tiny`` runs use these too) without importing the tests' conftest.
"""

TINY_BERT: dict = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 128}
# a decoder embedder's shape (Qwen2: grouped-query attention, RMSNorm, rotary positions); vocab_size set by the tokenizer
TINY_QWEN2: dict = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
# lightning_modules.clip_backends.TransformersClip(config=…)
TINY_HF_CLIP_CONFIG: dict = {
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 77, "vocab_size": 49408},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8},
    "projection_dim": 32,
}
# lightning_modules.clip_backends.OpenClip(model_cfg=…)
TINY_OPEN_CLIP_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_decoder_dir(directory: str, texts: list[str], **config) -> str:
    """A random-init Qwen2 decoder (``TINY_QWEN2`` with ``config`` overrides) laid out like a hub snapshot, with a
    byte-level BPE tokenizer trained on ``texts`` (400 tokens; what transformers rebuilds as a ``Qwen2Tokenizer``):
    its end-of-sequence token is ``<|endoftext|>``, which, like Qwen's, it does not append."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(directory)
    settings = {**TINY_QWEN2, **config, "vocab_size": backend.get_vocab_size()}
    AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).save_pretrained(directory)
    return directory
