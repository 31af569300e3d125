"""Whole `train.py` runs of a recipe with several sources (``--data.init_args.sources``): each source evaluated and
logged on its own and carded, errors naming the source, a streamed mixture killed and resumed equal to the
uninterrupted run."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import qa_rows, write_jsonl
from test_resume import interrupt, logged
from tests.commands import clip_recipe, logged_rows, run_train, text_recipe, train_args
from train import cli_main


def triplets(n: int, offset: int = 0) -> list[dict]:
    """A source of its own columns, with a hard negative: (q, pos, neg)."""
    return [{"q": f"what does widget {i + offset} do", "pos": f"widget {i + offset} frobnicates the {i % 7} gizmo",
             "neg": f"widget {i + offset + 1} polishes the {i % 5} gadget"} for i in range(n)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """Two sources: a pairs folder with validation and test splits (two train files: two stream shards), and a
    triplets file whose validation rows are held out."""
    qa = tmp_path_factory.mktemp("mixture-qa")
    write_jsonl(qa / "train-00000-of-00002.jsonl", qa_rows(48))
    write_jsonl(qa / "train-00001-of-00002.jsonl", qa_rows(48, offset=48))
    write_jsonl(qa / "validation.jsonl", qa_rows(16, offset=1000))
    write_jsonl(qa / "test.jsonl", qa_rows(16, offset=2000))
    trip = tmp_path_factory.mktemp("mixture-trip") / "trip.jsonl"
    write_jsonl(trip, triplets(72))
    return {"qa": str(qa), "trip": str(trip)}


def mixture_flags(sources: dict[str, str], qa: dict | None = None, trip: dict | None = None) -> list[str]:
    spec = {"qa": {"dataset": sources["qa"], **(qa or {})},
            "trip": {"dataset": sources["trip"], "columns": ["q", "pos", "neg"], "val_size": 16, "test_split": None,
                     **(trip or {})}}
    return [f"--data.sources={json.dumps(spec)}"]


OWN_LOSS = {"trip": {"class_path": "losses.MultipleNegativesRankingLoss", "init_args": {
    "scale": 30, "directions": ["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"],
    "hardness_mode": "hard_negatives", "hardness_strength": 5.0}}}


def test_each_source_is_evaluated_logged_and_carded(tmp_path, tiny_bert_dir, sources):
    args = train_args(*text_recipe(tiny_bert_dir, sources["qa"]),
                      *mixture_flags(sources, trip={"prompts": {"q": "query: "}}), "--data.batch_size=16",
                      f"--model.source_losses={json.dumps(OWN_LOSS)}", "--trainer.logger.name=mix", save_dir=tmp_path)
    cli_main(args)
    run_dir = tmp_path / "mix" / "version_0"
    rows = logged_rows(run_dir)
    trained = [row for row in rows if row.get("train/loss")]
    # qa: 96 rows, 6 batches of 16; trip: 72 - 16 held out = 56 rows, 3 batches of 16 and one of 8
    assert len(trained) == 6 + 4
    for row in trained:  # one batch per step, from one source: the step's loss is that source's
        (source,) = [key for key in ("train/qa_loss", "train/trip_loss") if row.get(key)]
        assert float(row[source]) == float(row["train/loss"])
    assert sum(bool(row.get("train/trip_loss")) for row in trained) == 4
    last = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith(("val/", "test/"))}
    for dim in (32, 8):
        qa, trip = last[f"val/qa_dim_{dim}_cosine_ndcg@10"], last[f"val/trip_dim_{dim}_cosine_ndcg@10"]
        assert last[f"val/mean_dim_{dim}_cosine_ndcg@10"] == pytest.approx((qa + trip) / 2, abs=1e-6)
        assert f"val/qa_dim_{dim}_cosine_ndcg@10_base" in last and f"val/mean_dim_{dim}_cosine_map@100_base" in last
    assert "test/qa_dim_32_cosine_ndcg@10" in last and not any(k.startswith("test/trip") for k in last)
    card = (run_dir / "model" / "README.md").read_text()
    assert "### Training Datasets" in card and "#### qa (mixture-qa0)" in card and "#### trip (trip.jsonl)" in card
    assert "* Size: 96 training samples" in card and "* Size: 56 training samples" in card
    assert "<code>q</code>, <code>pos</code> and <code>neg</code>" in card
    assert "#### trip (trip.jsonl) (validation)" in card
    # each source's section names its loss: the recipe's Matryoshka for qa, trip's own
    qa_section = card.split("#### qa (mixture-qa0)")[1].split("####")[0]
    trip_section = card.split("#### trip (trip.jsonl)")[1].split("####")[0]
    assert "MatryoshkaLoss" in qa_section and '"scale": 30.0' in trip_section and "Matryoshka" not in trip_section
    assert '"hardness_mode": "hard_negatives"' in trip_section and '"doc_to_doc"' in trip_section
    table = next(line for line in card.splitlines() if line.startswith("| Metric "))
    assert all(f" {name}_dim_32 " in table for name in ("mean", "qa", "trip"))


def test_a_sources_error_names_the_source_and_its_option(capsys, tmp_path, tiny_bert_dir, sources):
    flags = [*text_recipe(tiny_bert_dir, sources["qa"]), "--trainer.fast_dev_run=1", "--data.init_args.num_workers=0"]
    cases = [
        (mixture_flags(sources, trip={"columns": ["q", "positive"]}),
         "source 'trip': ", "column(s) ['positive'] not found",
         "Set columns of --data.init_args.sources.trip to the data's column names"),
        (mixture_flags(sources, trip={"colums": ["q", "pos"]}),
         "--data.init_args.sources.trip: PairDataModule has no option 'colums'", "a source takes batch_size,", ""),
        (mixture_flags(sources, qa={"weight": 2}),
         "weight of --data.init_args.sources.qa is read by weighted sampling only: set --data.init_args.sampling "
         "weighted", "", ""),
        ([*mixture_flags(sources), '--model.source_losses={"nli": {"class_path": '
                                   '"losses.MultipleNegativesRankingLoss"}}'],
         "--model.init_args.source_losses names ['nli'], which are not training sources (--data.init_args.sources: "
         "qa, trip): key each loss by its source's name", "", ""),
        ([*mixture_flags(sources), "--data.sources.trip.columns=[q, pos]"],
         "--data.sources.trip.columns: a source's options are one value, given whole: --data.init_args.sources.trip "
         "'{\"columns\": …, …}'", "", ""),
    ]
    for extra, *said in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", *flags, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        message = next(line for line in err.splitlines() if line.startswith("error: "))
        assert all(part in message for part in said), message


def test_print_config_shows_the_sources(capsys, tiny_bert_dir, sources):
    with pytest.raises(SystemExit):
        cli_main(["fit", *text_recipe(tiny_bert_dir, sources["qa"]), *mixture_flags(sources),
                  "--data.sampling=round_robin", "--print_config"])
    printed = capsys.readouterr().out
    assert "    sampling: round_robin\n" in printed and "      trip:\n" in printed and "        - neg\n" in printed


STREAMED = ["--checkpoint_every_n_steps=3", "--data.num_workers=2", "--data.shuffle_buffer=20",
            "--trainer.max_epochs=2", "--data.batch_size=16"]


@pytest.mark.parametrize("streamed", [pytest.param(True, id="streamed"),
                                      pytest.param(False, id="map-style", marks=pytest.mark.slow)])
def test_a_killed_mixture_resumes_equal_to_the_uninterrupted_run(tmp_path, tiny_bert_dir, sources, streamed):
    """SIGKILL mid-epoch (epoch 1 after its first batches), then ``--ckpt_path last``: which source is next and every
    source's position (a streamed one's in each of the 2 workers) resume, so every logged value and the exported
    weights equal the uninterrupted run's."""
    qa = {"streaming": True} if streamed else None

    def args(save_dir):
        return train_args(*text_recipe(tiny_bert_dir, sources["qa"]), *mixture_flags(sources, qa=qa), *STREAMED,
                          "--trainer.logger.name=run", "--data.test_split=null", save_dir=save_dir)

    run_train(args(tmp_path / "whole"))
    run_dir = str(tmp_path / "cut" / "run" / "version_0")
    code, _, _ = interrupt(args(tmp_path / "cut"), run_dir, 13, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)
    steps_per_epoch = 6 + 3 if streamed else 6 + 4  # a stream yields full batches only
    assert saved["epoch"] == 1 and saved["global_step"] % steps_per_epoch, saved["global_step"]  # inside epoch 1
    run_train([*args(tmp_path / "cut"), "--ckpt_path", "last"])
    whole = str(tmp_path / "whole" / "run" / "version_0")
    assert logged(run_dir) == logged(whole)
    assert any(row.get("train/trip_loss") for row in logged(whole)) and any(
        row.get("val/mean_dim_32_cosine_ndcg@10") for row in logged(whole))
    exported = [load_file(os.path.join(d, "model", "model.safetensors")) for d in (run_dir, whole)]
    for name, value in exported[0].items():
        assert torch.equal(value, exported[1][name]), name


def test_a_clip_recipe_trains_on_image_caption_sources(tmp_path):
    """Image–caption sources: each evaluated in both directions under its name, their mean, each in the card."""
    sources = {"small": {"builtin_rows": 64, "val_size": 16}, "large": {"builtin_rows": 96}}
    cli_main(train_args(*clip_recipe(), f"--data.sources={json.dumps(sources)}", "--trainer.logger.name=clip-mix",
                        save_dir=tmp_path))
    run_dir = tmp_path / "clip-mix" / "version_0"
    last = {k: v for row in logged_rows(run_dir) for k, v in row.items() if v}
    for name in ("small", "large"):  # caption → image and image → caption, each source's own
        assert f"val/{name}_cosine_ndcg@10" in last and f"val/{name}-image2text_cosine_ndcg@10" in last, name
    assert "val/mean_cosine_ndcg@10" in last  # over the 4 tasks
    assert "train/small_loss" in last and "train/large_loss" in last
    card = (run_dir / "model" / "README.md").read_text()
    assert "#### small (shapes)" in card and "#### large (shapes)" in card
    assert "* Size: 48 training samples" in card and "* Size: 64 training samples" in card
