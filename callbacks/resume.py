"""Runs that survive being killed: a resumable ``last.ckpt`` in the run folder, exact mid-epoch resume, and a clean
stop on SIGTERM (what SLURM and cloud preemption send before they kill) and on Ctrl-C.

``ResumableCheckpoint`` writes ``<run>/checkpoints/last.ckpt`` every ``every_n_train_steps`` optimizer steps and after
every evaluation (so the evaluation history and the best score travel with it). With it a checkpoint holds everything
an uninterrupted run would still know: weights, optimiser and schedule (Lightning), the position in the epoch's batch
order (the datamodule's ``state_dict``), the random number generators (here: dropout masks go on as they would have)
and the evaluation history (the module's ``on_save_checkpoint``). ``resolve_resume`` turns ``--ckpt_path last`` or a
run folder into that file and the run folder to log into, so the metrics log goes on where it stopped.
"""

import contextlib
import csv
import fcntl
import glob
import os
import random
import re
import shlex
import shutil
import signal
import sys
import warnings
from typing import IO

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning

# Lightning cannot see that litembed's datamodules resume mid-epoch (their state_dict holds the position; Lightning
# looks for a stateful DataLoader) and warns that the resumed epoch may repeat batches: it does not.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended",
                        category=PossibleUserWarning)

LAST = "last.ckpt"
# in a checkpoint written when an evaluation inside an epoch ends: the loggers' step count lacks the step before it
STEP_AFTER_EVALUATION = "litembed_step_before_evaluation_uncounted"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """128 + the signal, what a process killed by it reports: 143 for SIGTERM (schedulers read it as preempted), 130
    for SIGINT (Ctrl-C)."""
    return 128 + signum


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


