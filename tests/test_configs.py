import glob
import json
import os

import pytest
import yaml

from conftest import write_pairs_dir
from tests.commands import NO_EXPORT
from train import cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def print_config(path: str, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", path, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_shipped_config_parses(path, capsys):
    config = print_config(path, capsys)
    assert isinstance(config["seed_everything"], int)
    assert config["trainer"]["use_distributed_sampler"] is False


def test_bge_seed_recipe_hyperparameters(capsys):
    config = print_config(os.path.join(ROOT, "configs", "bge_base_matryoshka.yaml"), capsys)
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert (trainer["max_epochs"], trainer["accumulate_grad_batches"], trainer["gradient_clip_val"]) == (4, 16, 1.0)
    assert trainer["precision"] == "32-true"
    encoder = model["encoder"]["init_args"]
    assert encoder["model_name_or_path"] == "BAAI/bge-base-en-v1.5" and encoder["pooling"] == "cls"
    assert encoder["max_length"] == 512 and encoder["normalize"] is True
    assert (model["lr"], model["weight_decay"], model["lr_schedule"], model["warmup_ratio"]) == (2e-5, 0.0, "cosine", 0.1)
    assert (model["betas"], model["eps"]) == ([0.9, 0.999], 1e-8)
    loss = model["loss"]["init_args"]
    assert loss["dims"] == [768, 512, 256, 128, 64] and loss["weights"] == [1, 1, 1, 1, 1]
    assert loss["loss"]["init_args"]["scale"] == 20.0 and loss["loss"]["init_args"]["similarity"] == "cosine"
    assert (data["batch_size"], data["eval_batch_size"], data["no_duplicates"]) == (32, 16, True)
    assert data["columns"] == ["positive", "anchor"]
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/dim_768_cosine_map@100"


def test_clip_seed_recipe_hyperparameters(capsys):
    config = print_config(os.path.join(ROOT, "configs", "clip_vit_l14_coco.yaml"), capsys)
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert (trainer["max_epochs"], trainer["precision"], trainer["val_check_interval"]) == (1, "bf16-mixed", 63)
    assert trainer["gradient_clip_val"] == 1.0
    assert model["encoder"]["init_args"]["model_name_or_path"] == "openai/clip-vit-large-patch14"
    assert (model["lr"], model["weight_decay"], model["lr_schedule"], model["warmup_ratio"]) == (2e-5, 0.0, "linear", 0.1)
    assert model["loss"]["init_args"]["scale"] == 20.0 and not model["learn_logit_scale"]
    assert (data["dataset"], data["batch_size"], data["no_duplicates"]) == ("jxie/coco_captions", 16, True)
    assert (data["max_train_rows"], data["max_eval_rows"], data["streaming"]) == (10000, 1000, True)
    assert (data["val_name"], data["test_name"], data["columns"]) == ("coco-eval", "coco-test", ["image", "caption"])


@pytest.mark.parametrize("recipe", ["configs/demo/text.yaml", "configs/demo/clip.yaml", "configs/demo/mixture.yaml"])
def test_recipe_fast_dev_run(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written outside the run directory
    cli = cli_main(["fit", "--config", os.path.join(ROOT, recipe), "--trainer.fast_dev_run=1",
                    "--data.num_workers=0", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert os.listdir(tmp_path) == []


def test_bge_seed_recipe_on_local_directories(tmp_path, tiny_bert_dir, pairs_dir):
    """The seed config unchanged but for paths (a hub-like model snapshot and data directory) and a tiny model's dims."""
    cli = cli_main(["fit", "--config", os.path.join(ROOT, "configs", "bge_base_matryoshka.yaml"),
                    f"--model.init_args.encoder.init_args.model_name_or_path={tiny_bert_dir}", f"--data.init_args.dataset={pairs_dir}",
                    "--model.init_args.loss.init_args.dims=[32, 16, 8, 4, 2]", "--data.init_args.num_workers=0",
                    '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
                    '"init_args": {"monitor": "val/dim_32_cosine_map@100", "mode": "max"}}]',
                    "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false"])
    metrics = cli.model.history[-1][1]
    assert {f"val/dim_{d}_cosine_map@100" for d in (32, 16, 8, 4, 2)} <= set(metrics)
    assert cli.trainer.global_step == 1  # 48 rows / 32 per batch = 2 batches, accumulated 16 → one optimizer step
    assert os.path.exists(os.path.join(cli.trainer.log_dir, "model", "modules.json"))


def test_bge_seed_recipe_trains_on_several_sources_by_flag(tmp_path, tiny_bert_dir, pairs_dir):
    """The seed config with two sources named by one flag: each evaluated under its name, their mean monitored."""
    other = write_pairs_dir(tmp_path / "other", train=40, validation=12, test=12)
    sources = {"finance": {"dataset": pairs_dir}, "other": {"dataset": other, "max_train_rows": 32}}
    cli = cli_main(["fit", "--config", os.path.join(ROOT, "configs", "bge_base_matryoshka.yaml"),
                    f"--model.init_args.encoder.init_args.model_name_or_path={tiny_bert_dir}",
                    f"--data.init_args.sources={json.dumps(sources)}",
                    "--model.init_args.loss.init_args.dims=[32, 16, 8, 4, 2]", "--data.init_args.num_workers=0",
                    '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
                    '"init_args": {"monitor": "val/mean_dim_32_cosine_map@100", "mode": "max"}}]',
                    "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false", "--export.dirpath=null"])
    metrics = cli.model.history[-1][1]
    assert {f"val/{name}_dim_{d}_cosine_map@100" for name in ("finance", "other", "mean") for d in (32, 2)} <= set(
        metrics)
    assert cli.datamodule.sources["other"].hparams.columns == ["positive", "anchor"]  # the recipe's, inherited
    assert cli.trainer.global_step == 1  # 2 + 1 batches of 32, accumulated 16: one optimizer step


@pytest.fixture()
def coco_like(tmp_path):
    """A model snapshot and a dataset repository laid out like openai/clip-vit-large-patch14 and jxie/coco_captions."""
    import io

    import datasets
    from PIL import Image

    from lightning_modules.clip_backends import TransformersClip
    from tests.tiny import TINY_HF_CLIP_CONFIG

    model_dir = str(tmp_path / "clip-model")
    backend = TransformersClip(config=TINY_HF_CLIP_CONFIG)
    backend.model.save_pretrained(model_dir)
    backend.processor.hf_processor.save_pretrained(model_dir)

    features = datasets.Features({"image": datasets.Image(), "filename": datasets.Value("string"),
                                  "cocoid": datasets.Value("int32"), "caption": datasets.Value("string")})
    os.makedirs(tmp_path / "coco" / "data")
    for split, n_images in (("train", 8), ("validation", 4), ("test", 4)):
        rows = []
        for i in range(n_images):
            buffer = io.BytesIO()
            Image.new("RGB", (40 + i, 30), (30 * i, 255 - 30 * i, 90)).save(buffer, format="JPEG")
            for c in range(5):  # five captions per COCO image
                rows.append({"image": {"bytes": buffer.getvalue(), "path": None}, "filename": f"{split}_{i}.jpg",
                             "cocoid": 1000 * len(split) + i, "caption": f"picture {i} of {split}, caption {c}"})
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "coco" / "data" / f"{split}-00000-of-00001.parquet"))
    return model_dir, str(tmp_path / "coco")


def fit_clip_seed(tmp_path, coco_like, *extra):
    """The COCO seed recipe on the local stand-ins, evaluated after every step."""
    model_dir, data_dir = coco_like
    return cli_main(["fit", "--config", os.path.join(ROOT, "configs", "clip_vit_l14_coco.yaml"),
                     f"--model.init_args.encoder.init_args.model_name_or_path={model_dir}",
                     f"--data.init_args.dataset={data_dir}", "--data.init_args.num_workers=0",
                     "--trainer.val_check_interval=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
                     "--trainer.enable_progress_bar=false", *extra])


def test_clip_seed_recipe_on_local_directories(tmp_path, coco_like):
    cli = fit_clip_seed(tmp_path, coco_like, "--data.init_args.batch_size=8")
    # streamed: 8 images × 5 captions = 40 rows (from the parquet footers) make 5 batches of 8 distinct images;
    # evaluated before training + every step
    assert [step for step, _ in cli.model.history] == [-1, 1, 2, 3, 4, 5]
    assert "train" not in cli.datamodule.splits  # the training split was streamed, never loaded whole
    keys = cli.trainer.callback_metrics
    assert "test/coco-test_cosine_ndcg@10" in keys and "test/coco-test-image2text_cosine_ndcg@10" in keys
    # caption → image: one relevant image per caption, so precision@3 = accuracy@3 / 3 (as in the card)
    assert keys["test/coco-test_cosine_precision@3"].item() == pytest.approx(keys["test/coco-test_cosine_accuracy@3"].item() / 3)
    assert os.path.exists(os.path.join(cli.trainer.log_dir, "model", "sentence_bert_config.json"))


def test_clip_seed_recipe_map_style(tmp_path, coco_like):
    cli = fit_clip_seed(tmp_path, coco_like, "--data.init_args.streaming=false", NO_EXPORT)
    # 8 images × 5 captions: no batch holds an image twice, so 5 batches of 8 (the batch size is 16)
    assert [step for step, _ in cli.model.history] == [-1, 1, 2, 3, 4, 5]
    assert len(cli.datamodule.splits["train"]) == 40


def qwen3_embedding_like(directory, texts) -> str:
    """A model repository laid out like Qwen/Qwen3-Embedding-0.6B: a causal-LM checkpoint (weights under ``model.``,
    an LM head), its tokenizer, padded left, and sentence-transformers' files (last-token Pooling, the query prompt)."""
    import json

    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tests.tiny import write_decoder_dir

    write_decoder_dir(str(directory), texts)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(directory)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                 max_position_embeddings=256)).save_pretrained(directory)
    files = {"modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                              {"idx": 2, "name": "2", "path": "2_Normalize",
                               "type": "sentence_transformers.models.Normalize"}],
             "1_Pooling/config.json": {"word_embedding_dimension": 32, "pooling_mode_lasttoken": True,
                                       "include_prompt": True},
             "config_sentence_transformers.json": {"prompts": {"query": "Instruct: Given a web search query, retrieve "
                                                               "relevant passages that answer the query\nQuery:",
                                                               "document": ""}}}
    for name, content in files.items():
        os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
        with open(os.path.join(directory, name), "w") as f:
            json.dump(content, f)
    return str(directory)


