"""A callback for the tests' ``train.py`` processes: ``--trainer.callbacks`` adds it to send the process a signal at a
chosen hook and optimizer step, which puts a kill exactly in a window a poll from outside would hit only by chance."""

import os

from lightning.pytorch import Callback


class SignalAt(Callback):
    """Send this process ``signal`` in ``hook`` once the run has made ``step`` optimizer steps.

    Args:
        step: the trainer's global step at which to send it (sanity checks do not count).
        hook: a ``Callback`` hook name, e.g. ``on_validation_start`` or ``on_train_batch_end``.
        signal: the signal's number (9: SIGKILL, 15: SIGTERM).
    """

    def __init__(self, step: int, hook: str, signal: int) -> None:
        self.step, self.signal = step, signal
        setattr(self, hook, self._send)

    def _send(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signal)
