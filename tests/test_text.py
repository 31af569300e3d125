import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import qa_rows, write_jsonl
from datamodules.pairs import PairDataModule
from lightning_modules.text import TextEmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from losses import MatryoshkaLoss, MultipleNegativesRankingLoss
from tests.commands import text_recipe, train_args
from tests.tiny import TINY_BERT
from train import cli_main


def fit_args(tmp_path, model_dir, data_dir, dims, monitor, extra=()):
    return train_args(*text_recipe(model_dir, data_dir), "--trainer.devices=1",
                      "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
                      f"--trainer.callbacks.monitor={monitor}", "--trainer.callbacks.mode=max",
                      "--model.encoder.max_length=64", "--model.lr=1e-4", f"--model.loss.dims={json.dumps(dims)}",
                      "--data.eval_batch_size=7", *extra, save_dir=tmp_path)


def test_fit_exports_a_model_sentence_transformers_loads(tmp_path, minilm_path, pairs_dir):
    """End to end on the real MiniLM: base + final evaluation, test after fit, ST-format export that reproduces the
    module's embeddings, and validation metrics equal to ST's own InformationRetrievalEvaluator on that export."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    cli = cli_main(fit_args(tmp_path, minilm_path, pairs_dir, [384, 64], "val/dim_384_cosine_ndcg@10"))
    module, dm = cli.model, cli.datamodule
    assert [step for step, _ in module.history] == [-1, module.global_step] and module.global_step == 6
    assert "test/dim_64_cosine_map@100" in cli.trainer.callback_metrics

    export = os.path.join(cli.trainer.log_dir, "model")
    st = SentenceTransformer(export, device="cpu")
    texts = dm.streams["val"]["corpus"][:5]
    module.eval()
    with torch.no_grad():
        ours = module.encoder(module.processor(texts))
    theirs = st.encode(texts, convert_to_tensor=True)
    assert F.cosine_similarity(ours, theirs).min() >= 0.9999

    streams, task = dm.streams["val"], dm.retrieval_tasks("val")[0]
    final = module.history[-1][1]
    for dim in (384, 64):
        evaluator = InformationRetrievalEvaluator(
            queries={str(i): q for i, q in enumerate(streams["query"])},
            corpus={str(i): d for i, d in enumerate(streams["corpus"])},
            relevant_docs={str(i): {str(d) for d in rel} for i, rel in enumerate(task.relevant)},
            name=f"dim_{dim}", truncate_dim=dim, batch_size=7)
        reference = evaluator(st)
        for key, value in reference.items():
            if key.startswith(f"dim_{dim}_cosine_"):
                assert final[f"val/{key}"] == pytest.approx(value, abs=1e-5), key


def test_encoder_runs_once_per_column_whatever_the_matryoshka_dims(tiny_bert_dir, pairs_dir):
    module = TextEmbeddingModule(TextEncoder(tiny_bert_dir), loss=MatryoshkaLoss(MultipleNegativesRankingLoss(), [32, 16, 8, 4]))
    dm = PairDataModule(pairs_dir, batch_size=8, num_workers=0)
    dm.connect(module.data_needs())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    calls = []
    module.encoder.model.register_forward_hook(lambda *a: calls.append(1))
    loss = module.loss(*(module.embed(f) for f in batch["features"]))
    loss.backward()
    assert len(calls) == 2  # anchor and positive columns, not 2 × 4 dims


def test_matryoshka_dim_larger_than_model(tiny_bert_dir):
    with pytest.raises(ValueError, match="dims: 64 is larger than the model's embedding size 32"):
        TextEmbeddingModule(TextEncoder(tiny_bert_dir), loss=MatryoshkaLoss(MultipleNegativesRankingLoss(), [64, 32]))


def test_random_init_from_config(minilm_path):
    encoder = TextEncoder(config=TINY_BERT, tokenizer_name_or_path=minilm_path, pooling="cls")
    emb = encoder(encoder.processor(["a query", "another longer query text"], "query"))
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_prompts_are_prepended_by_role(tiny_bert_dir):
    module = TextEmbeddingModule(TextEncoder(tiny_bert_dir, prompts={"query": "query: ", "document": "passage: "}))
    tok = module.processor.tokenizer
    assert tok.decode(module.processor(["x"], "query")["input_ids"][0], skip_special_tokens=True) == "query : x"
    assert tok.decode(module.processor(["x"], "document")["input_ids"][0], skip_special_tokens=True) == "passage : x"


def setup_dm(module, **kwargs):
    dm = PairDataModule(**{"num_workers": 0, **kwargs})
    dm.connect(module.data_needs())
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def tiny_module(tiny_bert_dir):
    return TextEmbeddingModule(TextEncoder(tiny_bert_dir))


def test_missing_column_names_it_and_the_columns_found(tiny_module, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q one here", "answer": "a one"}] * 3)
    with pytest.raises(ValueError, match=r"column\(s\) \['anchor', 'positive'\] not found; columns found: \['question', 'answer'\]"):
        setup_dm(tiny_module, dataset=path, val_split=None)


def test_empty_text_names_the_row(tiny_module, tmp_path):
    rows = qa_rows(5)
    rows[3]["positive"] = "   "
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError, match=r"pairs.jsonl \(train split\): 1 row has an empty or missing 'positive' "
                                         r"\(e.g. '   '\): line 4 of \S+/pairs.jsonl"):
        setup_dm(tiny_module, dataset=path, val_split=None)


def test_none_text_names_the_row(tiny_module, tmp_path):
    rows = qa_rows(5)
    rows[1]["anchor"] = None
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError, match=r"1 row has an empty or missing 'anchor' \(e.g. None\): line 2 of "):
        setup_dm(tiny_module, dataset=path, val_split=None)


def test_batch_too_small_for_in_batch_negatives():
    with pytest.raises(ValueError, match="--data.init_args.batch_size must be ≥ 2 for in-batch negatives, got 1"):
        PairDataModule(batch_size=1)


def test_unknown_dataset_path(tiny_module):
    with pytest.raises(ValueError, match="--data.init_args.dataset 'no/such-dataset-here' is not a file, not a "
                                         "directory"):
        setup_dm(tiny_module, dataset="no/such-dataset-here")


def test_missing_validation_split_explains_eval_naming(tiny_module, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(10))
    write_jsonl(tmp_path / "eval.jsonl", qa_rows(4))  # HF datasets files "eval" under the test split
    with pytest.raises(ValueError, match=r"--data.init_args.val_split 'validation': split not found .* splits found: "
                                         r"\['test', 'train'\]"):
        setup_dm(tiny_module, dataset=str(tmp_path))


def test_local_directory_splits_and_retrieval_streams(tiny_module, pairs_dir):
    dm = setup_dm(tiny_module, dataset=pairs_dir, test_split="test", corpus_from_train=True)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 48, "validation": 20, "test": 20}
    streams, task = dm.streams["val"], dm.retrieval_tasks("val")[0]
    assert len(streams["query"]) == 20 and len(streams["corpus"]) == 20 + 48
    assert all(streams["corpus"][next(iter(rel))].startswith(f"Passage {100 + q}:") for q, rel in enumerate(task.relevant))


def test_val_carved_from_single_file_with_seed(tiny_module, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", qa_rows(40))
    a = setup_dm(tiny_module, dataset=path, val_size=10, seed=1)
    b = setup_dm(tiny_module, dataset=path, val_size=10, seed=1)
    assert len(a.splits["train"]) == 30 and a.streams["val"] == b.streams["val"]


def test_train_batches_never_repeat_a_text(tiny_module, tmp_path):
    rows = qa_rows(30) + [{"anchor": "How do I handle sorting lists case 0?", "positive": f"dup passage {i}"}
                          for i in range(10)]
    dm = setup_dm(tiny_module, dataset=write_jsonl(tmp_path / "p.jsonl", rows), val_split=None, batch_size=8)
    sampler = dm.train_dataloader().batch_sampler
    for batch in sampler:
        anchors = [dm.splits["train"][i]["anchor"] for i in batch]
        assert len(set(anchors)) == len(anchors)


def test_predict_embeds_every_item_of_each_stream(tiny_bert_dir, pairs_dir):
    import lightning as L

    module = TextEmbeddingModule(TextEncoder(tiny_bert_dir))
    dm = PairDataModule(pairs_dir, test_split="test", num_workers=0, eval_batch_size=6)
    dm.connect(module.data_needs())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    batches = [b for loader in trainer.predict(module, datamodule=dm) for b in loader]
    for stream in ("query", "corpus"):
        ids = torch.cat([b["ids"] for b in batches if b["stream"] == stream])
        assert sorted(ids.tolist()) == list(range(len(dm.streams["test"][stream])))
        assert all(b["embeddings"].shape[1] == 32 for b in batches)


def test_setup_before_connect_says_to_connect_the_model(pairs_dir):
    with pytest.raises(ValueError, match=r"^PairDataModule has no processor to build batches with: call "
                                         r"datamodule\.connect\(model\.data_needs\(\)\) before trainer\.fit"):
        PairDataModule(pairs_dir, num_workers=0).setup("fit")


def test_fit_trains_with_dropout_like_st(tiny_bert_dir):
    """HF loads pretrained models in eval mode; without setup("fit") switching back, dropout would be off."""
    module = TextEmbeddingModule(TextEncoder(tiny_bert_dir))
    assert not module.encoder.model.training  # what from_pretrained hands over
    module.setup("fit")
    assert all(m.training for m in module.modules())


@pytest.mark.parametrize("device, devices, cores, expected", [
    ("cpu", 1, 2, 0),  # on a CPU a worker would take a core from the model
    ("cuda", 1, 16, 4),
    ("cuda", 8, 16, 1),
    ("cuda", 1, 2, 1),
])
def test_workers_default_to_none_on_cpu_and_a_few_per_gpu(pairs_dir, monkeypatch, device, devices, cores, expected):
    from types import SimpleNamespace

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    dm = PairDataModule(pairs_dir)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), num_devices=devices)
    options = dm.loader_options()
    assert isinstance(options.pop("generator"), torch.Generator)  # workers' seeds leave the global generator alone
    assert options == {"num_workers": expected, "persistent_workers": expected > 0, "pin_memory": device == "cuda"}
    dm.hparams.num_workers = 3  # an explicit --data.num_workers wins
    assert dm.loader_options()["num_workers"] == 3


def test_evaluation_loaders_are_built_once_and_keep_their_workers(tiny_module, pairs_dir):
    dm = setup_dm(tiny_module, dataset=pairs_dir, test_split="test", num_workers=1)
    first = dm.val_dataloader()
    assert dm.val_dataloader() is first and all(loader.persistent_workers for loader in first)
    assert dm.test_dataloader() is not first  # a stage of its own
    batch = next(iter(first[0]))
    assert batch["stream"] == "query" and batch["features"]["input_ids"].shape[0] == min(64, len(dm.streams["val"]["query"]))
