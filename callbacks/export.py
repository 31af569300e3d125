"""The export step of ``train.py fit``: the best weights, exported in the model's format with a card and plots.

At the end of fit every rank loads the best checkpoint's weights (like sentence-transformers'
``load_best_model_at_end``; the last weights when no checkpoint monitors a metric), refuses to export non-finite
weights, and rank 0 exports them with ``report.json`` (what the card says about the run), the plots and the card.
When a test of those weights follows in the same process (``train.py fit`` runs it), the card and plots are written
again with the test metrics. ``summary()`` says where everything is.
"""

import logging
import os
import time

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.lora import EXPORT_FORMS
from reporting.collect import gather_facts, is_clip
from reporting.report import save_facts, write_report
from reporting.tables import format_table

log = logging.getLogger(__name__)

NO_TRAINING = ("max_epochs", "max_steps", "limit_train_batches")  # each of them at 0 leaves fit nothing to train


def untrained_fit(trainer: dict) -> str | None:
    """Why ``fit`` with these ``--trainer`` arguments would train nothing, or None. Such a fit would export the base
    model with a card saying it was fine-tuned, which is refused; ``validate`` or ``test`` evaluate the base model."""
    if trainer.get("fast_dev_run"):
        return None  # it replaces these limits with its own single batch
    for name in NO_TRAINING:
        if trainer.get(name) == 0:
            return (f"--trainer.{name} {trainer.get(name)} trains nothing, and fit would export the base model as if "
                    f"fine-tuned; set --trainer.{name} above 0, or evaluate the base model with python train.py "
                    f"validate (or test) and the same arguments")
    return None


