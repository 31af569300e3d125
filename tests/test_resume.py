"""Runs that survive: whole `train.py fit` processes killed with SIGKILL or stopped with SIGTERM, then resumed, train
and log exactly what an uninterrupted run does; non-finite steps are skipped, reported and stop the run.

Tolerance: none. On the CPU the same operations in the same order give the same bits, so every logged value (per-step
losses with dropout on, evaluation metrics) and every exported weight of the resumed run equals the uninterrupted
run's exactly; a batch served twice or skipped, a dropout mask drawn from another RNG state, or an optimizer state
off by one step changes them.
"""

import fcntl
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from callbacks.nonfinite import NonFiniteGuard
from callbacks.resume import AtomicCheckpointIO
from conftest import qa_rows, write_jsonl
from datamodules.sampler import NoDuplicatesBatchSampler
from tests.commands import (ENV, NO_EXPORT, ROOT, WALL_CLOCK, logged_rows, run_train, text_recipe, train_args,
                            train_command)
from train import cli_main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("resume-pairs")
    write_jsonl(directory / "train-00000-of-00002.jsonl", qa_rows(80))  # two files: two stream workers
    write_jsonl(directory / "train-00001-of-00002.jsonl", qa_rows(80, offset=80))
    write_jsonl(directory / "validation.jsonl", qa_rows(16, offset=1000))
    write_jsonl(directory / "test.jsonl", qa_rows(16, offset=2000))
    return str(directory)


def command(model_dir, data_dir, save_dir, *extra) -> list[str]:
    """`train.py fit` on 160 pairs, batch 16: 10 batches per epoch, 2 epochs, dropout on."""
    return train_args(*text_recipe(model_dir, data_dir), "--trainer.max_epochs=2", "--trainer.logger.name=run",
                      "--data.batch_size=16", *extra, save_dir=save_dir)


