"""litembed command line: ``python train.py fit --config configs/<recipe>.yaml`` (also validate, test, predict)."""

import os

from lightning.pytorch import LightningDataModule

from callbacks.prediction_writer import PredictionWriter
from callbacks.resume import ResumableCheckpoint, resolve_resume
from cli_errors import ShortErrorsCLI, fail
from lightning_modules.base import EmbeddingModule

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs in DataLoader workers instead


class LitEmbedCLI(ShortErrorsCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, evaluate the best checkpoint on the datamodule's test split, if it has one")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=500,
                            help="fit writes <run>/checkpoints/last.ckpt every this many optimizer steps (0: never), "
                                 "after every evaluation and on SIGTERM; --ckpt_path last (or the run folder) resumes")

    def before_instantiate_classes(self) -> None:
        # --ckpt_path last / a run folder / a file in <run>/checkpoints: resume that file and log into its run folder
        config = self.config.get(self.subcommand) if self.subcommand else None
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
        resumable = [c for c in self.trainer.callbacks if isinstance(c, ResumableCheckpoint)]
        if ckpt_path and resumable:
            resumable[0].keep_metrics(self.trainer, ckpt_path)

    def instantiate_trainer(self, **kwargs):
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        trainer = self._get(self.config_init, "trainer", default={})
        if (self.subcommand in (None, "fit") and trainer.get("enable_checkpointing") is not False
                and not any(isinstance(c, ResumableCheckpoint) for c in callbacks)):
            callbacks.append(ResumableCheckpoint(config.checkpoint_every_n_steps))
        if self.subcommand == "predict" and not any(isinstance(c, PredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())  # <log_dir>/predictions/<stream>.npy and .parquet
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def after_fit(self) -> None:
        if self.config[self.subcommand].test_after_fit and self.datamodule.retrieval_tasks("test"):
            # the module holds the best weights already (on_fit_end loads them to export)
            self.trainer.test(self.model, datamodule=self.datamodule)


def cli_main(args: list[str] | None = None, run: bool = True) -> LitEmbedCLI:
    # batch samplers shard across ranks themselves (no-duplicates batches must be formed before sharding)
    return LitEmbedCLI(EmbeddingModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       auto_configure_optimizers=False,  # --optimizer would replace the module's AdamW + schedule
                       trainer_defaults={"use_distributed_sampler": False}, args=args, run=run,
                       save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