def test_qwen3_embedding_lora_recipe_on_local_directories(tmp_path, pairs_dir):
    """The recipe unchanged but for paths (a hub-like snapshot of a tiny Qwen3 decoder and a data directory), the dims
    of a 32-wide model, and the precision a CPU runs: LoRA adapters train, the export loads in plain
    SentenceTransformer and embeds queries, instruction included, as the trained module does."""
    import torch
    from sentence_transformers import SentenceTransformer

    from conftest import qa_rows

    texts = [t for r in qa_rows(300) for t in r.values()] + [
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"]
    model_dir = qwen3_embedding_like(tmp_path / "Qwen3-Embedding-0.6B", texts)
    cli = cli_main(["fit", "--config", os.path.join(ROOT, "configs", "qwen3_embedding_lora.yaml"),
                    f"--model.init_args.encoder.init_args.model_name_or_path={model_dir}",
                    f"--data.init_args.dataset={pairs_dir}", "--model.init_args.loss.init_args.dims=[32, 16, 8, 4]",
                    "--data.init_args.batch_size=16", "--data.init_args.num_workers=0",
                    "--model.init_args.gradcache_chunk_size=4", "--trainer.precision=32-true",
                    '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
                    '"init_args": {"monitor": "val/dim_32_cosine_ndcg@10", "mode": "max"}}]',
                    f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.global_step == 3 and cli.model.encoder.adapter_summary
    export = os.path.join(cli.trainer.log_dir, "model")
    queries = [r["anchor"] for r in qa_rows(4, offset=200)]
    module = cli.model.eval()
    with torch.no_grad():
        ours = module.embed(module.processor(queries, "query"))
    theirs = SentenceTransformer(export, device="cpu").encode(queries, prompt_name="query", convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
