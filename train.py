"""litembed command line: ``python train.py fit --config configs/<recipe>.yaml`` (also validate, test, predict)."""

import os
from typing import IO

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from callbacks.export import ExportModel, untrained_fit
from callbacks.validation import ValidatedFit
from callbacks.prediction_writer import PredictionWriter
from callbacks.resume import ResumableCheckpoint, lock_run_folder, resolve_resume
from callbacks.throughput import SamplesPerSecond
from cli_errors import ShortErrorsCLI, fail
from lightning_modules.base import EmbeddingModule
from reporting.console import quiet

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs in DataLoader workers instead


class LitEmbedCLI(ShortErrorsCLI):
    _run_lock: IO[str] | None = None  # held by rank 0 from before fit to the end of after_fit (lock_run_folder)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, evaluate the best checkpoint on the datamodule's test split, if it has one")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=500,
                            help="fit writes <run>/checkpoints/last.ckpt every this many optimizer steps (0: never), "
                                 "after every evaluation and on SIGTERM; --ckpt_path last (or the run folder) resumes")
        parser.add_argument("--resume_epoch_from_start", type=bool, default=False,
                            help="with --ckpt_path, train the epoch the checkpoint stopped in again from its first "
                                 "batch, in this run's batch order: the way to resume with another batch size, data "
                                 "or seed (otherwise refused inside an epoch)")
        # fit's export step (the best weights, the model card, the plots); --card.title etc. fill the card
        parser.add_lightning_class_args(ExportModel, "card")
        parser.add_argument("--tensorboard", type=bool, default=False,
                            help="also log to TensorBoard, in the run folder beside metrics.csv "
                                 "(pip install tensorboard; then: tensorboard --logdir <run folder>)")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if self.subcommand == "fit" and (refusal := untrained_fit(config.trainer)):
            fail(refusal)  # before the model and the data load
        # --ckpt_path last / a run folder / a file in <run>/checkpoints: resume that file and log into its run folder
        if self.subcommand != "fit" or not config.ckpt_path:
            return
        logger = config.trainer.logger
        args = getattr(logger, "init_args", None) if not isinstance(logger, (list, bool, type(None))) else None
        if args is not None and "save_dir" not in args:
            args = None
        try:
            checkpoint, run = resolve_resume(config.ckpt_path, None if args is None else {
                "save_dir": args.save_dir, "name": args.get("name")})
        except ValueError as err:
            fail(str(err))
        config.ckpt_path = checkpoint
        if run is not None:
            args.save_dir, args.name, args.version = run["save_dir"], run["name"], run["version"]
            print(f"Resuming {checkpoint} into {os.path.join(*run.values())}", flush=True)

    def before_fit(self) -> None:
        ckpt_path = self.config.get(self.subcommand).ckpt_path
        if self.trainer.log_dir and self.trainer.is_global_zero:
            try:  # before anything in the folder is touched; held until the process ends
                self._run_lock = lock_run_folder(self.trainer.log_dir)
            except ValueError as err:
                fail(str(err))
        resumable = [c for c in self.trainer.callbacks if isinstance(c, ResumableCheckpoint)]
        if ckpt_path and resumable:
            resumable[0].keep_metrics(self.trainer, ckpt_path)

    def instantiate_trainer(self, **kwargs):
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        loggers = self._loggers(trainer.get("logger"), config.tensorboard)
        if self.subcommand in (None, "fit"):
            if trainer.get("enable_checkpointing") is not False and not _has(callbacks, ResumableCheckpoint):
                callbacks.append(ResumableCheckpoint(config.checkpoint_every_n_steps,
                                                     epoch_from_start=config.resume_epoch_from_start))
            if not _has(callbacks, SamplesPerSecond):
                callbacks.append(SamplesPerSecond())
            if not _has(callbacks, ValidatedFit):
                callbacks.append(ValidatedFit())
            if loggers and not _has(callbacks, LearningRateMonitor):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "predict" and not _has(callbacks, PredictionWriter):
            callbacks.append(PredictionWriter())  # <log_dir>/predictions/<stream>.npy and .parquet
        return super().instantiate_trainer(callbacks=callbacks, logger=loggers, **kwargs)

    @staticmethod
    def _loggers(logger, tensorboard: bool):
        """The configured loggers, with a CSVLogger first (the card and plots read its metrics.csv; Lightning's
        default would be TensorBoard's binary log) and, with ``--tensorboard true``, TensorBoard in the same folder."""
        if logger is False:
            return False
        loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, list) else [logger]
        if not any(isinstance(x, CSVLogger) for x in loggers):
            loggers.insert(0, CSVLogger(save_dir=loggers[0].save_dir if loggers and loggers[0].save_dir else ".",
                                        name="lightning_logs" if not loggers else loggers[0].name or ""))
        if tensorboard and not any(isinstance(x, TensorBoardLogger) for x in loggers):
            csv = next(x for x in loggers if isinstance(x, CSVLogger))
            # the CSV logger's resolved version: both write into <save_dir>/<name>/version_N
            loggers.append(TensorBoardLogger(save_dir=csv.save_dir, name=csv.name, version=csv.version,
                                             default_hp_metric=False))
        return loggers

    def after_fit(self) -> None:
        if self.config[self.subcommand].test_after_fit and self.datamodule.retrieval_tasks("test"):
            # the module holds the exported (best) weights: ExportModel loaded them at the end of fit
            self.trainer.test(self.model, datamodule=self.datamodule)
        exporters = [c for c in self.trainer.callbacks if isinstance(c, ExportModel)]
        if exporters and self.trainer.is_global_zero and exporters[0].summary():
            print("\n" + exporters[0].summary(), flush=True)
        if self._run_lock is not None:
            self._run_lock.close()  # the run folder is free for a resume


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
