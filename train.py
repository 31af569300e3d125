"""litembed command line: ``python train.py fit --config configs/<recipe>.yaml`` (also validate, test, predict)."""

import os

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from lightning_modules.base import EmbeddingModule

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs in DataLoader workers instead


class LitEmbedCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, evaluate the best checkpoint on the datamodule's test split, if it has one")

    def after_fit(self) -> None:
        if self.config[self.subcommand].test_after_fit and self.datamodule.retrieval_tasks("test"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if self.trainer.checkpoint_callback else None)


def cli_main(args: list[str] | None = None, run: bool = True) -> LitEmbedCLI:
    # batch samplers shard across ranks themselves (no-duplicates batches must be formed before sharding)
    return LitEmbedCLI(EmbeddingModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       trainer_defaults={"use_distributed_sampler": False}, args=args, run=run,
                       save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
