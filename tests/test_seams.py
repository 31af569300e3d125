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
