"""Whole `train.py fit` processes under DDP with 2 gloo processes: they exit by themselves, export once, test, and
compute the metrics a 1-process run computes.

A 2-rank DDP run with batch size B gives rank r the global batches r, r+2, … and averages their gradients; a 1-process
run with the same B and accumulate_grad_batches 2 takes the same optimizer steps (dropout off, an even number of
batches), so every validation and test metric must match.
"""

import glob
import json
import os
import subprocess

import pytest

from conftest import qa_rows, write_jsonl
from tests.commands import NO_EXPORT, clip_recipe, logged_rows, run_train, text_recipe, train_args

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def fit(args: list[str], log_dir) -> subprocess.CompletedProcess:
    """Run `python train.py fit` as users do, for one epoch; a hang fails the test instead of blocking the suite."""
    return run_train(train_args(*args, save_dir=log_dir), returncode=None)


def metrics(log_dir) -> dict[str, float]:
    """The last logged value of every val/ and test/ metric (and the base model's) of the run's metrics.csv."""
    last = {}
    for row in logged_rows(log_dir):
        last.update({k: float(v) for k, v in row.items() if v and k.startswith(("val/", "test/"))})
    return last


def losses(log_dir) -> dict[int, float]:
    """Step → the logged training loss (the mean over the logging window, all processes' batches)."""
    return {int(row["step"]): float(row["train/loss"]) for row in logged_rows(log_dir) if row.get("train/loss")}


def check_ddp_run(run: subprocess.CompletedProcess, log_dir) -> dict[str, float]:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exports = glob.glob(os.path.join(log_dir, "**", "model"), recursive=True)
    assert len(exports) == 1 and os.path.exists(os.path.join(exports[0], "modules.json")), exports
    assert "It is recommended to use `self.log('val/" not in run.stderr  # metrics come from merged top-k lists, not re-synced
    return metrics(log_dir)


def text_args(model_dir, data_dir, *extra):
    return [*text_recipe(model_dir, data_dir), *extra]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("pairs")
    write_jsonl(directory / "train-00000-of-00002.jsonl", qa_rows(32))  # two files: one shard per rank when streaming
    write_jsonl(directory / "train-00001-of-00002.jsonl", qa_rows(32, offset=32))
    write_jsonl(directory / "validation.jsonl", qa_rows(16, offset=100))
    write_jsonl(directory / "test.jsonl", qa_rows(16, offset=200))
    return str(directory)


def ddp_equals_one_process_accumulating_two(tmp_path, model_dir, data_dir, *flags) -> dict[str, float]:
    """A 2-process fit and a 1-process fit accumulating 2 batches log the same metrics and losses; the former's."""
    ddp = check_ddp_run(fit(text_args(model_dir, data_dir, *flags) + DDP, tmp_path / "ddp"), tmp_path / "ddp")
    single = fit(text_args(model_dir, data_dir, *flags, "--trainer.accelerator=cpu", "--trainer.devices=1",
                           "--trainer.accumulate_grad_batches=2", NO_EXPORT), tmp_path / "one")
    assert single.returncode == 0, single.stderr[-3000:]
    one = metrics(tmp_path / "one")
    assert set(ddp) == set(one)
    for key, value in one.items():
        assert ddp[key] == pytest.approx(value, abs=1e-4), key
    # the logged loss averages both processes' batches, as the single process averages its two accumulated ones
    ddp_losses, one_losses = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(one_losses) > 1 and ddp_losses.keys() == one_losses.keys()
    for step, value in one_losses.items():
        assert ddp_losses[step] == pytest.approx(value, rel=1e-5), step
    return ddp


def test_text_fit_with_two_processes_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs):
    ddp = ddp_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs)
    assert {"test/dim_32_cosine_ndcg@10", "val/dim_8_cosine_map@100", "val/dim_32_cosine_ndcg@10_base"} <= set(ddp)


@pytest.mark.slow  # 3 processes (~39 s); the text recipe's 2-process fit is the default suite's
def test_clip_fit_with_two_processes_equals_one_process_accumulating_two(tmp_path):
    args = clip_recipe()
    ddp = check_ddp_run(fit(args + DDP, tmp_path / "ddp"), tmp_path / "ddp")
    single = fit(args + ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.accumulate_grad_batches=2",
                         NO_EXPORT], tmp_path / "one")
    assert single.returncode == 0, single.stderr[-3000:]
    one = metrics(tmp_path / "one")
    assert {"val/eval_cosine_ndcg@10", "val/eval-image2text_cosine_ndcg@10"} <= set(ddp) and set(ddp) == set(one)
    for key, value in one.items():
        assert ddp[key] == pytest.approx(value, abs=1e-4), key


