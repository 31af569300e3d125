"""Reading images from any column value (PIL image, bytes, HF ``{"bytes", "path"}`` dict, file path) into RGB.

Every failure is an :class:`ImageLoadError` that names the row and what to do. :func:`scan_images` decodes a list of
images once up front (the datamodule passes each distinct image once) so that bad rows are counted and skipped (or
refused) before training starts, instead of crashing in a DataLoader worker mid-epoch; :func:`check_image` does the
same for one streamed row.
"""

import hashlib
import io
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

log = logging.getLogger(__name__)

MAX_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS
WHITE = (255, 255, 255, 255)


class ImageLoadError(ValueError):
    """An unusable image: ``where`` names the row, column or file; ``reason`` says what is wrong and what to do."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(where, reason)  # both in args, so the error pickles across DataLoader workers
        self.where, self.reason = where, reason

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _raw(value: Any, where: str, base_dir: str | None) -> tuple[bytes | Image.Image, str]:
    """The encoded bytes behind ``value`` (a PIL image is returned as is) and the file they came from ("" if none)."""
    if isinstance(value, Image.Image):
        return value, ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), ""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _raw(value["bytes"], where, base_dir)[0], value.get("path") or ""
        if value.get("path") is not None:
            return _raw(value["path"], where, base_dir)
        raise ImageLoadError(where, f"the image dict has neither 'bytes' nor 'path' (keys: {sorted(value)}); "
                                    f"fill or remove the row.")
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if "://" in path:
            raise ImageLoadError(where, f"{path!r} is a URL; images are not downloaded. Download them and put local "
                                        f"paths (or the image bytes) in the column.")
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        try:
            with open(path, "rb") as f:
                return f.read(), path
        except FileNotFoundError:
            raise ImageLoadError(where, f"image file not found: {path}; fix the path or remove the row.") from None
        except OSError as err:
            raise ImageLoadError(where, f"cannot read image file {path}: {err.strerror}.") from None
    if value is None:
        raise ImageLoadError(where, "no image (None); fill or remove the row.")
    raise ImageLoadError(where, f"unsupported image value of type {type(value).__name__}; expected a PIL image, "
                                f"bytes, a {{'bytes', 'path'}} dict or a file path.")


def _check_size(image: Image.Image, where: str, max_pixels: int) -> None:
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(where, f"the image has zero size ({width}×{height}); remove the row.")
    if width * height > max_pixels:
        raise ImageLoadError(where, f"the image is {width}×{height} = {width * height:,} pixels, over max_pixels = "
                                    f"{max_pixels:,} (a guard against decompression bombs); downscale it.")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit integer modes map their full range 0…65535 to 0…255 (absolute brightness is kept); 32-bit ``I`` and
    float ``F`` have no natural range, so the image's own min…max is stretched to 0…255."""
    pixels = np.asarray(image, dtype=np.float64)
    lo, hi = (0.0, 65535.0) if image.mode.startswith("I;16") else (pixels.min(), pixels.max())
    scaled = (pixels - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _to_8bit(image)
    if image.has_transparency_data:  # RGBA, LA, PA, or P/L/RGB with a transparent colour: flatten onto white
        return Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV


def _load(value: Any, where: str, base_dir: str | None, max_pixels: int, draft: bool) -> Image.Image:
    data, origin = _raw(value, where, base_dir)
    if origin:
        where = f"{where} ({origin})"
    decoding = not isinstance(data, Image.Image)  # a PIL image is the caller's: never drafted or turned
    try:
        image = Image.open(io.BytesIO(data)) if decoding else data  # open reads the header only
        _check_size(image, where, max_pixels)
        if decoding and draft:
            image.draft(None, (1, 1))  # JPEG only: decode at 1/8 scale; every byte is still read, so truncation shows
        image.load()  # raises on truncation as long as ImageFile.LOAD_TRUNCATED_IMAGES is False (PIL's default)
        if decoding:  # as HF datasets decodes: apply the EXIF orientation
            ImageOps.exif_transpose(image, in_place=True)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:  # PIL's hard limit, 2 × its default, applies whatever max_pixels
        raise ImageLoadError(where, f"{err} Downscale the image.") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(where, f"not an image format PIL can read ({len(data):,} bytes starting {data[:12]!r}); "
                                    f"replace or remove it.") from None
    except Exception as err:  # PIL reports corrupt data as OSError, SyntaxError, EOFError, ValueError, zlib.error, …
        raise ImageLoadError(where, f"truncated or corrupt image ({type(err).__name__}: {err}); re-encode or remove "
                                    f"it.") from None
    try:
        return _to_rgb(image)
    except ValueError as err:
        raise ImageLoadError(where, f"cannot convert mode {image.mode} to RGB ({err}); save it as RGB.") from None


def load_image(value: Any, *, where: str, base_dir: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode one image column value into a fully loaded RGB image.

    Transparent images are composited on white; CMYK, greyscale, palette and 1-bit images are converted; 16-bit
    images are scaled by 255/65535, 32-bit integer and float images stretched from their min…max, to 8 bits. Files
    and bytes are turned by their EXIF orientation, as HF datasets does when it decodes.

    Args:
        value: a PIL image, encoded bytes, a dict as HF datasets stores images (``{"bytes": ..., "path": ...}``; the
            bytes win when both are set), or a file path (``str`` or ``PathLike``).
        where: the source, for error messages, e.g. ``"train split row 17, column 'image'"``.
        base_dir: directory that relative paths are resolved against (the dataset's directory).
        max_pixels: refuse images with more pixels than this (decompression bombs). PIL refuses images over twice its
            own default (about 179 million pixels) whatever this says.

    Raises:
        ImageLoadError: missing file, unreadable, truncated or corrupt data, zero or too large size, unsupported value.
    """
    return _load(value, where, base_dir, max_pixels, draft=False)


def load_pixels(value: Any, *, where: str, base_dir: str | None = None, tensors: bool = False) -> Image.Image | Tensor:
    """``load_image``, except that with ``tensors`` a colour JPEG comes back as a (3, H, W) uint8 tensor decoded by
    torchvision's libjpeg-turbo: 1.27× PIL's rate per core at 640×480 (bench/jpeg_decode.py), and the same pixels —
    a transform that takes tensors (transformers' image processors) gives identical results
    (tests/test_images.py). Anything else, or anything the tensor route cannot decode, goes through ``load_image``
    and its checks and messages."""
    if tensors:
        data, origin = _raw(value, where, base_dir)
        if isinstance(data, bytes) and _colour_jpeg(data):
            try:
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                   apply_exif_orientation=True)
            except RuntimeError:
                pass  # corrupt or unusual: PIL decides, and names the problem
        # read once; the file's name goes on with the bytes, so PIL's messages still say which file
        value = {"bytes": data, "path": origin or None} if isinstance(data, bytes) else data
    return load_image(value, where=where, base_dir=base_dir)


def _colour_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a baseline or progressive JPEG with 3 components (YCbCr/RGB, not grey or CMYK, whose
    conversions to RGB differ between PIL and libjpeg) of at most ``MAX_PIXELS`` pixels, from its SOF segment."""
    if not data.startswith(b"\xff\xd8"):
        return False
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: precision, height, width, components
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return data[i + 4] == 8 and data[i + 9] == 3 and 0 < height * width <= MAX_PIXELS
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG we read this way
            return False
        i += 2 + length
    return False


def image_key(value: Any, *, base_dir: str | None = None) -> str:
    """A content key (sha1 hex) for duplicate detection: equal for equal encoded bytes, whether given as bytes, an
    HF dict or a file path. Nothing is decoded, except that a PIL image is keyed by its mode, size and pixels (so it
    does not match the bytes it was decoded from)."""
    data, _ = _raw(value, "image_key", base_dir)
    if isinstance(data, Image.Image):
        digest = hashlib.sha1(f"{data.mode} {data.size}".encode())
        digest.update(data.tobytes())
        return digest.hexdigest()
    return hashlib.sha1(data).hexdigest()


def image_header(value: Any, *, base_dir: str | None = None) -> tuple[str, str, tuple[int, int]]:
    """``(format, mode, (width, height))`` from the image's header, nothing decoded (a model card's statistics)."""
    data, _ = _raw(value, "image_header", base_dir)
    if isinstance(data, Image.Image):
        return data.format or type(data).__name__, data.mode, data.size
    with Image.open(io.BytesIO(data)) as image:
        return image.format or "unknown", image.mode, image.size


def check_image(value: Any, *, where: str, base_dir: str | None = None, max_pixels: int = MAX_PIXELS) -> None:
    """Raise :class:`ImageLoadError` if :func:`load_image` would refuse ``value``; JPEGs are decoded at 1/8 scale
    (every byte is still read, so truncation shows), other formats in full."""
    _load(value, where, base_dir, max_pixels, draft=True)


def scan_images(
    values: Iterable[Any],
    column: str,
    where: str,
    base_dir: str | None = None,
    *,
    rows: Sequence[int] | None = None,
    max_pixels: int = MAX_PIXELS,
    num_threads: int = 8,
) -> tuple[list[int], list[str]]:
    """Decode every image of a column once and report the rows that :func:`load_image` would refuse.

    A real decode, not ``PIL.Image.verify`` (which misses truncated JPEGs): JPEGs are decoded at 1/8 scale, which
    still reads every byte, other formats in full; the conversion to RGB is checked too. Threads overlap the decoding
    (PIL releases the GIL), and values are consumed in chunks so that a lazy HF column is never held in memory whole.

    Args:
        values: the column's values, in row order (a list or an HF ``Column``).
        column: the column name, for the messages.
        where: the split, for the messages, e.g. ``"coco (train split)"``.
        base_dir: directory that relative paths are resolved against.
        rows: the row number to name for each value (default: its position).
        max_pixels: as in :func:`load_image`.
        num_threads: decoding threads.

    Returns:
        ``(good, problems)``: the indices of the readable rows, and one message per unreadable row, e.g.
        ``"coco (train split) row 17, column 'image': truncated or corrupt image (OSError: image file is …"``.
        The caller decides the policy: skip the bad rows with a logged count, or raise.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("%s: PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by other code: truncated images decode "
                    "partly grey instead of failing, and this scan cannot catch them.", where)

    def problem(item: tuple[int, int, Any]) -> str | None:
        _, row, value = item
        try:
            check_image(value, where=f"{where} row {row}, column {column!r}", base_dir=base_dir, max_pixels=max_pixels)
        except ImageLoadError as err:
            return str(err)
        return None

    items = ((i, rows[i] if rows is not None else i, v) for i, v in enumerate(values))
    good, problems = [], []
    with ThreadPoolExecutor(num_threads) as pool:
        while chunk := list(itertools.islice(items, 64 * num_threads)):
            for (position, _, _), outcome in zip(chunk, pool.map(problem, chunk)):
                if outcome is None:
                    good.append(position)
                else:
                    problems.append(outcome)
    return good, problems
