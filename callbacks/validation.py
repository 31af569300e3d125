"""A fit's validations: every monitor names a metric the run logs (checked before the first step), and the weights a
fit ends with are validated, also when ``--trainer.max_steps`` ends it in the middle of an epoch."""

import difflib

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from metrics.keys import stage_of


class ValidatedFit(Callback):
    """Refuse a ``val/`` monitor the run never logs at the start of fit, and validate at the optimizer step that
    reaches ``--trainer.max_steps`` when it falls inside an epoch.

    A monitor that names no logged key (``val/dim_384_cosine_ndcg@10`` while the loss trains dims 32 and 16) made
    Lightning stop at the end of the first validation, an epoch in. And Lightning validates at an epoch's end and
    every ``val_check_interval`` batches: a run stopped by ``max_steps`` between those ended unvalidated, its last
    steps' weights never reached the monitor, and a run shorter than an epoch exported weights whose card could show
    only the base model's row. Asking the loop to stop at that step (``trainer.should_stop``, as early stopping does)
    makes Lightning run the validation first, as sentence-transformers' trainer evaluates at its last step.
    """

    def on_fit_start(self, trainer, pl_module) -> None:
        keys = pl_module.metric_keys("val")
        if not keys:  # no validation set: nothing is monitored, and Lightning says so
            return
        for callback in trainer.callbacks:
            monitor = getattr(callback, "monitor", None)
            if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and monitor and stage_of(monitor) == "val" \
                    and monitor not in keys:
                close = difflib.get_close_matches(monitor, keys, n=3, cutoff=0)
                raise ValueError(
                    f"the monitor {monitor!r} of trainer.callbacks' {type(callback).__name__} is not a metric this run "
                    f"logs, so the first validation would stop the run: its validation logs {len(keys)} metrics, the "
                    f"closest {', '.join(close)}; set the callback's monitor to one of them (init_args.monitor in the "
                    f"config file; --trainer.callbacks.init_args.monitor sets the last callback listed), e.g. "
                    f"{pl_module.main_metric('val')}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # global_step counts optimizer steps: it reaches max_steps only after the accumulated batch that steps
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
