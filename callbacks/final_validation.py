"""The weights a fit ends with are validated, also when ``--trainer.max_steps`` ends it in the middle of an epoch."""

from lightning.pytorch import Callback


class ValidateFinalStep(Callback):
    """Validate at the optimizer step that reaches ``--trainer.max_steps`` when it falls inside an epoch.

    Lightning validates at an epoch's end and every ``val_check_interval`` batches; a run stopped by ``max_steps``
    between those ends unvalidated: the last steps' weights never reach the best-checkpoint monitor, and a run shorter
    than an epoch exports weights whose card can show only the base model's row. Asking the loop to stop at that step
    (``trainer.should_stop``, as early stopping does) makes Lightning run the validation first, so the best checkpoint,
    the export and the card see the final weights, as sentence-transformers' trainer evaluates at its last step.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # global_step counts optimizer steps: it reaches max_steps only after the accumulated batch that steps
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
