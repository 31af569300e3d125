import glob
import os

import pytest
import yaml

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
    assert model["model_name_or_path"] == "BAAI/bge-base-en-v1.5" and model["pooling"] == "cls"
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
    assert (data["max_train_rows"], data["max_eval_rows"]) == (10000, 1000)
    assert (data["val_name"], data["test_name"], data["columns"]) == ("coco-eval", "coco-test", ["image", "caption"])