class ExportModel(Callback):
    """Export the best weights at the end of fit to ``dirpath`` (under the run folder), with a model card and training
    plots; rewrite both after a test of the same weights. ``train.py`` adds it as ``--export``.

    Args:
        dirpath: the folder the model is exported to; a relative path goes under the run folder. None: no export (and
            no card).
        title: the card's title and model-index name; default: "<base model> fine-tuned with litembed".
        model_id: the hub id you will publish the model under (``user/name``): the card's usage snippet loads it;
            default: the export folder.
        language: the card's ``language`` (hub metadata).
        license: the card's ``license`` (hub metadata).
        usage_images: images the usage snippet of a CLIP model's card encodes and compares with its sentences: file
            names as a reader of the card opens them (files you publish beside the model) or URLs. None: the snippet
            shows how, commented out.
        adapters: a LoRA model's export: ``merged`` into the base weights (loads anywhere, no peft), or ``separate``
            (the adapters alone, a few MB, which sentence-transformers loads onto the base model with peft; text
            models).
    """

    def __init__(self, dirpath: str | None = "model", title: str | None = None, model_id: str | None = None,
                 language: list[str] = ["en"], license: str = "apache-2.0",
                 usage_images: list[str] | None = None, adapters: str = "merged") -> None:
        if adapters not in EXPORT_FORMS:
            raise ValueError(f"--export.adapters must be one of {EXPORT_FORMS}, got {adapters!r}")
        self.adapters = adapters
        self.dirpath = dirpath
        self.card_options = {"title": title, "model_id": model_id, "language": list(language), "license": license,
                             "usage_images": list(usage_images) if usage_images else None}
        self.run_dir: str | None = None
        self.written: dict[str, object] = {}
        self.best: tuple[str, float | None, str | None] | None = None  # (checkpoint, score, monitor)
        self._started: float | None = None
        self.trained = False  # training has ended: what follows is the export (and train.py's test)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.adapters == "separate":
            if not getattr(pl_module.encoder, "adapter_summary", None):
                raise ValueError("--export.adapters separate exports LoRA adapters, and this model trains none: set "
                                 "--model.init_args.encoder.init_args.lora, or leave --export.adapters merged")
            if is_clip(type(pl_module)):
                raise ValueError("--export.adapters separate: a CLIP model's adapters are exported merged (open_clip "
                                 "loads no adapters); leave --export.adapters merged")
        if self.card_options["usage_images"] and not is_clip(type(pl_module)):
            raise ValueError(f"--export.usage_images: {type(pl_module).__name__} embeds texts only; its card's usage "
                             f"snippet encodes sentences (leave the option out)")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_train_end(self, trainer, pl_module) -> None:
        self.trained = True

    def on_fit_end(self, trainer, pl_module) -> None:
        self.trained = True  # also where a resumed run had no training left (Lightning then skips on_train_end)
        # trainer.log_dir broadcasts rank 0's directory: every rank asks for it, not only the one that exports
        log_dir = trainer.log_dir
        exporting = self.dirpath is not None and not trainer.fast_dev_run and log_dir is not None
        step = self._load_best(trainer, pl_module)
        history = pl_module.history
        if len(history) >= 2:
            exported = [m for s, m in history if s == step] or [history[-1][1]]
            rank_zero_info(format_table({"base model" if history[0][0] < 0 else f"step {history[0][0]}": history[0][1],
                                         f"step {step}": exported[-1]}, "val"))
        if not exporting:
            return
        directory = os.path.join(log_dir, self.dirpath)  # an absolute dirpath stays itself
        bad = [name for name, p in pl_module.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
        if bad:  # on every rank (the weights are the same): no rank waits at the barrier below
            raise RuntimeError(f"not exporting: {len(bad)} weight tensor(s) are not finite ({', '.join(bad[:3])}"
                               f"{', …' if len(bad) > 3 else ''}); the checkpoint "
                               f"{self.best[0] if self.best else 'in memory'} holds them")
        if trainer.is_global_zero:
            if self.adapters == "separate":
                pl_module.export(directory, merge_adapters=False)
            else:
                pl_module.export(directory)
            rank_zero_info(f"Exported the model to {directory}")
            try:  # the other ranks wait at the barrier below: a failing card must not keep them there
                self._write_card(trainer, pl_module, log_dir, directory, step)
            except Exception:
                log.exception("The model was exported to %s, but its card could not be written; rebuild it with "
                              "python -m reporting %s", directory, log_dir)
        trainer.strategy.barrier()

    def _write_card(self, trainer, pl_module, log_dir: str, directory: str, step: int) -> None:
        seconds = time.monotonic() - self._started if self._started is not None else None
        save_facts(log_dir, gather_facts(trainer, pl_module, trainer.datamodule, log_dir, directory, step,
                                         self.best[0] if self.best else None, seconds,
                                         {**self.card_options, "adapters": self.adapters}))
        self.run_dir = log_dir
        self._report(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        if self.run_dir is not None and trainer.is_global_zero:
            try:
                self._report(trainer)  # with the test metrics
            except Exception:
                log.exception("The card of %s could not be rewritten with the test metrics; rebuild it with "
                              "python -m reporting %s", self.written.get("model"), self.run_dir)

    def _load_best(self, trainer, pl_module) -> int:
        """Load the best checkpoint's weights (if a checkpoint monitors a metric) and return their global step."""
        for callback in trainer.checkpoint_callbacks:
            path = getattr(callback, "best_model_path", "")
            if callback.monitor and path:
                checkpoint = torch.load(path, map_location=pl_module.device, weights_only=True)
                pl_module.restore_frozen_base(checkpoint)
                pl_module.load_state_dict(checkpoint["state_dict"])
                score = callback.best_model_score
                self.best = (path, None if score is None else float(score), callback.monitor)
                rank_zero_info(f"Loaded the best checkpoint by {callback.monitor}"
                               f"{'' if score is None else f' = {float(score):.4f}'}: {path}")
                return int(checkpoint["global_step"])
        return trainer.global_step

    def _report(self, trainer) -> None:
        for logger in trainer.loggers:  # what was logged reaches metrics.csv, which the card and plots read
            logger.save()
        self.written = write_report(self.run_dir)

    def summary(self) -> str:
        """Where the run's results are, for the end of ``train.py fit``."""
        if not self.written:
            return ""
        model = self.written["model"]
        loads = (f"SentenceTransformer({str(model)!r})" if os.path.isfile(os.path.join(model, "modules.json"))
                 else f"open_clip local-dir:{model}")
        lines = [f"Run folder:       {self.run_dir}",
                 f"Model:            {model}   ({loads})",
                 f"Model card:       {self.written['card']}"]
        if self.best:
            path, score, monitor = self.best
            lines.append(f"Best checkpoint:  {path}" + ("" if score is None else f"   ({monitor} = {score:.4f})"))
        if self.written["plots"]:
            lines.append(f"Plots:            {', '.join(self.written['plots'])}")
        lines.append(f"Metrics:          {os.path.join(self.run_dir, 'metrics.csv')}")
        return "\n".join(lines)