def interrupt(args: list[str], run_dir: str, after_step: int, sig: int, timeout: int = 300, group: bool = False):
    """Start `train.py *args`, wait for a checkpoint at or after `after_step` (and the metrics flushed with it), signal
    it (with `group`, its whole process group, DataLoader workers included, as a terminal's Ctrl-C does)."""
    process = subprocess.Popen(train_command(args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=group)
    checkpoint, log = os.path.join(run_dir, "checkpoints", "last.ckpt"), os.path.join(run_dir, "metrics.csv")
    deadline = time.time() + timeout
    seen = None  # the checkpoint file last read: read again only once it is replaced (the run needs the CPU)
    while True:
        assert process.poll() is None, "the run ended before the checkpoint: " + process.stderr.read()[-3000:]
        assert time.time() < deadline
        try:
            written = os.stat(checkpoint)
            flushed = os.path.getmtime(log) >= written.st_mtime
            if flushed and (written.st_ino, written.st_mtime_ns) != seen:
                if torch.load(checkpoint, weights_only=True, mmap=True)["global_step"] >= after_step:
                    break
                seen = (written.st_ino, written.st_mtime_ns)
        except (OSError, RuntimeError, EOFError):  # not written yet
            pass
        time.sleep(0.01)
    if group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def signal_at(hook: str, name: str = "SIGTERM", times: int = 1, at_step: int = 0) -> str:
    """The flag that adds tests/send_signal.py's callback: ``name`` sent ``times`` times at ``hook`` from step
    ``at_step`` on (in the run only, not in its resume)."""
    return "--trainer.callbacks=" + json.dumps([{"class_path": "tests.send_signal.SendSignal", "init_args": {
        "hook": hook, "name": name, "times": times, "at_step": at_step}}])


def run_printed_resume(output: str) -> tuple[str, subprocess.CompletedProcess]:
    """The command a stopped run printed after "Resume with:", typed into a shell in the directory the run was started
    from with this interpreter as `python`, and its (successful) run."""
    resume = output.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    assert resume.startswith("python "), resume
    resumed = subprocess.run(sys.executable + resume.removeprefix("python"), shell=True, cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resume, resumed


def logged(run_dir: str) -> list[dict]:
    """The metrics log without wall-clock measurements (and the rows that held nothing else)."""
    rows = [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in logged_rows(run_dir)]
    return [row for row in rows if any(v for k, v in row.items() if k not in ("epoch", "step"))]


def assert_same_run(resumed_dir: str, reference_dir: str) -> None:
    resumed, reference = logged(resumed_dir), logged(reference_dir)
    assert [row["step"] for row in resumed] == [row["step"] for row in reference]
    assert resumed == reference  # every loss, every metric, the base-model row, the same header
    assert any(row.get("train/loss") for row in resumed) and any(row.get("val/dim_32_cosine_ndcg@10") for row in resumed)
    exported = [load_file(os.path.join(d, "model", "model.safetensors")) for d in (resumed_dir, reference_dir)]
    assert exported[0].keys() == exported[1].keys()
    for name, value in exported[0].items():
        assert torch.equal(value, exported[1][name]), name


STREAM = ["--checkpoint_every_n_steps=3", "--data.streaming=true", "--data.num_workers=2", "--data.shuffle_buffer=40"]
# a row every 2 steps, a checkpoint every 3: the checkpoints at steps 3 and 15 lie inside a logging window, whose loss
# the resumed run must average as the uninterrupted one does
MAP = ["--checkpoint_every_n_steps=3", "--trainer.log_every_n_steps=2"]
KINDS = {"map": MAP, "stream": STREAM}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert_dir, data):
    """name → the run folder of the reference run, uninterrupted (map-style, or streamed with 2 workers): each run
    once, when a test first asks for it."""
    root = tmp_path_factory.mktemp("uninterrupted")
    runs = {}

    def reference(name: str) -> str:
        if name not in runs:
            # map-style in this process (what is under test is the train.py process compared with it); the stream's
            # 2 DataLoader workers are not forked from pytest
            args = command(tiny_bert_dir, data, root / name, *KINDS[name])
            if name == "map":
                cli_main(args)
            else:
                run_train(args)
            runs[name] = str(root / name / "run" / "version_0")
        return runs[name]

    return reference


@pytest.mark.parametrize("name, kill_after", [
    pytest.param("map", 3, marks=pytest.mark.slow),  # epoch 0, batch 3
    # epoch 1, batch 5 (after the epoch-end evaluation); resumes from step 15. (A SIGKILL resumed in the default suite:
    # test_a_kill_before_an_evaluation_ends_repeats_it_on_resume; a mid-epoch resume: test_sigterm_saves_at_the_step_…)
    pytest.param("map", 13, marks=pytest.mark.slow),
    # 2 workers: each skips 2 batches of its own, the loader drops 1 more; every epoch's batches must also be the
    # uninterrupted run's (the workers once raced on HF's shared epoch counter: test_streaming.py)
    pytest.param("stream", 13, marks=pytest.mark.slow),
])
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_bert_dir, data, uninterrupted,
                                                                    name, kill_after):
    args = command(tiny_bert_dir, data, tmp_path, *KINDS[name])
    run_dir = str(tmp_path / "run" / "version_0")
    code, _, _ = interrupt(args, run_dir, kill_after, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert saved["epoch"] * 10 < saved["global_step"] < 20 and saved["global_step"] % 10  # mid-epoch
    assert not os.path.exists(os.path.join(run_dir, "model"))
    resumed = run_train(args + ["--ckpt_path", "last"])
    assert "Resuming" in resumed.stdout and not os.path.exists(str(tmp_path / "run" / "version_1"))
    assert "not resumable" not in resumed.stderr
    assert_same_run(run_dir, uninterrupted(name))


def test_sigterm_saves_at_the_step_boundary_prints_the_command_and_resumes(tmp_path, tiny_bert_dir, data):
    # accumulation 2: the checkpoint must wait for the optimizer step (it cannot hold half-summed gradients)
    extra = ["--trainer.accumulate_grad_batches=2", "--checkpoint_every_n_steps=1"]
    reference = tmp_path / "reference"
    cli_main(command(tiny_bert_dir, data, reference, *extra))  # in this process: the reference, not under test
    args = command(tiny_bert_dir, data, tmp_path / "preempted", extra[0], "--checkpoint_every_n_steps=2")
    run_dir = str(tmp_path / "preempted" / "run" / "version_0")
    code, out, err = interrupt(args, run_dir, 2, signal.SIGTERM)  # mid-training
    assert code == 143, err[-3000:]
    assert "SIGTERM received: saving a checkpoint after the current optimizer step" in err
    saved = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert 0 < saved["global_step"] < 10
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] % 2 == 1  # batch 2k-1 ended
    resume, _ = run_printed_resume(out + err)
    assert resume.endswith(f"--ckpt_path {os.path.relpath(run_dir)}")
    assert_same_run(run_dir, str(reference / "run" / "version_0"))


