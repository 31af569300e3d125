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