GATHER = "--model.loss.loss.gather_across_devices=true"


@pytest.fixture(scope="module")
def gathered(tmp_path_factory, no_dropout_bert, pairs) -> tuple[subprocess.CompletedProcess, str]:
    """A 2-process fit gathering the embeddings of both processes, with the flag the refusal without it names, as
    it spells it; and its log folder."""
    log_dir = str(tmp_path_factory.mktemp("gathered"))
    return fit(text_args(no_dropout_bert, pairs, GATHER, "--data.init_args.drop_last", "true") + DDP, log_dir), log_dir


@pytest.mark.slow  # a 2-process fit and a refused one (~43 s)
def test_gather_without_drop_last_is_refused_at_start_up_and_the_flag_fixes_it(tmp_path, no_dropout_bert, pairs,
                                                                              gathered):
    refused = fit(text_args(no_dropout_bert, pairs, GATHER) + DDP, tmp_path / "refused")
    assert refused.returncode != 0
    assert "set --data.init_args.drop_last true" in refused.stderr
    assert not glob.glob(os.path.join(tmp_path, "refused", "**", "*.ckpt"), recursive=True)  # before any step
    # the flag as the message spells it, typed back in
    assert "test/dim_32_cosine_ndcg@10" in check_ddp_run(*gathered)


@pytest.mark.slow  # two 2-process fits beside the shared one (~60 s on 2 cores)
def test_gradcache_and_streaming_under_ddp_with_the_gather(tmp_path, no_dropout_bert, pairs, gathered):
    plain = check_ddp_run(*gathered)
    # GradCache under DDP with the gather: the same training, so the same metrics (the model has no dropout)
    cached = fit(text_args(no_dropout_bert, pairs, GATHER, "--data.init_args.drop_last=true",
                           "--model.init_args.gradcache_chunk_size=3") + DDP, tmp_path / "cached")
    cached_metrics = check_ddp_run(cached, tmp_path / "cached")
    assert cached_metrics.keys() == plain.keys()
    for key, value in plain.items():
        assert cached_metrics[key] == pytest.approx(value, abs=1e-4), key
    # a stream yields full batches only: gathering needs no drop_last there
    streamed = fit(text_args(no_dropout_bert, pairs, GATHER, "--data.init_args.streaming", "true") + DDP,
                   tmp_path / "stream")
    streamed_metrics = check_ddp_run(streamed, tmp_path / "stream")
    assert "test/dim_32_cosine_ndcg@10" in streamed_metrics


def test_a_three_source_mixture_with_the_gather_under_ddp_equals_one_process_with_their_batches(
        tmp_path, no_dropout_bert, pairs):
    """2 gloo processes of batch 8 gathering each other's embeddings train, at every step, one source's 16 rows with
    16 in-batch candidates: what 1 process trains with batch 16 (the rows are distinct, so a batch of 16 is two
    consecutive batches of 8). Every rank draws the same source at the same step, or the gather would pair
    embeddings of different sources (or hang on unequal column counts)."""
    trip = write_jsonl(tmp_path / "trip.jsonl", [{"q": f"what does widget {i} do", "p": f"widget {i} frobnicates",
                                                 "n": f"widget {i} polishes"} for i in range(48)])
    short = write_jsonl(tmp_path / "short.jsonl", qa_rows(32, offset=500))
    sources = {"qa": {}, "trip": {"dataset": trip, "columns": ["q", "p", "n"], "val_size": 8, "test_split": None},
               "short": {"dataset": short, "val_size": 8, "test_split": None}}
    flags = [f"--data.sources={json.dumps(sources)}", "--data.drop_last=true"]
    ddp = check_ddp_run(fit(text_args(no_dropout_bert, pairs, *flags, GATHER) + DDP, tmp_path / "ddp"),
                        tmp_path / "ddp")
    single = fit(text_args(no_dropout_bert, pairs, *flags, "--data.batch_size=16", "--trainer.accelerator=cpu",
                           "--trainer.devices=1", NO_EXPORT), tmp_path / "one")
    assert single.returncode == 0, single.stderr[-3000:]
    one = metrics(tmp_path / "one")
    assert {"val/qa_dim_32_cosine_ndcg@10", "val/trip_dim_8_cosine_map@100", "val/short_dim_32_cosine_ndcg@10",
            "val/mean_dim_32_cosine_ndcg@10", "test/qa_dim_32_cosine_ndcg@10"} <= set(ddp)
    assert set(ddp) == set(one)
    for key, value in one.items():
        assert ddp[key] == pytest.approx(value, abs=1e-4), key
    # qa 64 rows: 4 steps; trip 40: 2; short 24: 1 (drop_last keeps whole steps)
    trained = [row for row in logged_rows(tmp_path / "ddp") if row.get("train/loss")]
    assert [sum(bool(row.get(f"train/{name}_loss")) for row in trained) for name in sources] == [4, 2, 1]


