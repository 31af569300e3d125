"""The contracts between litembed's parts: what each side may rely on, checked where it is declared."""

import pytest

from cli_options import OPTIONS, option_defaults
from lightning_modules.base import EmbeddingModule
from losses import MultipleNegativesRankingLoss


def test_an_embedding_module_without_its_hooks_cannot_be_built():
    class NoEncoder(EmbeddingModule):
        pass

    with pytest.raises(TypeError, match="NoEncoder must define embed and export"):
        NoEncoder(loss=MultipleNegativesRankingLoss())


def test_the_card_reads_train_py_s_defaults_from_the_parser_train_py_builds(tiny_bert_dir, pairs_dir):
    """The defaults reporting compares a run's config.yaml with are the ones train.py's parser holds (a changed
    default cannot leave the card's "non-default hyperparameters" wrong)."""
    from train import cli_main

    cli = cli_main(["--trainer.logger=false", "--model=lightning_modules.text.TextEmbeddingModule",
                    "--model.encoder=lightning_modules.text_encoder.TextEncoder",
                    f"--model.encoder.model_name_or_path={tiny_bert_dir}", "--data=datamodules.pairs.PairDataModule",
                    f"--data.dataset={pairs_dir}"], run=False)
    parsed = cli.parser.get_defaults()
    defaults = option_defaults()
    assert {name: parsed[name] for name in OPTIONS} == {name: defaults[name] for name in OPTIONS}
    # the fit subcommand's own top-level keys in config.yaml: a fit that resumes nothing is not "non-default"
    assert defaults["ckpt_path"] is None and "weights_only" in defaults


def test_the_batch_key_constants_spell_the_batch_layouts_fields():
    """The collators, the model and the callbacks index batches by the constants; the TypedDicts declare the layouts:
    one spelling of each key."""
    from datamodules.batches import (EMBEDDINGS, FEATURES, IDS, LABELS, REPORT, ROWS, SOURCE, STREAM, EvalBatch,
                                     Prediction, TrainBatch)

    assert set(TrainBatch.__annotations__) == {FEATURES, ROWS, REPORT, SOURCE, LABELS}
    assert set(EvalBatch.__annotations__) == {STREAM, IDS, FEATURES}
    assert set(Prediction.__annotations__) == {STREAM, IDS, EMBEDDINGS}


def test_a_monitor_s_stage_and_the_card_s_primary_metric():
    from metrics.keys import stage_of
    from reporting.collect import _primary

    assert [stage_of(k) for k in ("val/dim_32_cosine_ndcg@10", "test/cosine_mrr@10", "val/loss", "train/loss",
                                  "epoch", "validation/x")] == ["val", "test", "val", None, None, None]
    assert _primary("val/dim_768_cosine_map@100") == "cosine_map@100"  # the bge seed's monitor
    assert _primary("val/loss") == _primary(None) == _primary("train/loss") == "cosine_ndcg@10"