@pytest.mark.parametrize("hook, said", [
    # the last evaluation finishes (its results go into last.ckpt: the resume does not redo it), then the run stops
    pytest.param("on_validation_batch_start", "Preempted at step 10: saved ", marks=pytest.mark.slow),
    pytest.param("on_fit_end", "SIGTERM received during the export of the model: stopped. Training is complete (",
                 marks=pytest.mark.slow),
    pytest.param("on_test_batch_start", "SIGTERM received during the test of the exported model: stopped. Training is "
                 "complete (", marks=pytest.mark.slow),
])  # 2 processes each (~30 s): a SIGTERM resumed stays in the default suite (test_sigterm_saves_at_the_step_boundary…)
def test_sigterm_after_the_last_step_stops_and_the_printed_command_exports_and_tests(tmp_path, tiny_bert_dir, data,
                                                                                     hook, said):
    args = command(tiny_bert_dir, data, tmp_path, "--trainer.max_epochs=1", "--checkpoint_every_n_steps=0",
                   signal_at(hook, at_step=10))
    run_dir = tmp_path / "run" / "version_0"
    stopped = run_train(args, returncode=None)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert said in stopped.stdout + stopped.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert not any(key.startswith("test/") and value for row in logged(str(run_dir)) for key, value in row.items())
    trained = [row["step"] for row in logged(str(run_dir)) if row.get("train/loss")]
    resume, resumed = run_printed_resume(stopped.stdout + stopped.stderr)
    assert resume.endswith(f"--ckpt_path {os.path.relpath(run_dir)}")
    rows = logged(str(run_dir))
    assert [row["step"] for row in rows if row.get("train/loss")] == trained  # nothing trained again
    assert [row["step"] for row in rows if row.get("val/dim_32_cosine_ndcg@10")] == ["10"]  # the last one, once
    assert any(row.get("test/dim_32_cosine_ndcg@10") for row in rows)
    assert os.path.exists(run_dir / "model" / "model.safetensors") and "Exported the model" in resumed.stdout + \
        resumed.stderr


@pytest.mark.slow  # 2 processes (~26 s); SIGTERM's path is the default suite's
def test_ctrl_c_saves_at_the_step_boundary_prints_the_command_and_resumes(tmp_path, tiny_bert_dir, data):
    # 2 DataLoader workers, which the terminal's Ctrl-C reaches too: they must go on serving the step's next batch
    args = command(tiny_bert_dir, data, tmp_path, "--trainer.max_epochs=1", "--checkpoint_every_n_steps=2",
                   "--data.num_workers=2")
    run_dir = str(tmp_path / "run" / "version_0")
    code, out, err = interrupt(args, run_dir, 2, signal.SIGINT, group=True)  # mid-training
    assert code == 130, err[-3000:]
    assert err.count("Ctrl-C (SIGINT) received: saving a checkpoint after the current optimizer step") == 1
    step = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)["global_step"]
    assert 2 <= step < 10 and f"Interrupted at step {step}: saved " in out + err
    resume, _ = run_printed_resume(out + err)
    assert resume.endswith(f"--ckpt_path {os.path.relpath(run_dir)}")
    assert [row["step"] for row in logged(run_dir) if row.get("train/loss")] == [str(s) for s in range(1, 11)]
    assert os.path.exists(os.path.join(run_dir, "model", "model.safetensors"))


@pytest.mark.slow  # a whole process (~7 s)
def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, tiny_bert_dir, data):
    args = command(tiny_bert_dir, data, tmp_path, "--trainer.max_epochs=1", "--checkpoint_every_n_steps=2",
                   signal_at("on_train_batch_start", "SIGINT", times=2, at_step=3))
    run_dir = str(tmp_path / "run" / "version_0")
    result = run_train(args, returncode=None)
    assert result.returncode == -signal.SIGINT, result.stderr[-3000:]
    assert ("Ctrl-C again: stopping now, without saving this step; resume from the last checkpoint written "
            f"({os.path.join(run_dir, 'checkpoints', 'last.ckpt')}) with:") in result.stderr
    assert torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)["global_step"] == 2


