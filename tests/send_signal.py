"""A callback that sends its own process a real signal at one hook, so that a test stops a whole ``train.py`` process
in an exact phase (before an evaluation ends, the last evaluation, the export, the test) however fast or slow the
machine is: a poll from outside would hit such a window only by chance."""

import os
import signal
import sys

from lightning.pytorch import Callback


class SendSignal(Callback):
    """Sends ``name`` (``SIGTERM``, ``SIGINT``, ``SIGKILL``, ``SIGSTOP``) ``times`` times in a row at the first call of
    ``hook`` (a Callback hook) from optimizer step ``at_step`` on, outside the sanity check. By default only in a run
    that does not resume, so that the printed resume command, which repeats the flags, runs to its end.

    Args:
        hook: the Callback hook, e.g. ``on_validation_start``, ``on_train_batch_end``, ``on_fit_end``.
        name: the signal's name.
        times: how many to send (2 SIGINTs: the second Ctrl-C).
        at_step: the first optimizer step at which to send it.
        when_resuming: send it in a run given ``--ckpt_path`` too.
    """

    def __init__(self, hook: str, name: str = "SIGTERM", times: int = 1, at_step: int = 0,
                 when_resuming: bool = False) -> None:
        self.signum, self.times, self.at_step = signal.Signals[name], times, at_step
        self.armed = when_resuming or "--ckpt_path" not in sys.argv
        setattr(self, hook, self._send)

    def _send(self, trainer, *args) -> None:
        if not self.armed or trainer.sanity_checking or trainer.global_step < self.at_step:
            return
        self.armed = False
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)
