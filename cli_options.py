"""train.py's own arguments (beside ``--trainer``, ``--model``, ``--data`` and the subcommand's ``--ckpt_path``), declared
once: ``train.py`` builds its parser from them and the model card reads their defaults here
(``reporting.collect``), so a changed default cannot leave the card's "non-default hyperparameters" wrong."""

import inspect

from cli_errors import import_object

# name → the parser's add_argument keywords
OPTIONS: dict[str, dict] = {
    "test_after_fit": dict(
        type=bool, default=True,
        help="after fit, evaluate the best checkpoint on the datamodule's test split, if it has one"),
    "checkpoint_every_n_steps": dict(
        type=int, default=500,
        help="fit writes <run>/checkpoints/last.ckpt every this many optimizer steps (0: never), after every "
             "evaluation, when training ends and on SIGTERM or Ctrl-C; --ckpt_path last (or the run folder) resumes"),
    "max_nonfinite_steps": dict(
        type=int, default=10,
        help="optimizer steps skipped for a non-finite loss or gradient (never applied to the weights, each reported "
             "with its step and rows) after which fit stops; 0: stop at the first (callbacks.nonfinite)"),
    "resume_epoch_from_start": dict(
        type=bool, default=False,
        help="with --ckpt_path, train the epoch the checkpoint stopped in again from its first batch, in this run's "
             "batch order: the way to resume with another batch size, data or seed (otherwise refused inside an "
             "epoch)"),
    "tensorboard": dict(
        type=bool, default=False,
        help="also log to TensorBoard, in the run folder beside metrics.csv (pip install tensorboard; then: "
             "tensorboard --logdir <run folder>)"),
}
# name → the class whose arguments form the group (--export.dirpath, --export.title …): fit's export step (the best
# weights, the model card, the plots)
SECTIONS: dict[str, str] = {"export": "callbacks.export.ExportModel"}


def add_options(parser) -> None:
    """Add the options and the class groups to a LightningCLI parser."""
    for name, keywords in OPTIONS.items():
        parser.add_argument(f"--{name}", **keywords)
    for name in SECTIONS:
        parser.add_lightning_class_args(import_object(SECTIONS[name]), name)


def option_defaults() -> dict:
    """The defaults of the top-level options, the fit subcommand's own (``--ckpt_path``, ``--weights_only``) included:
    LightningCLI adds ``Trainer.fit``'s arguments there."""
    from lightning.pytorch import Trainer

    fit = {name: p.default for name, p in inspect.signature(Trainer.fit).parameters.items()
           if p.default is not inspect.Parameter.empty}
    return {**fit, **{name: keywords["default"] for name, keywords in OPTIONS.items()}}
