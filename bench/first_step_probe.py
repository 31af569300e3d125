"""A callback for ``bench/first_step.py``: at the first training batch, write the seconds since the process was
started and the process's memory, then exit at once (the benchmark measures set-up, not training).

Importable as a top-level module (the benchmark puts ``bench/`` on PYTHONPATH), so it also runs inside an older
checkout of litembed: ``--trainer.callbacks+=first_step_probe.FirstStepProbe``.
"""

import json
import os
import time

from lightning.pytorch import Callback


class FirstStepProbe(Callback):
    """Writes {seconds, rss_mb, peak_rss_mb} to $LITEMBED_PROBE_OUT; the start time is $LITEMBED_PROBE_T0 (the
    parent's clock just before it started this process). At batch $LITEMBED_PROBE_AT of the first epoch (default 0:
    the first)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx < int(os.environ.get("LITEMBED_PROBE_AT", "0")):  # a later batch's moment, if asked for
            return
        seconds = time.time() - float(os.environ["LITEMBED_PROBE_T0"])
        # VmHWM, not getrusage's ru_maxrss: the latter carries the high-water mark of the parent forked from
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f)
        rss, peak = (int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
        with open(os.environ["LITEMBED_PROBE_OUT"], "w") as f:
            json.dump({"seconds": seconds, "rss_mb": rss, "peak_rss_mb": peak, "rank": trainer.global_rank}, f)
        os._exit(0)