@pytest.mark.slow  # 2 processes (~25 s)
def test_a_full_disk_mid_run_is_one_error_naming_the_checkpoint_and_the_resume(tmp_path, tiny_bert_dir, data):
    full_disk = "--trainer.plugins=tests.failing_io.FullDisk"  # the second checkpoint write fails: ENOSPC
    args = command(tiny_bert_dir, data, tmp_path, "--trainer.max_epochs=1", "--checkpoint_every_n_steps=2", full_disk)
    run_dir = tmp_path / "run" / "version_0"
    result = run_train(args, returncode=None)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and error[0].startswith(
        f"error: {run_dir / 'checkpoints' / 'last.ckpt'}: No space left on device; free space there, or write the run "
        f"to another disk with --trainer.logger.init_args.save_dir; then resume with: python ")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2  # the last whole
    # once there is space again (the injected fault dropped), the printed command finishes the run
    run_printed_resume("Resume with:\n" + error[0].split("then resume with: ", 1)[1].replace(f" {full_disk}", ""))
    assert os.path.exists(run_dir / "model" / "model.safetensors")


def test_ckpt_path_last_without_a_run_to_resume_says_so(tmp_path, tiny_bert_dir, data):
    result = run_train(command(tiny_bert_dir, data, tmp_path, "--ckpt_path", "last"), returncode=None)
    assert result.returncode != 0
    assert f"--ckpt_path last: no run under {tmp_path}/run/ has checkpoints/last.ckpt" in result.stderr
    assert not glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)


@pytest.mark.slow  # two fits (~30 s on 2 cores); the resume itself is covered by the SIGKILL and SIGTERM tests
def test_resuming_a_checkpoint_from_elsewhere_starts_a_new_folder_and_exports(tmp_path, tiny_bert_dir, data):
    first = command(tiny_bert_dir, data, tmp_path / "first", "--trainer.max_steps=4", "--checkpoint_every_n_steps=4")
    run_train(first)
    moved = str(tmp_path / "step4.ckpt")
    os.rename(str(tmp_path / "first" / "run" / "version_0" / "checkpoints" / "last.ckpt"), moved)
    resumed = run_train(command(tiny_bert_dir, data, tmp_path / "second", "--trainer.max_steps=6", "--ckpt_path",
                                moved))
    assert os.path.exists(str(tmp_path / "second" / "run" / "version_0" / "model" / "model.safetensors"))
    assert "Exported the model" in resumed.stdout + resumed.stderr


def test_the_sampler_resumes_at_the_batch_after_the_last_one_trained():
    codes = np.array([[i % 7, 100 + i] for i in range(50)])  # repeats: batches are deferred, not plain slices
    whole = NoDuplicatesBatchSampler(codes, 4, seed=3)
    whole.set_epoch(2)
    resumed = NoDuplicatesBatchSampler(codes, 4, seed=3)
    resumed.resume(2, 5)
    resumed.set_epoch(2)
    assert len(resumed) == len(whole)  # Lightning counts on from batch 5 of the whole epoch
    assert list(resumed) == list(whole)[5:]
    resumed.set_epoch(3)
    whole.set_epoch(3)
    assert list(resumed) == list(whole)  # the next epoch is whole


def test_a_non_finite_step_leaves_weights_and_adamw_state_untouched():
    torch.manual_seed(0)
    weights = torch.nn.Linear(4, 3)
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(weights.state_dict())
    guarded = torch.optim.AdamW(weights.parameters(), lr=0.1, fused=True)
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard(max_steps=5)
    x = torch.randn(8, 4)
    for step, poisoned in enumerate([False, True, False, True, False]):
        loss = weights(x).pow(2).sum() * (float("nan") if poisoned else 1.0)
        guarded.zero_grad()
        loss.backward()
        guard.loss(loss, [step])
        guard.before_step(guarded)
        guarded.step()
        guard._pending.append((step, guard._found, []))
        guard._found, guard._loss_bad = None, None
        if not poisoned:  # the reference never sees the poisoned steps
            plain.zero_grad()
            reference(x).pow(2).sum().backward()
            plain.step()
    guard._drain()
    assert guard.skipped == 2
    for mine, theirs in zip(weights.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)
        assert torch.equal(guarded.state[mine]["exp_avg"], plain.state[theirs]["exp_avg"])
        assert guarded.state[mine]["step"].item() == plain.state[theirs]["step"].item() == 3


