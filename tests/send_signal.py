"""A callback that sends its own process a real signal at one hook, so that a test stops a whole ``train.py fit`` in
an exact phase (the last evaluation, the export, the test) however fast or slow the machine is."""

import os
import signal
import sys

from lightning.pytorch import Callback


class SendSignal(Callback):
    """Sends ``name`` (``SIGTERM``, ``SIGINT``) ``times`` times in a row at the first call of ``hook`` (a Callback
    hook) from optimizer step ``at_step`` on, outside the sanity check, in a run that does not resume: the printed
    resume command, which repeats the flags, then runs to its end.

    Args:
        hook: the Callback hook, e.g. ``on_validation_batch_start``, ``on_fit_end``, ``on_test_batch_start``.
        name: the signal's name.
        times: how many to send (2 SIGINTs: the second Ctrl-C).
        at_step: the first optimizer step at which to send it.
    """

    def __init__(self, hook: str, name: str = "SIGTERM", times: int = 1, at_step: int = 0) -> None:
        self.signum, self.times, self.at_step = signal.Signals[name], times, at_step
        self.armed = "--ckpt_path" not in sys.argv
        setattr(self, hook, self._send)

    def _send(self, trainer, *args) -> None:
        if not self.armed or trainer.sanity_checking or trainer.global_step < self.at_step:
            return
        self.armed = False
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)
