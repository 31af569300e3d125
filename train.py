"""litembed command line: ``python train.py fit --config configs/<recipe>.yaml`` (also validate, test, predict)."""

import errno
import os
import shutil
import signal
import sys
import tempfile
from typing import IO

from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from callbacks.data_report import DataReport
from callbacks.export import ExportModel, untrained_fit
from callbacks.nonfinite import NonFiniteGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.resume import STOP_SIGNALS, ResumableCheckpoint, exit_code, lock_run_folder, resolve_resume, \
    resume_command, run_folder, signal_name
from callbacks.training_log import TrainingLog
from callbacks.validation import ValidatedFit
from cli_errors import RETIRED, ShortErrorsCLI, checkpoint_problem, fail
from cli_options import add_options
from lightning_modules.base import EmbeddingModule
from reporting.console import quiet

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs in DataLoader workers instead
# what a full disk, a quota or a folder one cannot write raises: the machine's state, not a bug (which keeps its
# traceback)
MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EIO}
SAVE_DIR = "--trainer.logger.init_args.save_dir"
LIGHTNING_CHECKPOINTS = ("best", "last", "hpc", "registry")  # --ckpt_path names Lightning looks up itself


class LitEmbedCLI(ShortErrorsCLI):
    _run_lock: IO[str] | None = None  # held by rank 0 from before fit to the end of after_fit (lock_run_folder)
    _evaluation_folder: tuple[str, str] | None = None  # (save_dir, name) validate, test and predict log into

    def add_arguments_to_parser(self, parser) -> None:
        add_options(parser)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # Lightning's results table lists every logged metric twice, cut at 80 columns; the module prints
            # litembed's table of the headline metrics instead (--verbose true brings Lightning's back)
            parser.set_defaults(verbose=False)
        return parser

    def _parse_ckpt_path(self) -> None:
        # before LightningCLI's own, which loads the file (unsafely advised, at length) and puts the model class and
        # hyperparameters it holds in the config: a checkpoint of another model would then fail in a dump of its own
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and subcommand != "fit" and ckpt_path not in LIGHTNING_CHECKPOINTS \
                and not os.path.exists(ckpt_path):
            fail(f"--ckpt_path {ckpt_path}: no such file or run folder; {checkpoint_advice(subcommand)}")
        if ckpt_path and os.path.isfile(ckpt_path):
            self._check_checkpoint(subcommand, ckpt_path)
        super()._parse_ckpt_path()
        if ckpt_path and os.path.isfile(ckpt_path):
            self._drop_retired_arguments(subcommand, ckpt_path)

    def _drop_retired_arguments(self, subcommand: str, ckpt_path: str) -> None:
        """A checkpoint of an earlier litembed holds model arguments that moved elsewhere (``RETIRED``): LightningCLI
        puts the ones the model no longer takes in ``dict_kwargs``, which the model would be called with. Those moved
        are left out, saying where they went; any other stops the run here, in one line."""
        model = self.config[subcommand].get("model")
        extra = dict(model.get("dict_kwargs") or {}) if model is not None else {}
        for key, value in extra.items():
            if key not in RETIRED:
                fail(f"--ckpt_path {ckpt_path}: the checkpoint's model was built with {key}={value!r}, which "
                     f"{model.class_path} does not take (a checkpoint of another litembed version); "
                     f"{checkpoint_advice(subcommand)}")
            print(f"{ckpt_path}: the model argument {key}={value!r} of the litembed that wrote it is "
                  f"{RETIRED[key]} now; this run uses the recipe's", flush=True)
        if extra:
            model.dict_kwargs = {}

    def _check_checkpoint(self, subcommand: str, ckpt_path: str) -> None:
        """Refuse ``--ckpt_path`` in one line if the file is no checkpoint of this recipe's model: before the data
        loads, in the first minute."""
        model = self.config[subcommand].get("model")
        problem = checkpoint_problem(ckpt_path, model.class_path if model else None, checkpoint_advice(subcommand))
        if problem:
            fail(problem)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if self.subcommand == "fit" and (refusal := untrained_fit(config.trainer)):
            fail(refusal)  # before the model and the data load
        if config is None:
            return
        run = None
        # --ckpt_path last / a run folder / a file in <run>/checkpoints: that file, and the run it belongs to (best,
        # hpc and registry are Lightning's to look up when evaluating)
        if config.ckpt_path and (self.subcommand == "fit" or config.ckpt_path not in LIGHTNING_CHECKPOINTS
                                 or config.ckpt_path == "last"):
            given = config.ckpt_path
            run = self._resolve_checkpoint(config)
            if config.ckpt_path != given and os.path.isfile(config.ckpt_path):  # last or a run folder: its last.ckpt
                self._check_checkpoint(self.subcommand, config.ckpt_path)
        if self.subcommand != "fit":
            self._log_evaluation(config, run_folder(config.ckpt_path) if config.ckpt_path else None)
        elif run is not None:  # a resume logs into its run folder, metrics.csv going on where it stopped
            args = _logger_args(config.trainer.logger)
            args.save_dir, args.name, args.version = run["save_dir"], run["name"], run["version"]
            print(f"Resuming {config.ckpt_path} into {os.path.join(*run.values())}", flush=True)

    def _resolve_checkpoint(self, config) -> dict | None:
        args = _logger_args(config.trainer.logger)
        try:
            checkpoint, run = resolve_resume(config.ckpt_path, None if args is None else {
                "save_dir": args.save_dir, "name": args.get("name")})
        except ValueError as err:
            fail(str(err))
        config.ckpt_path = checkpoint
        return run

    def _log_evaluation(self, config, evaluated_run: str | None) -> None:
        """validate, test and predict log into ``<run>/<subcommand>/version_N`` of the fit run whose checkpoint they
        evaluate, else (the base model, a checkpoint outside a run) into ``<save_dir>/<name>/<subcommand>/version_N``:
        never into a ``version_N`` beside the fit runs, which ``--ckpt_path last`` and a reader would take for one,
        nor into the run folder itself, whose metrics.csv the CSV logger would replace."""
        args = _logger_args(config.trainer.logger)
        folder = evaluated_run
        if folder is None:
            save_dir, name = (args.save_dir or ".", args.get("name") or "") if args is not None else (
                ".", "lightning_logs")  # what _loggers' default CSVLogger logs into
            folder = os.path.join(save_dir, name)
        if args is not None:
            args.save_dir, args.name, args.version = folder, self.subcommand, None
        self._evaluation_folder = (folder, self.subcommand)

    def before_fit(self) -> None:
        self._check_writable()
        ckpt_path = self.config.get(self.subcommand).ckpt_path
        if self.trainer.log_dir and self.trainer.is_global_zero:
            try:  # before anything in the folder is touched; held until the process ends
                self._run_lock = lock_run_folder(self.trainer.log_dir)
            except ValueError as err:
                fail(str(err))
        resumable = [c for c in self.trainer.callbacks if isinstance(c, ResumableCheckpoint)]
        if ckpt_path and resumable:
            resumable[0].keep_metrics(self.trainer, ckpt_path)
        # SIGTERM and Ctrl-C from here to the end of fit's export and test; during training ResumableCheckpoint's
        # handler takes over (a checkpoint at the next step boundary). Installed before any DataLoader worker forks:
        # the workers inherit it and leave the signal, which a terminal's Ctrl-C sends them too, to this process
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop_outside_training)

    def _check_writable(self) -> None:
        """The folder the run folder goes in must take files: said in the first minute, not at the first checkpoint
        hours later."""
        logger = self.trainer.logger
        if logger is None or logger.save_dir is None:
            return
        try:
            os.makedirs(logger.root_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=logger.root_dir):
                pass
        except OSError as err:
            fail(f"{SAVE_DIR} {logger.save_dir}: cannot write the run folder there ({err.strerror}: {err.filename}); "
                 f"pass a folder you can write to")

    def _run_subcommand(self, subcommand: str) -> None:
        # Lightning makes the log folder when the run starts, before the data, the model and the checkpoint are set
        # up (the loggers' experiment, then config.yaml): an evaluation that fails removes what it made, so its
        # folder (and any folder above it that it made) exists only with its results in it
        logger = self.trainer.logger
        made = _first_missing(logger.log_dir) if subcommand != "fit" and rank_zero_only.rank == 0 \
            and logger is not None and logger.log_dir else None
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if made:
                shutil.rmtree(made, ignore_errors=True)
            if not isinstance(err, OSError) or os.environ.get("JSONARGPARSE_DEBUG") or err.errno not in MACHINE_ERRORS:
                raise
            fail(self._machine_error(err), 1)

    def _machine_error(self, err: OSError) -> str:
        """A full disk or an unwritable file during a run: the file, the OS's reason, what to do and the command that
        goes on from the last checkpoint."""
        where = f"{err.filename}: " if err.filename else ""
        space = err.errno in (errno.ENOSPC, errno.EDQUOT)
        todo = "free space there" if space else "make it writable"
        run_root = self.trainer.logger.root_dir if self.trainer.logger is not None else None
        if run_root and err.filename and os.path.abspath(err.filename).startswith(os.path.abspath(run_root) + os.sep):
            todo += f", or write the run to another {'disk' if space else 'folder'} with {SAVE_DIR}"
        saved = next((c.last_model_path for c in self.trainer.callbacks if isinstance(c, ResumableCheckpoint)), "")
        if saved and os.path.isfile(saved):
            todo += f"; then resume with: {resume_command(run_folder(saved) or saved)}"
        return f"{where}{err.strerror}; {todo}"

    def _stop_outside_training(self, signum: int, frame) -> None:
        """SIGTERM or Ctrl-C before training or after it (the export, the test): say what stopped and the command
        that completes the run, and exit with 128 + the signal."""
        if os.getpid() != self._pid:
            return
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
        trainer = self.trainer
        saved = next((c.last_model_path for c in trainer.callbacks if isinstance(c, ResumableCheckpoint)), "")
        saved = saved or self.config.get(self.subcommand).ckpt_path  # a resume stopped before it restored
        if trainer.testing or any(isinstance(c, ExportModel) and c.trained for c in trainer.callbacks):
            stage = "the test of the exported model" if trainer.testing else "the export of the model"
            stopped = (f"during {stage}: stopped. Training is complete ({saved}); resuming goes straight to the export"
                       f" and the test" if saved else f"during {stage}: stopped; nothing was saved to resume from")
        else:
            stopped = "before training started: stopped" + ("" if saved else "; nothing was saved: rerun the command")
        if trainer.is_global_zero:
            resume = f"\nResume with:\n  {resume_command(run_folder(saved) or saved)}" if saved else ""
            print(f"{signal_name(signum)} received {stopped}{resume}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code(signum))

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # the model hands the data what it needs once (datamodules.contract): run=False callers get it too
        self.datamodule.connect(self.model.data_needs())

    def instantiate_trainer(self, **kwargs):
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        loggers = self._loggers(trainer.get("logger"), config.tensorboard, self._evaluation_folder)
        if self.subcommand in (None, "fit"):
            if trainer.get("enable_checkpointing") is not False and not _has(callbacks, ResumableCheckpoint):
                callbacks.append(ResumableCheckpoint(config.checkpoint_every_n_steps,
                                                     epoch_from_start=config.resume_epoch_from_start))
            if not _has(callbacks, TrainingLog):
                callbacks.append(TrainingLog())
            if not _has(callbacks, NonFiniteGuard):  # after TrainingLog: the row of the step that stops a run is logged
                callbacks.append(NonFiniteGuard(config.max_nonfinite_steps))
            if not _has(callbacks, DataReport):
                callbacks.append(DataReport())
            if not _has(callbacks, ValidatedFit):
                callbacks.append(ValidatedFit())
        if self.subcommand == "predict" and not _has(callbacks, PredictionWriter):
            callbacks.append(PredictionWriter())  # <log_dir>/predictions/<stream>.npy and .parquet
        return super().instantiate_trainer(callbacks=callbacks, logger=loggers, **kwargs)

    @staticmethod
    def _loggers(logger, tensorboard: bool, evaluation_folder: tuple[str, str] | None = None):
        """The configured loggers, with a CSVLogger first (the card and plots read its metrics.csv; Lightning's
        default would be TensorBoard's binary log) and, with ``--tensorboard true``, TensorBoard in the same folder.
        Without a configured logger the CSVLogger logs into ``evaluation_folder`` (save_dir, name) if given."""
        if logger is False:
            return False
        loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, list) else [logger]
        if not any(isinstance(x, CSVLogger) for x in loggers):
            save_dir, name = (loggers[0].save_dir or ".", loggers[0].name or "") if loggers else \
                evaluation_folder or (".", "lightning_logs")
            loggers.insert(0, CSVLogger(save_dir=save_dir, name=name))
        if tensorboard and not any(isinstance(x, TensorBoardLogger) for x in loggers):
            csv = next(x for x in loggers if isinstance(x, CSVLogger))
            # the CSV logger's resolved version: both write into <save_dir>/<name>/version_N
            loggers.append(TensorBoardLogger(save_dir=csv.save_dir, name=csv.name, version=csv.version,
                                             default_hp_metric=False))
        return loggers

    def after_fit(self) -> None:
        if self.config[self.subcommand].test_after_fit and self.datamodule.retrieval_tasks("test"):
            # the module holds the exported (best) weights: ExportModel loaded them at the end of fit
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        exporters = [c for c in self.trainer.callbacks if isinstance(c, ExportModel)]
        if exporters and self.trainer.is_global_zero and exporters[0].summary():
            print("\n" + exporters[0].summary(), flush=True)
        if self._run_lock is not None:
            self._run_lock.close()  # the run folder is free for a resume


def checkpoint_advice(subcommand: str) -> str:
    return ("pass <run folder>/checkpoints/last.ckpt or the run folder of a train.py fit run"
            + (", or drop --ckpt_path to start a new run" if subcommand == "fit" else ""))


def _logger_args(logger):
    """The init_args of a configured logger that writes into ``save_dir/name/version`` (CSV, TensorBoard), else
    None."""
    args = getattr(logger, "init_args", None) if not isinstance(logger, (list, bool, type(None))) else None
    return args if args is not None and "save_dir" in args else None


def _first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or one above it), or None."""
    missing = None
    while path and not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _has(callbacks: list, kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


def cli_main(args: list[str] | None = None, run: bool = True) -> LitEmbedCLI:
    quiet()
    # batch samplers shard across ranks themselves (no-duplicates batches must be formed before sharding)
    return LitEmbedCLI(EmbeddingModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       auto_configure_optimizers=False,  # --optimizer would replace the module's AdamW + schedule
                       trainer_defaults={"use_distributed_sampler": False}, args=args, run=run,
                       save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