def test_a_diverging_run_skips_and_reports_non_finite_steps_then_stops_without_exporting(tmp_path, tiny_bert_dir,
                                                                                         data):
    args = command(tiny_bert_dir, data, tmp_path, "--model.lr=1e6", "--trainer.max_epochs=1",
                   "--max_nonfinite_steps=3", "--checkpoint_every_n_steps=1")
    result = run_train(args, returncode=None)
    assert result.returncode != 0
    assert "optimizer step 2 skipped: non-finite loss or gradient" in result.stderr
    assert "the batch's rows: lines " in result.stderr and "lower --model.init_args.lr" in result.stderr
    # the datamodule names them
    assert f" of {os.path.join(data, 'train-00000-of-00002.jsonl')}; lines " in result.stderr
    assert "4 optimizer steps had a non-finite loss or gradient, more than --max_nonfinite_steps 3" \
        in result.stderr
    run_dir = tmp_path / "run" / "version_0"
    assert not os.path.exists(run_dir / "model")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(value.isfinite().all() for value in saved["state_dict"].values())
    # the last row is the step that stopped the run, counted as the error counts it
    assert [row for row in logged(str(run_dir)) if row.get("train/nonfinite_steps")][-1]["train/nonfinite_steps"] == "4.0"


def test_a_model_with_a_non_finite_weight_is_never_exported(tmp_path, tiny_bert_dir, data):
    """The last line of defence (steps are skipped before a weight can go non-finite): export refuses, every rank."""
    from lightning.pytorch import Callback

    class Poison(Callback):
        def on_train_end(self, trainer, module):
            next(module.parameters()).data[0] = float("nan")

    args = command(tiny_bert_dir, data, tmp_path, "--trainer.max_steps=2", "--checkpoint_every_n_steps=0")[1:]
    cli = cli_main(args, run=False)
    cli.trainer.callbacks.append(Poison())
    with pytest.raises(RuntimeError, match=r"not exporting: 1 weight tensor\(s\) are not finite \(encoder\."):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert not glob.glob(str(tmp_path / "**" / "model"), recursive=True)


def test_a_checkpoint_of_the_version_whose_model_held_the_nonfinite_guard_resumes(tmp_path, tiny_bert_dir, data,
                                                                                  capsys):
    """Before the guard was a callback, the model took max_nonfinite_steps (and export_dir) and its checkpoint held the
    skipped count under "litembed": such a checkpoint resumes, the count goes on from it, the moved arguments are
    named."""
    args = command(tiny_bert_dir, data, tmp_path, "--trainer.max_steps=2", "--checkpoint_every_n_steps=1", NO_EXPORT,
                   "--test_after_fit=false", "--model.evaluate_before_training=false")
    cli_main(args)
    path = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["callbacks"]["NonFiniteGuard"] == {"skipped": 0}
    del checkpoint["callbacks"]["NonFiniteGuard"]
    checkpoint["hyper_parameters"].update(max_nonfinite_steps=10, export_dir="model")
    checkpoint["litembed"]["nonfinite"] = {"skipped": 3}
    torch.save(checkpoint, path)
    capsys.readouterr()
    cli_main(train_args(*args[1:], "--trainer.max_steps=3", "--ckpt_path", str(path)))
    printed = capsys.readouterr().out
    assert f"{path}: the model argument max_nonfinite_steps=10 of the litembed that wrote it is " \
           f"--max_nonfinite_steps now; this run uses the recipe's" in printed
    assert f"{path}: the model argument export_dir='model' of the litembed that wrote it is --export.dirpath now" \
        in printed
    assert [row["train/nonfinite_steps"] for row in logged(str(path.parent.parent))
            if row["step"] == "3" and row["train/loss"]] == ["3.0"]


MONITOR = '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": ' \
          '{"monitor": "val/dim_32_cosine_ndcg@10", "mode": "max", "save_top_k": 1}}]'


def signals_at(*signals: tuple[int, str, int], monitor: bool = True, when_resuming: bool = False) -> str:
    """The ``--trainer.callbacks`` of a run (with the best-checkpoint monitor) that signals itself at each (step, hook,
    signal) (``tests/send_signal.py``)."""
    senders = ", ".join(json.dumps({"class_path": "tests.send_signal.SendSignal", "init_args": {
        "hook": hook, "name": signal.Signals(sig).name, "at_step": step, "when_resuming": when_resuming}})
        for step, hook, sig in signals)
    return (MONITOR.removesuffix("]") + ", " if monitor else "--trainer.callbacks=[") + senders + "]"


