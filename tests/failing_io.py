"""Checkpoint writes that fail as on a full disk: a whole ``train.py fit`` meets ENOSPC mid-run, without a full disk."""

import errno
import os

from lightning.fabric.plugins import TorchCheckpointIO


class FullDisk(TorchCheckpointIO):
    """Writes the first ``writes`` checkpoints, then fails every write as a full disk does (an OSError without a file
    name: the write, not the open, fails).

    Args:
        writes: how many checkpoints are written before the disk is full.
    """

    def __init__(self, writes: int = 1) -> None:
        self.writes = writes

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if self.writes <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.writes -= 1
        super().save_checkpoint(checkpoint, path, storage_options)