def rng_states() -> dict:
    """Every generator's state, as tensors and plain values (what ``torch.load(weights_only=True)`` reads)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position,
                                                        has_gauss, gauss), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


PARTIAL = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing a local file as ``<file>.partial`` beside it and renaming it when whole.

    Lightning's own writes it to a file in the system temporary folder (fsspec's transaction) and moves it over: a
    process killed meanwhile left a full-size file there for good, and the move copies it across filesystems. Here a
    failed write (disk full, an unpicklable state) removes its ``.partial`` and a killed one leaves it beside the
    checkpoint, where ``ResumableCheckpoint`` removes it when the next fit starts. Other filesystems keep Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        partial = os.fspath(path) + PARTIAL
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
            raise


class ResumableCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps, after every evaluation and when training ends; on
    SIGTERM or Ctrl-C, one at the next optimizer-step boundary (or at the end of the evaluation under way), then the
    command that resumes, then exit code 143 (SIGTERM) or 130 (Ctrl-C). A second Ctrl-C stops at once, saving nothing.

    ``train.py`` adds one to every fit (``--checkpoint_every_n_steps``); list it under ``trainer.callbacks`` only to
    change where it writes.

    A checkpoint written inside an epoch resumes only with the batch order it was written with (the datamodule's
    ``batch_order``: batch size, data, seed…); with another, resuming is refused, naming what changed, unless
    ``epoch_from_start`` trains that epoch again from its first batch.

    Args:
        every_n_train_steps: optimizer steps between checkpoints (0: only after evaluations, at the end of training
            and on SIGTERM or Ctrl-C). Writing one costs about the time to copy the weights and the optimiser state
            (3× the model size) to disk.
        dirpath: default ``<run folder>/checkpoints``, where ``--ckpt_path last`` looks.
        epoch_from_start: resuming a checkpoint written inside an epoch, train that epoch from its first batch in
            this run's batch order (weights, optimiser, schedule, epoch number and logging step go on).
    """

    def __init__(self, every_n_train_steps: int = 500, dirpath: str | None = None,
                 epoch_from_start: bool = False) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"--checkpoint_every_n_steps must be ≥ 0 (0: only after evaluations), got "
                             f"{every_n_train_steps}")
        # one last.ckpt, overwritten (a resumed run writes the file it resumed from, not last-v1.ckpt)
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps or None,
                         save_on_train_epoch_end=False, enable_version_counter=False)
        self._rng_to_restore: dict | None = None
        self._signal = 0  # the stop signal received during training (0: none)
        self._pid = os.getpid()  # the process that trains (DataLoader workers inherit the signal handler)
        self._stop_after_logging = False
        self._flush_logs = False
        self._previous_handlers: dict[int, object] = {}
        self._kept_metrics: list[dict] | None = None
        self._saved_before_evaluation: dict[int, int] = {}  # each ModelCheckpoint's last saved step, by id
        self._evaluated_step = -1  # the step of the last.ckpt written when an evaluation ended
        self._saved_at_evaluation: dict[int, int] = {}  # each ModelCheckpoint's last saved step then, by id
        self.epoch_from_start = epoch_from_start

    # what a checkpoint carries beyond Lightning's loops, weights, optimiser and schedule
    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": rng_states()}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        loop = trainer.fit_loop.epoch_loop
        if trainer.state.fn == "fit" and trainer.validating and not trainer.sanity_checking \
                and not loop.batch_progress.is_last_batch and not loop._should_accumulate():
            # written when an evaluation inside an epoch ends, before Lightning counts the step that preceded it for
            # the loggers; restoring such a checkpoint does not count it either (it does for one written in the
            # step's own hooks), so on_load_checkpoint counts it: else what a user's callback logs through Lightning
            # in the resumed run lands one step too low
            checkpoint[STEP_AFTER_EVALUATION] = True

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        self._rng_to_restore = state.pop("rng", None)
        super().load_state_dict(state)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # before Lightning restores its loops from the checkpoint, after the datamodule's position
        datamodule = trainer.datamodule
        state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        # at an epoch's start or end the next batches are an epoch's first, in any order
        inside = bool(state and "order" in state and state["batches"] and not progress["is_last_batch"])
        restart = self.epoch_from_start and inside
        if checkpoint.pop(STEP_AFTER_EVALUATION, False) and not restart:
            # (with the epoch's progress rewritten below, Lightning's restore counts that step itself: tested)
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] += 1
        if not inside:
            return
        epoch, trained = state["epoch"], state["batches"]
        if restart:
            # Lightning counts a checkpoint written in the batch's end hooks (completed = processed - 1) as one more
            # batch completed when it resumes: -1 then becomes 0
            total = progress["total"]
            progress["current"].update(ready=0, started=0, processed=0,
                                       completed=-1 if total["completed"] < total["processed"] else 0)
            datamodule.load_state_dict({**state, "batches": 0})
            rank_zero_info(f"--resume_epoch_from_start true: epoch {epoch} trains again from its first batch "
                           f"({trained} of its batches were trained before the checkpoint)")
            return
        now = datamodule.batch_order()
        changed = [f"{flag} {state['order'].get(flag)!r} → {value!r}" for flag, value in now.items()
                   if state["order"].get(flag) != value]
        if changed:
            raise ValueError(
                f"--ckpt_path {trainer.ckpt_path}: the checkpoint was written after {trained} batches of epoch {epoch}, "
                f"and this run's batch order differs from the one they were taken from (checkpoint → now): "
                + "; ".join(changed) + ". Resuming would skip other rows than those trained. Resume with the values "
                f"the checkpoint was written with, or add --resume_epoch_from_start true to train epoch {epoch} again "
                f"from its first batch in the new order (weights, optimiser, schedule and epoch number go on).")

    def keep_metrics(self, trainer, checkpoint: str) -> None:
        """Before ``trainer.fit(ckpt_path=checkpoint)`` into the checkpoint's run folder: the CSV logger deletes
        ``metrics.csv`` when fit starts; keep its rows up to the checkpoint's step (later ones are logged again) and
        write them back when training starts. A copy stays beside it until then, in case the resume fails first."""
        path = os.path.join(trainer.log_dir or "", "metrics.csv")
        if not trainer.is_global_zero or not isinstance(trainer.logger, CSVLogger):
            return
        if os.path.isfile(path + ".resuming"):  # an earlier resume stopped before training: its copy is the log
            shutil.copyfile(path + ".resuming", path)
        elif os.path.isfile(path):
            shutil.copyfile(path, path + ".resuming")
        else:
            return
        # rows are logged at the optimizer steps taken (reporting.metrics_log.log_row): those up to the checkpoint's
        last_step = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["global_step"]
        with open(path, newline="") as file:
            self._kept_metrics = [row for row in csv.DictReader(file) if row.get("step") and int(row["step"]) <= last_step]

    def on_train_start(self, trainer, pl_module) -> None:
        if self._kept_metrics is not None:
            trainer.logger.experiment.metrics[:0] = self._kept_metrics
            trainer.logger.save()
            os.remove(os.path.join(trainer.log_dir, "metrics.csv.resuming"))
        self._kept_metrics = None
        # after Lightning's own SIGTERM handler (registered when fit starts), which would only stop at the epoch's
        # end, and Python's Ctrl-C (KeyboardInterrupt: Lightning then exits saving nothing)
        self._signal, self._pid = 0, os.getpid()
        self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def on_train_end(self, trainer, pl_module) -> None:
        # the end of training is resumable too: a run stopped in its export or test resumes straight into them
        if not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step
            self._flush_logs = True
        self._stop_after_logging = bool(self._preempted(trainer))  # a signal after the last step's check
        self._after_logging(trainer)
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker forked with this handler (a terminal's Ctrl-C reaches it too): it goes on
        if signum == signal.SIGINT and self._signal:
            # the second Ctrl-C: the user will not wait for the step to end; die of SIGINT as an unhandled one would
            print("Ctrl-C again: stopping now, without saving this step"
                  + (f"; resume from the last checkpoint written ({self.last_model_path}) with:\n  "
                     f"{resume_command(run_folder(self.last_model_path) or self.last_model_path)}"
                     if self.last_model_path else ""), file=sys.stderr, flush=True)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return
        if not self._signal:
            again = " (Ctrl-C again stops at once, without it)" if signum == signal.SIGINT else ""
            print(f"{signal_name(signum)} received: saving a checkpoint after the current optimizer step (or the "
                  f"evaluation under way){again}", file=sys.stderr, flush=True)
        self._signal = max(self._signal, signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            # here, not when loading: Lightning draws from the generator when it starts the epoch's data iterator
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self._after_logging(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        # A step an evaluation follows is saved when the evaluation ends (on_validation_end), not here: Lightning
        # resumes a checkpoint written here as if the evaluation had run, so a kill during it would lose its metrics
        # and best checkpoint. A kill then resumes from the checkpoint before, whose steps are trained again exactly.
        evaluation_follows = self._evaluation_follows(trainer)
        saved = self._last_global_step_saved
        if not evaluation_follows:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._flush_logs |= self._last_global_step_saved != saved
        if loop._should_accumulate():
            return  # mid-accumulation: a checkpoint cannot hold the gradients summed so far
        if self._preempted(trainer):
            if self._last_global_step_saved != trainer.global_step and not evaluation_follows:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
                self._last_global_step_saved = trainer.global_step
            # exit once Lightning has logged this step (next batch, evaluation, or the epoch's end)
            self._stop_after_logging = self._flush_logs = True

    @staticmethod
    def _evaluation_follows(trainer) -> bool:
        """Whether Lightning evaluates after this training batch (on every rank alike): a validation is due and there
        is something to validate (a datamodule without a validation split still has a ``val_dataloader``)."""
        loop = trainer.fit_loop.epoch_loop
        if not loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return False
        loop.val_loop.setup_data()  # the validation loaders, which Lightning's first evaluation would ask for now
        return not loop.val_loop.skip

    def on_validation_start(self, trainer, pl_module) -> None:
        self._saved_before_evaluation = {id(c): c._last_global_step_saved for c in trainer.checkpoint_callbacks}
        self._after_logging(trainer, evaluation_follows=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # after the recipe's ModelCheckpoints, which save here when the evaluation runs once, at the epoch's end: the
        # last.ckpt written when that evaluation ended does not hold their new state (this step is their best), so a
        # run resumed from it would forget that best; written again, it does, and the best file shares it
        step = trainer.global_step
        if self._evaluated_step == step and any(
                c is not self and c._last_global_step_saved == step and self._saved_at_evaluation.get(id(c)) != step
                for c in trainer.checkpoint_callbacks):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._share_file_with_best(trainer)
        self._after_logging(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        # always, even at a step a periodic checkpoint was written: this one holds the evaluation's results
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        # the evaluation's metrics on disk first: a checkpoint that holds it is never resumed without its row
        self._flush(trainer)
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = self._evaluated_step = trainer.global_step
        self._saved_at_evaluation = {id(c): c._last_global_step_saved for c in trainer.checkpoint_callbacks}
        self._share_file_with_best(trainer)
        # a signal during the evaluation: it has finished, and this checkpoint holds its results (the resume does not
        # redo it); stop here rather than train on to the next step boundary
        self._stop_after_logging |= bool(self._preempted(trainer))
        self._after_logging(trainer)

    def _share_file_with_best(self, trainer) -> None:
        """Make each checkpoint another ModelCheckpoint wrote since this step's evaluation started (the recipe's best)
        a hard link to the ``last.ckpt`` written when the evaluation ended: the same step and weights, one file on disk
        instead of two full copies. The best then holds what ``last.ckpt`` held, which resumes exactly. A later
        ``last.ckpt`` is a new file renamed into place (``AtomicCheckpointIO``), so the best keeps this step's
        checkpoint, and removing an old best unlinks only its name. Where that writer is not the one in use, or a link
        cannot be made (another filesystem, one without hard links), the two copies stay."""
        last = self.last_model_path
        if not trainer.is_global_zero or self._evaluated_step != trainer.global_step or not last \
                or not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO) \
                or not isinstance(get_filesystem(last), LocalFileSystem):
            return
        for callback in trainer.checkpoint_callbacks:
            path = callback._last_checkpoint_saved
            if callback is self or callback.save_weights_only or not path \
                    or callback._last_global_step_saved != trainer.global_step \
                    or self._saved_before_evaluation.get(id(callback)) == trainer.global_step:
                continue
            link = path + PARTIAL  # removed when the next fit starts if this process dies before the rename
            try:
                if not os.path.samefile(last, path):
                    os.link(last, link)
                    os.replace(link, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.remove(link)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as err:  # a full disk says so without a file name: name the checkpoint
            raise OSError(err.errno, err.strerror, filepath) from err

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one a strategy or the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            # what a process killed while writing left (this folder is the run's: no other fit writes in it now)
            stale = sorted(glob.glob(os.path.join(self.dirpath, "*" + PARTIAL)))
            for path in stale:
                os.remove(path)
            if stale:
                rank_zero_info(f"Removed {len(stale)} partly written checkpoint(s) left by a killed run: {stale}")

    def _preempted(self, trainer) -> int:
        """The stop signal any rank received (0: none; SIGTERM over SIGINT): every rank stops at the same step, with
        the same exit code (one small all-reduce per step under DDP, as Lightning's own SIGTERM broadcast)."""
        if trainer.world_size == 1:
            return self._signal
        flag = torch.tensor(float(self._signal), device=trainer.strategy.root_device)
        self._signal = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        return self._signal

    def _flush(self, trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
        self._flush_logs = False

    def _after_logging(self, trainer, evaluation_follows: bool = False) -> None:
        if self._flush_logs:
            self._flush(trainer)
        if self._stop_after_logging and not evaluation_follows:
            self._stop_after_logging = False
            rank_zero_info(f"{'Interrupted' if self._signal == signal.SIGINT else 'Preempted'} at step "
                           f"{trainer.global_step}: saved {self.last_model_path}\nResume with:\n  "
                           f"{resume_command(run_folder(self.last_model_path) or self.last_model_path)}")
            raise SystemExit(exit_code(self._signal))


RUN_LOCK = "fit.lock"


def lock_run_folder(folder: str) -> IO[str]:
    """Hold ``<folder>/fit.lock`` while the returned file is open (at most this process's life), so that no other fit
    logs into the run folder meanwhile: two would interleave ``metrics.csv`` rows and overwrite each other's
    ``last.ckpt``.

    ``flock`` is released by the operating system when the process ends, however it ends: a lock file left by a
    killed run blocks nothing.

    Raises:
        ValueError: another process holds the lock, named by the pid it wrote into the file.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, RUN_LOCK)
    file = open(path, "a+")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise ValueError(f"{folder} is in use by another train.py fit (pid {holder}, which holds {path}): two runs "
                         f"logging into one folder would interleave metrics.csv and overwrite each other's "
                         f"checkpoints. Wait for it to end (or stop it), then resume with --ckpt_path {folder}.")
    file.truncate(0)
    file.write(str(os.getpid()))
    file.flush()
    return file


def run_folder(checkpoint: str) -> str | None:
    """The run folder of ``<run>/checkpoints/<file>.ckpt`` (as spelt), None for a checkpoint elsewhere."""
    parent = os.path.dirname(os.path.normpath(checkpoint))
    return os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else None


def resume_command(target: str) -> str:
    """This process's command line with ``--ckpt_path target`` (replacing any ``--ckpt_path``)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            args.append(arg)
    return shlex.join(["python", sys.argv[0], *args, "--ckpt_path", os.path.relpath(target)])


def resolve_resume(ckpt_path: str, logger_args: dict | None) -> tuple[str, dict | None]:
    """``--ckpt_path`` as given → (the checkpoint file, logger arguments that log into its run folder or None): what
    fit resumes, and what validate, test and predict evaluate.

    ``last``: the newest run under the logger's ``save_dir/name`` that has ``checkpoints/last.ckpt``. A folder: that
    run's ``checkpoints/last.ckpt``. A file inside ``<run>/checkpoints``: that file, logging into ``<run>``.
    """
    where = None if logger_args is None else os.path.join(logger_args.get("save_dir") or ".", logger_args.get("name") or "")
    if ckpt_path == "last":
        if where is None:
            return ckpt_path, None  # no run folders to search: Lightning's own lookup
        found = glob.glob(os.path.join(where, "*", "checkpoints", LAST))
        if not found:
            raise ValueError(f"--ckpt_path last: no run under {where}/ has checkpoints/{LAST}. Pass the run folder or "
                             f"checkpoint file, or drop --ckpt_path (fit then starts a new run; validate, test and "
                             f"predict evaluate the base model).")
        checkpoint = max(found, key=lambda f: (_version_number(run_folder(f)), os.path.getmtime(f)))
    elif os.path.isdir(ckpt_path):
        checkpoint = os.path.join(ckpt_path, "checkpoints", LAST)
        if not os.path.isfile(checkpoint):
            found = sorted(glob.glob(os.path.join(ckpt_path, "**", "*.ckpt"), recursive=True))
            raise ValueError(f"--ckpt_path {ckpt_path}: the folder has no checkpoints/{LAST} to resume from"
                             + (f"; checkpoints in it: {found}" if found else " (and no other checkpoint)"))
    elif not os.path.isfile(ckpt_path):
        raise ValueError(f"--ckpt_path {ckpt_path}: no such file or run folder")
    else:
        checkpoint = ckpt_path
    run = run_folder(checkpoint)
    if run is None or logger_args is None:
        return checkpoint, None
    # spelt as the user spelt them: ModelCheckpoint reloads its best-model state only into the same dirpath string
    parent = os.path.dirname(run)
    return checkpoint, {"save_dir": os.path.dirname(parent) or ".", "name": os.path.basename(parent),
                        "version": os.path.basename(run)}


def _version_number(run: str | None) -> int:
    match = re.fullmatch(r"version_(\d+)", os.path.basename(run or ""))
    return int(match.group(1)) if match else -1