EVERY_5 = "--checkpoint_every_n_steps=5"  # one falls on step 10, the evaluating step


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, tiny_bert_dir, data) -> str:
    """The run folder of the uninterrupted run with the best-checkpoint monitor and a checkpoint every 5 steps."""
    root = tmp_path_factory.mktemp("monitored")
    cli_main(command(tiny_bert_dir, data, root, EVERY_5, MONITOR))  # in this process: the reference, not under test
    return str(root / "run" / "version_0")


@pytest.mark.parametrize("signals", [
    [(10, "on_validation_start", signal.SIGKILL)],  # step 10 ends epoch 0: killed before its evaluation ends
    # preempted at that step with a grace period shorter than the evaluation
    pytest.param([(10, "on_train_batch_end", signal.SIGTERM), (10, "on_validation_start", signal.SIGKILL)],
                 marks=pytest.mark.slow),
])
def test_a_kill_before_an_evaluation_ends_repeats_it_on_resume(tmp_path, tiny_bert_dir, data, monitored, signals):
    args = command(tiny_bert_dir, data, tmp_path / "killed", EVERY_5)
    run_dir = str(tmp_path / "killed" / "run" / "version_0")
    killed = run_train(args + [signals_at(*signals)], returncode=None)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_train(args + [MONITOR, "--ckpt_path", "last"])
    assert_same_run(run_dir, monitored)  # the step-10 evaluation's row and the export
    checkpoints = [sorted(os.listdir(os.path.join(d, "checkpoints"))) for d in (run_dir, monitored)]
    assert checkpoints[0] == checkpoints[1]  # the same best checkpoint (epoch and step in its name) beside last.ckpt


@pytest.mark.slow  # 4 processes (~31 s)
def test_resuming_inside_an_epoch_in_another_batch_order_is_refused_unless_the_epoch_starts_over(tmp_path,
                                                                                                 tiny_bert_dir, data):
    args = command(tiny_bert_dir, data, tmp_path, NO_EXPORT, "--trainer.max_steps=3", "--checkpoint_every_n_steps=3")
    run_train(args)  # stops after 3 of epoch 0's 10 batches
    other = tmp_path / "other-data"
    other.mkdir()
    write_jsonl(other / "train.jsonl", qa_rows(80))
    for split in ("validation.jsonl", "test.jsonl"):
        os.link(os.path.join(data, split), other / split)
    for changed, difference in (("--data.init_args.batch_size=32", "--data.init_args.batch_size 16 → 32"),
                                (f"--data.init_args.dataset={other}", "--data.init_args.dataset (training rows) 160 → 80")):
        refused = run_train(args + [changed, "--ckpt_path", "last"], returncode=None)
        assert refused.returncode != 0
        assert "the checkpoint was written after 3 batches of epoch 0" in refused.stderr and difference in refused.stderr
        assert "add --resume_epoch_from_start true to train epoch 0 again from its first batch" in refused.stderr
    resumed = run_train(args + ["--data.init_args.batch_size=32", "--trainer.max_steps=-1", "--trainer.max_epochs=1",
                                "--resume_epoch_from_start=true", "--ckpt_path", "last"])
    assert "epoch 0 trains again from its first batch (3 of its batches were trained" in resumed.stdout + resumed.stderr
    run_dir = str(tmp_path / "run" / "version_0")
    steps = [row["step"] for row in logged(run_dir) if row.get("train/loss")]
    assert steps == [str(step) for step in range(1, 1 + 3 + 5)]  # then all 5 batches of 32 of epoch 0
    assert any(row.get("val/dim_32_cosine_ndcg@10") for row in logged(run_dir))


