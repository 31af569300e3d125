"""What the training stream skipped or read twice, reported at the end of each epoch: a callback, which ``train.py``
adds to every fit. The datamodule counts (``RetrievalDataModule.report_epoch``); Lightning calls no datamodule hook at
an epoch's end, so this callback asks it to report there."""

from lightning.pytorch import Callback


class DataReport(Callback):
    """At the end of each training epoch, the datamodule's report of the rows its stream skipped (bad rows, counted
    and shown by example) and of workers that read their shards again (``datamodules.contract.RetrievalData``)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        report = getattr(trainer.datamodule, "report_epoch", None)
        if report is not None:
            report(trainer.current_epoch)
