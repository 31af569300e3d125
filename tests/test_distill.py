"""Distillation from a teacher's scores in the data: MarginMSELoss and DistillKLDivLoss equal sentence-transformers'
(values and gradients, float64), a whole fit on a scores column, and the refusals of a loss without scores or scores
without a loss that reads them."""

import json

import pytest
import torch

from conftest import qa_rows, write_jsonl
from losses import DistillKLDivLoss, MarginMSELoss, MatryoshkaLoss
from test_losses import EmbeddingsModel, assert_same_loss_and_grads, embeddings
from tests.commands import NO_EXPORT, logged_rows, text_recipe, train_args
from train import cli_main


@pytest.fixture(scope="module")
def st():
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    return losses, util


def st_call(st_loss, labels):
    return lambda inputs: st_loss([{"embedding": e} for e in inputs], labels)


@pytest.mark.parametrize("negatives", [1, 3])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_margin_mse_matches_sentence_transformers(st, negatives, similarity):
    losses, util = st
    fct = {"dot": util.pairwise_dot_score, "cosine": util.pairwise_cos_sim}[similarity]
    generator = torch.Generator().manual_seed(negatives)
    inputs = embeddings(2 + negatives)
    for labels in (torch.randn(8, negatives + 1, dtype=torch.float64, generator=generator),  # scores
                   torch.randn(8, negatives, dtype=torch.float64, generator=generator)):  # margins
        ours, theirs = MarginMSELoss(similarity), losses.MarginMSELoss(EmbeddingsModel(16), similarity_fct=fct)
        assert_same_loss_and_grads(lambda x: ours(*x, labels=labels), st_call(theirs, labels), inputs)
        assert ours.get_config_dict() == theirs.get_config_dict()


@pytest.mark.parametrize("options", [{}, {"temperature": 2.0}, {"student_temperature": 0.5, "teacher_temperature": 3.0}])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_distill_kl_div_matches_sentence_transformers(st, options, similarity):
    losses, util = st
    fct = {"dot": util.pairwise_dot_score, "cosine": util.pairwise_cos_sim}[similarity]
    labels = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # 3 candidates
    ours = DistillKLDivLoss(similarity, **options)
    theirs = losses.DistillKLDivLoss(EmbeddingsModel(16), similarity_fct=fct, **options)
    assert_same_loss_and_grads(lambda x: ours(*x, labels=labels), st_call(theirs, labels), embeddings(4))
    assert ours.get_config_dict() == theirs.get_config_dict()


def test_matryoshka_passes_the_teacher_scores_on(st):
    losses, util = st
    labels = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = MatryoshkaLoss(MarginMSELoss(), [16, 4])
    model = EmbeddingsModel(16)
    theirs = losses.MatryoshkaLoss(model, losses.MarginMSELoss(model), [16, 4])
    assert ours.takes_labels
    assert_same_loss_and_grads(lambda x: ours(*x, labels=labels), st_call(theirs, labels), embeddings(3))


def scored_rows(n: int, offset: int = 0) -> list[dict]:
    """(anchor, positive, negative) with a teacher's scores [positive, negative]."""
    rows = qa_rows(n + 1, offset)
    return [{"anchor": r["anchor"], "positive": r["positive"], "negative": rows[i + 1]["positive"],
             "scores": [8.0 + (i % 3), 2.0 - (i % 2)]} for i, r in enumerate(rows[:n])]


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("scored")
    write_jsonl(directory / "train.jsonl", scored_rows(48))
    write_jsonl(directory / "validation.jsonl", qa_rows(16, offset=1000))
    return str(directory)


DISTILL = ["--data.columns=[anchor, positive, negative]", "--data.score_column=scores", "--data.test_split=null"]