@pytest.mark.slow  # 3 processes (~29 s)
def test_a_second_fit_into_a_run_folder_in_use_is_refused_and_a_killed_ones_lock_blocks_nothing(tmp_path,
                                                                                               tiny_bert_dir, data):
    args = command(tiny_bert_dir, data, tmp_path, NO_EXPORT, "--trainer.max_steps=3", "--checkpoint_every_n_steps=3")
    run_train(args)
    run_dir = str(tmp_path / "run" / "version_0")
    resume = args + ["--trainer.max_steps=-1", "--ckpt_path", "last"]
    # the first resume stops itself (SIGSTOP) at step 4, holding the folder and writing no checkpoint after step 3's
    stop = signals_at((4, "on_train_batch_end", signal.SIGSTOP), monitor=False, when_resuming=True)
    first = subprocess.Popen(train_command(resume + [stop]),
                             cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with open(os.path.join(run_dir, "fit.lock")) as lock:
            deadline = time.time() + 300
            while True:  # until the first resume holds the run folder
                assert first.poll() is None and time.time() < deadline
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
                except BlockingIOError:
                    break
                time.sleep(0.05)
        second = run_train(resume, returncode=None)
        assert second.returncode != 0
        assert f"{run_dir} is in use by another train.py fit (pid {first.pid}," in second.stderr
        assert f"resume with --ckpt_path {run_dir}" in second.stderr
    finally:
        first.kill()  # SIGKILL (stopped or not): the lock goes with the process
        first.wait()
    stale = os.path.join(run_dir, "checkpoints", "last.ckpt.partial")  # as a kill while writing leaves it
    with open(stale, "wb") as file:
        file.write(b"\0" * 4096)
    resumed = run_train(args[:-2] + ["--trainer.max_steps=5", "--ckpt_path", "last"])  # from step 3 again
    assert not os.path.exists(stale) and "Removed 1 partly written checkpoint(s) left by a killed run" in \
        resumed.stdout + resumed.stderr
    steps = [int(row["step"]) for row in logged(run_dir) if row.get("train/loss")]
    assert steps == list(range(1, 6))  # each step logged once


class _Unwritable:
    def __reduce__(self):
        raise OSError(28, "No space left on device")  # as a full disk fails a write


def test_a_checkpoint_is_written_beside_its_file_and_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))  # where fsspec's transaction writes Lightning's
    target = str(tmp_path / "checkpoints" / "last.ckpt")
    seen, replace = [], os.replace

    def rename(source, destination):  # the moment the checkpoint is whole: where was it written?
        seen.append((source, os.listdir(system_temp)))
        replace(source, destination)

    monkeypatch.setattr(os, "replace", rename)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.arange(1000)}, target)
    assert seen == [(target + ".partial", [])] and torch.equal(torch.load(target)["step"], torch.arange(1000))
    with pytest.raises(OSError, match="No space left on device"):
        io.save_checkpoint({"step": torch.arange(5), "state": _Unwritable()}, target)
    assert os.listdir(tmp_path / "checkpoints") == ["last.ckpt"] and not os.listdir(system_temp)
    assert torch.equal(torch.load(target)["step"], torch.arange(1000))  # the previous checkpoint, whole


@pytest.mark.slow  # 2 processes (~16 s)
def test_the_best_checkpoint_is_a_hard_link_to_last_ckpt_of_its_step_and_keeps_it(tmp_path, tiny_bert_dir, data):
    """Evaluations at steps 10 and 20; two recipe ModelCheckpoints monitor the step: `first` keeps step 10 (then a
    non-best evaluation), `latest` keeps step 20 (and removes its step-10 file, a name of the same file)."""
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "monitor": "step", "mode": mode, "save_top_k": 1, "filename": f"{name}-{{step}}"}}
        for name, mode in (("first", "min"), ("latest", "max"))]
    run_train(command(tiny_bert_dir, data, tmp_path, "--checkpoint_every_n_steps=0",
                "--trainer.callbacks=" + json.dumps(callbacks)))
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["first-step=10.ckpt", "last.ckpt", "latest-step=20.ckpt"]
    first, last, latest = (os.stat(folder / name) for name in sorted(os.listdir(folder)))
    assert (latest.st_ino, latest.st_nlink) == (last.st_ino, 2)  # the same step: one file
    assert (first.st_ino != last.st_ino, first.st_nlink) == (True, 1)  # last.ckpt was replaced, not overwritten
    best = torch.load(folder / "first-step=10.ckpt", map_location="cpu", weights_only=True)  # as ExportModel loads it
    assert best["global_step"] == 10
    # it is last.ckpt of step 10, written again after the ModelCheckpoints saved at the epoch's end: a run resumed from
    # it (or from last.ckpt then) knows step 10 as both callbacks' best
    bests = sorted(os.path.basename(state["best_model_path"]) for key, state in best["callbacks"].items()
                   if key.startswith("ModelCheckpoint"))
    assert bests == ["first-step=10.ckpt", "latest-step=10.ckpt"]
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 20
    # what ExportModel exported (the first callback's best) holds the weights of step 10
    exported = load_file(os.path.join(tmp_path, "run", "version_0", "model", "model.safetensors"))
    name = next(iter(exported))
    assert torch.equal(exported[name], next(v for k, v in best["state_dict"].items() if k.endswith(name)))
