"""Preprocessed images kept across epochs and evaluations: a deterministic transform's output is computed once.

An image whose transform has no randomness (sentence-transformers' resize + centre crop, every evaluation transform)
gives the same pixels every epoch; decoding and resizing it again each time is the work the cache removes. The
pixels live in one file mapped shared by the process and its DataLoader workers (``/dev/shm`` by default: memory;
any directory: disk), so a worker's result serves every other worker and later epochs. Values are exact float
copies: batches, losses and metrics equal recomputing bit for bit.
"""

import atexit
import glob
import logging
import multiprocessing
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

PREFIX = "litembed-pixels-"
ALIGN = 64
RESERVE = 2 * 2**30  # bytes of the cache's directory left free: DataLoader workers' batches travel through /dev/shm


def default_directory() -> str:
    """``/dev/shm`` (memory shared between processes) where there is one with room to spare, else the temporary
    directory. A container's ``/dev/shm`` is often 64 MB, which DataLoader workers need for handing over batches."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * RESERVE:
        return shm
    return tempfile.gettempdir()


class PixelCache:
    """Images by number (``0 … capacity - 1``), each a tensor of one shape and dtype, filled on first use.

    Args:
        capacity: images the cache holds; images numbered beyond it are computed every time.
        shape: shape of one preprocessed image, e.g. ``(3, 224, 224)``.
        dtype: its dtype (the transform's, kept exactly).
        directory: where the file lives (``/dev/shm``: memory).
    """

    def __init__(self, capacity: int, shape: tuple[int, ...], dtype: torch.dtype, directory: str) -> None:
        self.capacity, self.shape, self.dtype = capacity, tuple(shape), dtype
        self.data_offset = -(-capacity // ALIGN) * ALIGN  # one flag byte per image first, the pixels after
        self.nbytes = self.data_offset + capacity * self.image_bytes(shape, dtype)
        remove_stale_files(directory)
        self.path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.bin")
        with open(self.path, "wb") as f:
            f.truncate(self.nbytes)  # sparse: memory or disk is taken as images are stored
        self._map()
        method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
        if method == "fork":
            # forked workers inherit the mapping: the file can go now, and nothing is left behind if we are killed
            os.unlink(self.path)
            self.path = None
        else:  # spawned workers map the file by name (__setstate__): removed at exit
            atexit.register(self._remove, self.path)

    @staticmethod
    def image_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
        return int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()

    def _map(self) -> None:
        raw = torch.from_file(self.path, shared=True, size=self.nbytes, dtype=torch.uint8)
        self.flags = raw[:self.capacity]
        self.data = raw[self.data_offset:].view(self.dtype).view(self.capacity, *self.shape)

    def __getstate__(self) -> dict:
        if self.path is None:
            raise RuntimeError("a PixelCache made under the fork start method is shared by forking, not pickling")
        return {k: v for k, v in self.__dict__.items() if k not in ("flags", "data")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._map()

    @staticmethod
    def _remove(path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)

    def pixels(self, number: int, compute: Callable[[], Tensor]) -> Tensor:
        """Image ``number``'s pixels: stored ones if there are, else ``compute()``'s, stored for next time."""
        if number < self.capacity and self.flags[number]:
            return self.data[number]
        pixels = compute()
        if number < self.capacity and tuple(pixels.shape) == self.shape and pixels.dtype == self.dtype:
            self.data[number].copy_(pixels)
            self.flags[number] = 1  # after the pixels: a reader that sees the flag finds them complete
        return pixels

    def stored(self) -> int:
        """How many images are stored (by every process sharing the cache)."""
        return int(self.flags.sum())


def cached_pixels(cache: PixelCache | None, number: int | None, compute: Callable[[], Tensor]) -> Tensor:
    """``cache.pixels(number, compute)`` where there is a cache and a number, else ``compute()``."""
    return compute() if cache is None or number is None else cache.pixels(number, compute)


def remove_stale_files(directory: str) -> None:
    """Remove cache files left by processes that no longer run (killed before they could remove their own)."""
    for path in glob.glob(os.path.join(directory, f"{PREFIX}*.bin")):
        try:
            pid = int(os.path.basename(path)[len(PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            PixelCache._remove(path)
        except (ValueError, PermissionError, OSError):
            continue  # not ours to judge: another user's process, or a name we did not write


def plan_capacity(images: int, image_bytes: int, budget_gb: float, directory: str, processes: int) -> int:
    """How many images fit the budget and, shared with ``processes`` caches on this machine, half the room left in
    ``directory`` past ``RESERVE`` (a full ``/dev/shm`` would kill the DataLoader workers, which hand batches over
    through it)."""
    room = max(0, shutil.disk_usage(directory).free - RESERVE) // 2 // max(1, processes)
    return max(0, min(images, int(budget_gb * 2**30) // image_bytes, room // image_bytes))