@pytest.mark.parametrize("loss", ["losses.MarginMSELoss", "losses.DistillKLDivLoss"])
def test_a_fit_distils_the_scores_column(tmp_path, tiny_bert_dir, scored, loss):
    cli_main(train_args(*text_recipe(tiny_bert_dir, scored), *DISTILL, f"--model.loss.loss={loss}",
                        "--trainer.logger.name=distil", save_dir=tmp_path))
    run_dir = tmp_path / "distil" / "version_0"
    trained = [float(row["train/loss"]) for row in logged_rows(run_dir) if row.get("train/loss")]
    # 48 rows in batches of 8 (a row's negative is the next row's positive: no-duplicate batches need a 7th batch)
    assert len(trained) == 7 and all(value == value for value in trained)
    card = (run_dir / "model" / "README.md").read_text()
    assert f'"loss": "{loss.split(".")[1]}"' in card and "pairwise_dot_score" not in card  # (Matryoshka's parameters)
    assert {"losses.MarginMSELoss": "@misc{hofstätter2021improving,",
            "losses.DistillKLDivLoss": "@misc{lin2020distillingdenserepresentationsranking,"}[loss] in card


def test_a_distillation_loss_needs_scores_and_scores_need_one(capsys, tiny_bert_dir, scored):
    flags = [*text_recipe(tiny_bert_dir, scored), "--data.columns=[anchor, positive, negative]",
             "--data.test_split=null", "--trainer.fast_dev_run=1", NO_EXPORT]
    for extra, said in [(["--model.loss.loss=losses.MarginMSELoss"], "MarginMSELoss (in MatryoshkaLoss) distils a "
                         "teacher's scores, and "
                         "the data has none: name the column holding them with --data.init_args.score_column"),
                        (["--data.score_column=scores"], "the data has teacher scores (--data.init_args.score_column) "
                         "but the loss MultipleNegativesRankingLoss (in MatryoshkaLoss) does not read them"),
                        (["--data.score_column=anchor"], "--data.init_args.score_column 'anchor' is one of "
                         "--data.init_args.columns")]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", *flags, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and said in err, err


def test_a_streamed_row_without_scores_is_skipped_and_named(tmp_path):
    from datamodules.pairs import PairDataModule
    from datamodules.sources import BadRow

    dm = PairDataModule(dataset=str(tmp_path), columns=["anchor", "positive", "negative"], score_column="scores",
                        streaming=True)
    row = scored_rows(1)[0]
    assert dm.admit(row) == (row["anchor"], row["positive"], row["negative"])
    for scores in (None, ["high", 1.0], [float("nan")], []):
        with pytest.raises(BadRow, match="score_column 'scores' holds"):
            dm.admit({**row, "scores": scores})


def test_map_style_rows_with_missing_or_uneven_scores_are_named_at_start_up(tmp_path, tiny_bert_dir):
    from datamodules.contract import DataNeeds
    from datamodules.pairs import PairDataModule

    rows = scored_rows(20)
    rows[4]["scores"] = [1.0]  # one score short
    rows[9]["scores"] = None
    write_jsonl(tmp_path / "train.jsonl", rows)
    dm = PairDataModule(dataset=str(tmp_path / "train.jsonl"), columns=["anchor", "positive", "negative"],
                        score_column="scores", val_split=None, num_workers=0)
    dm.connect(DataNeeds(lambda texts, role, prompt=None: {}))
    with pytest.raises(ValueError, match=r"2 row\(s\) have missing, NaN or a different number of teacher scores in "
                                         r"--data.init_args.score_column 'scores' than the first row: lines 5, 10 of"):
        dm.setup("fit")
    rows[19]["scores"] = None  # the last row too (no score after it)
    write_jsonl(tmp_path / "last.jsonl", rows)
    dm = PairDataModule(dataset=str(tmp_path / "last.jsonl"), columns=["anchor", "positive", "negative"],
                        score_column="scores", val_split=None, num_workers=0)
    dm.connect(DataNeeds(lambda texts, role, prompt=None: {}))
    with pytest.raises(ValueError, match=r"3 row\(s\) .* lines 5, 10, 20 of"):
        dm.setup("fit")