@pytest.mark.slow  # 3 processes (~45 s); the mixture's 2-process fit with the gather is the default suite's
def test_a_mixture_under_ddp_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs):
    """Without the gather, 2 processes average the gradients of their batches: one process accumulating 2 batches
    trains the same steps, because an optimizer step's accumulated batches come from one source."""
    trip = write_jsonl(tmp_path / "trip.jsonl", [{"q": f"what does widget {i} do", "p": f"widget {i} frobnicates",
                                                 "n": f"widget {i} polishes"} for i in range(48)])
    sources = {"qa": {}, "trip": {"dataset": trip, "columns": ["q", "p", "n"], "val_size": 8, "test_split": None}}
    ddp = ddp_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs,
                                                  f"--data.sources={json.dumps(sources)}", "--data.drop_last=true")
    assert "val/trip_dim_32_cosine_ndcg@10" in ddp and "val/mean_dim_32_cosine_ndcg@10" in ddp


@pytest.mark.slow  # 3 processes (~41 s); the text recipe's 2-process fit is the default suite's
def test_a_guided_fit_with_two_processes_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, tiny_bert_dir,
                                                                            pairs):
    """GISTEmbedLoss's guide table is built by both processes together (each embeds a share, then they gather): the
    guided 2-process fit is the 1-process fit accumulating its two batches."""
    ddp_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs, "--model.loss.loss=losses.GISTEmbedLoss",
                                            f"--model.loss.loss.guide={tiny_bert_dir}",
                                            "--model.loss.loss.temperature=0.05")


SIGLIP = ["--model.loss=losses.SigLipLoss", "--model.learn_logit_scale=true", "--data.drop_last=true"]


@pytest.mark.slow  # 2 processes (~31 s); the exchange itself: tests/test_siglip.py, 2 gloo ranks
def test_a_siglip_clip_fit_exchanging_texts_between_two_processes_finishes(tmp_path):
    """SigLIP's neighbour exchange (point-to-point sends inside the loss, and back in its backward) under Lightning's
    DDP: the run ends by itself, exports once, and its processes agree (one set of metrics, a learned bias)."""
    ddp = check_ddp_run(fit(clip_recipe() + SIGLIP + DDP, tmp_path / "ddp"), tmp_path / "ddp")
    assert "val/eval_cosine_ndcg@10" in ddp
    biases = [float(row["train/logit_bias"]) for row in logged_rows(tmp_path / "ddp") if row.get("train/logit_bias")]
    assert biases and biases[-1] != -10


@pytest.mark.slow  # 3 processes (~40 s)
def test_a_siglip_fit_without_the_exchange_equals_one_process_accumulating_two(tmp_path):
    """Without the exchange each process's SigLIP loss is its own batch's: DDP's averaged gradients are one process's
    accumulated over the same two batches."""
    args = clip_recipe() + SIGLIP + ["--model.loss.gather_across_devices=false"]
    ddp = check_ddp_run(fit(args + DDP, tmp_path / "ddp"), tmp_path / "ddp")
    single = fit(args + ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.accumulate_grad_batches=2",
                         NO_EXPORT], tmp_path / "one")
    assert single.returncode == 0, single.stderr[-3000:]
    one = metrics(tmp_path / "one")
    assert set(ddp) == set(one)
    for key, value in one.items():
        assert ddp[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.slow  # 3 processes (~40 s); the text recipe's 2-process fit is the default suite's
def test_a_lora_fit_with_two_processes_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs):
    """LoRA adapters (the frozen base is not a DDP parameter; no unused-parameter stall) under 2 gloo processes: the
    1-process fit accumulating its two batches."""
    ddp_equals_one_process_accumulating_two(tmp_path, no_dropout_bert, pairs, "--model.encoder.lora.r=4",
                                            "--model.encoder.lora.dropout=0.0")
