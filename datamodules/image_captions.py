"""Image–caption pairs (COCO captions layout, a local imagefolder, parquet with image bytes, or built-in shapes)."""

import logging
import os

import datasets
import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules.base import RetrievalDataModule
from datamodules.batches import FEATURES, IDS, IMAGE_INDEX, PIXEL_VALUES, ROWS, STREAM, EvalBatch, TrainBatch
from datamodules.builtin_datasets import Builtins, image_caption_builtins
from datamodules.checks import check_columns, check_texts, text_value, value_codes
from datamodules.contract import DataNeeds, RetrievalTask
from datamodules.images import ImageLoadError, check_image, image_key, load_pixels, scan_images
from datamodules.locations import ROW, Where
from datamodules.pixel_cache import PixelCache, cached_pixels, default_directory, plan_capacity
from datamodules.sources import BadRow
from datamodules.splits import arrow_columns

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")
IMAGE_NUMBER = "__image_index__"  # a training row's distinct-image number, for a model that looks image embeddings up


def decode(processor, value, where: str, base_dir: str | None):
    """An image as ``processor``'s transform takes it best: a colour JPEG as a uint8 tensor where it takes tensors
    (torchvision's faster decoder, the same pixels), else a PIL image."""
    return load_pixels(value, where=where, base_dir=base_dir, tensors=getattr(processor, "takes_tensors", False))


class ImageCaptionCollator:
    """Rows → ``{"features": [...]}`` with one entry per loss column: pixel values for images, tokens for captions.

    Images are decoded and preprocessed here, in the DataLoader workers, or taken from ``cache`` (image number
    ``cache_offset + row's image index``) when an earlier epoch stored them; with ``keyed`` they are not read at all:
    the image column becomes ``{"image_index": …}``, the rows' numbers in the model's table of image embeddings.
    """

    def __init__(self, processor, columns: list[str], image_column: str, where: str, base_dir: str | None,
                 keyed: bool = False, cache: PixelCache | None = None, cache_offset: int = 0) -> None:
        self.processor, self.columns, self.image_column = processor, columns, image_column
        self.where, self.base_dir, self.keyed = where, base_dir, keyed
        self.cache, self.cache_offset = cache, cache_offset

    def __call__(self, rows: list[dict]) -> TrainBatch:
        features = []
        for column in self.columns:
            if column == self.image_column and self.keyed:
                features.append({IMAGE_INDEX: torch.tensor([r[IMAGE_NUMBER] for r in rows])})
            elif column == self.image_column:
                features.append({PIXEL_VALUES: torch.stack([self._pixels(r, column) for r in rows])})
            else:
                features.append(self.processor.tokenize([r[column] for r in rows]))
        return {FEATURES: features, ROWS: [r.get(ROW) for r in rows]}  # rows: for messages about the batch

    def _pixels(self, row: dict, column: str) -> torch.Tensor:
        def compute() -> torch.Tensor:
            where = f"{self.where}{f' row {row[ROW]}' if ROW in row else ''}, column {column!r}"
            return self.processor.image_transform(decode(self.processor, row[column], where, self.base_dir), True)

        number = row.get(IMAGE_NUMBER)
        return cached_pixels(self.cache, None if number is None else self.cache_offset + number, compute)


class StreamCollator:
    """(id, caption or image) items of one evaluation stream → ``{"stream", "ids", "features"}``.

    ``image_offset`` set: images are not read; their features are ``{"image_index": offset + id}``, rows of the
    model's table of image embeddings. ``cache`` set: image ``id`` is number ``cache_offset + id`` of the cache.
    """

    def __init__(self, processor, stream: str, where: str, base_dir: str | None,
                 image_offset: int | None = None, cache: PixelCache | None = None, cache_offset: int = 0) -> None:
        self.processor, self.stream, self.where, self.base_dir = processor, stream, where, base_dir
        self.image_offset, self.cache, self.cache_offset = image_offset, cache, cache_offset

    def __call__(self, items: list[tuple[int, object]]) -> EvalBatch:
        ids, values = zip(*items)
        if self.stream == "image" and self.image_offset is not None:
            features = {IMAGE_INDEX: torch.tensor(ids) + self.image_offset}
        elif self.stream == "image":
            pixels = [cached_pixels(self.cache, self.cache_offset + i, lambda i=i, v=v: self.processor.image_transform(
                decode(self.processor, v, f"{self.where} image {i}", self.base_dir), False)) for i, v in items]
            features = {PIXEL_VALUES: torch.stack(pixels)}
        else:
            features = self.processor.tokenize(list(values))
        return {STREAM: self.stream, IDS: torch.tensor(ids), FEATURES: features}


class ImageCaptionDataModule(RetrievalDataModule):
    """Serves (image, caption) batches for CLIP-style training and retrieval evaluation in both directions.

    As in sentence-transformers, the first of ``columns`` is the loss anchor: the COCO seed recipe trains
    image → caption with columns (image, caption). Evaluation scores caption → image with the corpus deduplicated by
    image (each caption has exactly one relevant image; keys ``{val_name}_cosine_…``) and image → caption with every
    caption of the image relevant (keys ``{val_name}-image2text_cosine_…``).

    Args:
        dataset: ``builtin:shapes`` (drawn shapes generated at run time), a hub name (``jxie/coco_captions``), a local
            ``imagefolder`` directory (images plus ``metadata.jsonl`` with ``file_name`` and a caption column), a
            parquet/jsonl file or a directory of such files.
        image_column: column holding the image (HF Image feature, bytes, or a path relative to the data directory).
        caption_column: column holding the caption.
        image_id_column: column identifying the image (COCO ``cocoid``); default: a hash of the image bytes. Rows with
            the same image are never in one batch and form one corpus entry.
        columns: loss column order; the first is the anchor.
        val_name: metric name prefix of validation (the seed: ``coco-eval``).
        test_name: metric name prefix of test (the seed: ``coco-test``).
        on_bad_image: ``skip`` rows whose image cannot be read (the count and the first rows are logged; a stream
            reports them per epoch) or ``error``.
        builtin_rows: rows of the built-in shapes dataset (validation is carved from them with ``val_size``).
        image_size: side of the built-in shapes images.
        preprocess_cache_gb: keep preprocessed images whose transform has no randomness (evaluation images; training
            images too unless the backend augments them, as open_clip's random crops do) for later epochs and
            evaluations, up to this many GiB per process: evaluation images first, then training images. Exact
            copies (metrics equal recomputing); 0 turns it off. Not used with a cached locked image tower (which
            keeps embeddings instead) nor for a streamed training split.
        preprocess_cache_dir: where the cache lives: default ``/dev/shm`` (memory); a directory on a disk for a
            dataset larger than memory. At most half of its free room past 2 GiB (left to the DataLoader workers'
            batches) is used, shared by the processes of a machine; a ``/dev/shm`` with less than 4 GiB free is not.
        batch_size: pairs per device per step.
        **kwargs: split, streaming, batching and loader options of ``RetrievalDataModule``.
    """

    def __init__(
        self,
        dataset: str = "builtin:shapes",
        image_column: str = "image",
        caption_column: str = "caption",
        image_id_column: str | None = None,
        columns: list[str] | None = None,
        val_name: str = "eval",
        test_name: str = "test",
        on_bad_image: str = "skip",
        builtin_rows: int = 3000,
        image_size: int = 64,
        preprocess_cache_gb: float = 4.0,
        preprocess_cache_dir: str | None = None,
        batch_size: int = 16,
        **kwargs,
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"--data.init_args.on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        if preprocess_cache_gb < 0:
            raise ValueError(f"--data.init_args.preprocess_cache_gb must be ≥ 0 (0: off), got {preprocess_cache_gb}")
        if preprocess_cache_dir is not None and not os.path.isdir(preprocess_cache_dir):
            raise ValueError(f"--data.init_args.preprocess_cache_dir {preprocess_cache_dir!r} is not a directory: "
                             f"create it or point the option at one")
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.columns = list(columns or [image_column, caption_column])
        if sorted(self.columns) != sorted([image_column, caption_column]):
            raise ValueError(f"--data.init_args.columns must order {image_column!r} and {caption_column!r}, got "
                             f"{self.columns}")
        self.keys: dict[str, list[str]] = {}
        self.image_table_in_model = False  # the model looks image embeddings up (a locked tower): set by connect
        self.train_image_rows: list[int] = []  # each distinct training image's first row, by image number
        self.image_items: dict[str, dict[str, list]] = {}  # per stage: each eval image's key and first row, by id
        self.pixel_cache: PixelCache | None = None
        self.pixel_offsets: dict[str, int] = {}  # each part's first image number in the pixel cache

    def connect(self, needs: DataNeeds) -> None:
        if self.sources and "image" in needs.constant_towers:
            raise ValueError("--model.init_args.cache_locked_image_tower looks image embeddings up in one table of the "
                             "training and evaluation images, which a mixture of --data.init_args.sources does not "
                             "build: turn the cache off (the locked tower then embeds the images each step)")
        super().connect(needs)
        self.image_table_in_model = "image" in needs.constant_towers

    def source_defaults(self, name: str, count: int) -> dict:
        """A source's metric keys start with its name (``val/<name>_cosine_…``), and the sources share the pixel
        cache's room."""
        return {"val_name": name, "test_name": name, "preprocess_cache_gb": self.hparams.preprocess_cache_gb / count}

    @property
    def keyed_train_images(self) -> bool:
        """Training batches carry image numbers instead of pixels: the model looks the (constant) embeddings up, and
        the images are never decoded during training. Needs map-style data (a stream's distinct images are unknown
        up front) and a deterministic training transform (an augmented image is a new one every epoch)."""
        return (self.image_table_in_model and not self.hparams.streaming
                and not getattr(self.processor, "random_train_transform", True))

    def image_table(self) -> tuple[list, dict[str, int]]:
        """The images of the model's embedding table, as parts (read lazily): the training split's distinct images
        (when its batches are keyed), then each evaluation stage's image stream; and each part's first table row."""
        parts: list = []
        offsets: dict[str, int] = {}
        if self.keyed_train_images:
            offsets["train"] = 0
            parts.append(_TrainImages(self.splits["train"], self.hparams.image_column, self.train_image_rows))
        for stage, streams in self.streams.items():
            offsets[stage] = sum(len(p) for p in parts)
            parts.append(streams["image"])
        return parts, offsets

    def image_table_loader(self) -> DataLoader:
        """This rank's share of ``image_table()`` as evaluation batches of the stream "image" (ids: table rows),
        every world-th row like the evaluation loaders (the collector gathers and orders them)."""
        parts, _ = self.image_table()
        rank, world = self.rank()
        items = _TableItems(parts, rank, world)
        options = {k: v for k, v in self.loader_options().items() if k != "persistent_workers"}  # read once
        return DataLoader(items, batch_size=self.hparams.eval_batch_size, **options,
                          collate_fn=StreamCollator(self.processor, "image", f"{self.hparams.dataset}", self.base_dir))

    def before_collation(self) -> None:
        """Set up the cache of preprocessed images (before the collators that use it, and the workers that share it)."""
        h = self.hparams
        parts = self.pixel_cache_parts()
        total = sum(len(p) for _, p in parts)
        if h.preprocess_cache_gb == 0 or total == 0:
            return
        stage, first = parts[0]
        sample = self.processor.image_transform(decode(self.processor, first[0], f"{h.dataset} ({stage}) image 0",
                                                       self.base_dir), False)
        directory = h.preprocess_cache_dir or default_directory()
        image_bytes = PixelCache.image_bytes(tuple(sample.shape), sample.dtype)
        processes = self.trainer.num_devices if self.trainer is not None else 1
        capacity = plan_capacity(total, image_bytes, h.preprocess_cache_gb, directory, processes)
        if capacity == 0:
            rank_zero_info(f"Preprocessed images are not cached: one takes {image_bytes / 1e6:.1f} MB, more than "
                           f"--data.init_args.preprocess_cache_gb {h.preprocess_cache_gb} or the room in {directory} "
                           f"allows")
            return
        self.pixel_cache = PixelCache(capacity, tuple(sample.shape), sample.dtype, directory)
        start = 0
        for name, part in parts:
            self.pixel_offsets[name], start = start, start + len(part)
        rest = ("" if capacity == total else f"; the other {total - capacity:,} are preprocessed every time: raise "
                f"--data.init_args.preprocess_cache_gb or point --data.init_args.preprocess_cache_dir at a disk")
        parts_text = " + ".join(f"{name} {len(part):,}" for name, part in parts)
        rank_zero_info(f"Caching preprocessed images in {directory}: {capacity:,} of {total:,} ({parts_text}, "
                       f"{capacity * image_bytes / 1e6:.0f} MB at most, --data.init_args.preprocess_cache_gb "
                       f"{h.preprocess_cache_gb}){rest}")

    def pixel_cache_parts(self) -> list[tuple[str, list]]:
        """The images whose preprocessing gives the same pixels every time, in the cache's order: each evaluation
        stage's images (read at every evaluation), then the training split's distinct images where its transform is
        deterministic and the split map-style. None where a locked tower's embeddings are looked up instead."""
        if self.image_table_in_model:
            return []
        parts = [(stage, streams["image"]) for stage, streams in self.streams.items()]
        if (not self.hparams.streaming and "train" in self.splits
                and not getattr(self.processor, "random_train_transform", True)):
            parts.append(("train", _TrainImages(self.splits["train"], self.hparams.image_column,
                                                self.train_image_rows)))
        return [(name, part) for name, part in parts if len(part)]

    def builtins(self) -> Builtins:
        h = self.hparams
        return image_caption_builtins(h.seed, h.builtin_rows, h.image_size)

    @property
    def base_dir(self) -> str | None:
        source = self.hparams.dataset
        return source if os.path.isdir(source) else os.path.dirname(source) if os.path.isfile(source) else None

    @property
    def train_columns(self) -> list[str]:
        h = self.hparams
        return [h.image_column, h.caption_column] + ([h.image_id_column] if h.image_id_column else [])

    def split_columns(self, name: str) -> list[str]:
        return self.columns

    def text_columns(self, name: str) -> list[str]:
        return [self.hparams.caption_column]  # the image column holds paths, bytes or structs

    def encoded(self, split):
        column = self.hparams.image_column
        if isinstance((split.features or {}).get(column), datasets.Image):  # keep bytes or paths; decode in workers
            return split.cast_column(column, datasets.Image(decode=False))
        return split

    def check_split(self, name: str, split: datasets.Dataset, where: Where) -> datasets.Dataset:
        """Check columns and captions, key every row's image, and drop (or refuse) rows whose image is unreadable.

        Each distinct image is decoded once, its rank's share only (COCO has 5 caption rows per image): the ranks
        then exchange the unreadable ones.
        """
        h = self.hparams
        check_columns(split, self.train_columns, where)
        check_texts(split, [h.caption_column], where)
        keys = self._image_keys(split)
        first: dict[str, int] = {}
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        rank, world = self.rank()
        mine = sorted(first.values())[rank::world]
        selected = split.select(mine)
        good, problems = scan_images(selected[h.image_column], h.image_column, where, base_dir=self.base_dir,
                                     rows=selected[ROW])
        bad = {keys[mine[i]] for i in sorted(set(range(len(mine))) - set(good))}
        if world > 1:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, (bad, problems))
            bad = set().union(*(b for b, _ in gathered))
            problems = [p for _, ps in gathered for p in ps]
        if bad:
            good_rows = [row for row, key in enumerate(keys) if key not in bad]
            message = (f"{len(keys) - len(good_rows)} of {len(keys)} rows have unreadable images ({len(bad)} distinct "
                       f"images):\n  " + "\n  ".join(problems[:10]))
            if h.on_bad_image == "error":
                raise ValueError(message + "\nFix or remove them, or set --data.init_args.on_bad_image skip.")
            log.warning(message + "\nThese rows are skipped (--data.init_args.on_bad_image skip).")
            split, keys = split.select(good_rows), [keys[row] for row in good_rows]
        self.keys[name] = keys
        if name == "train":  # number the distinct images: keyed batches carry these numbers instead of pixels
            first = {}
            for row, key in enumerate(keys):
                first.setdefault(key, row)
            numbers = {key: number for number, key in enumerate(first)}
            split = split.add_column(IMAGE_NUMBER, [numbers[key] for key in keys])
            self.train_image_rows = list(first.values())  # the first row of each numbered image, in number order
        return split

    def _image_keys(self, split: datasets.Dataset) -> list[str]:
        """Each row's image key: the id column's value, else a hash of the image's bytes (a file is read once)."""
        h = self.hparams
        column = arrow_columns(split, [h.image_id_column or h.image_column]).column(0)
        if h.image_id_column:
            return column.cast(pa.string()).to_pylist()
        by_path: dict[str, str] = {}
        keys = []
        for chunk in column.chunks:
            for value in chunk.to_pylist():  # one Arrow chunk of images in Python at a time
                path = value if isinstance(value, str) else value.get("path") if isinstance(value, dict) else None
                inline = isinstance(value, dict) and value.get("bytes") is not None
                if path is not None and not inline:
                    if path not in by_path:
                        by_path[path] = self._key(value, path)
                    keys.append(by_path[path])
                else:
                    keys.append(self._key(value, f"row {len(keys)}"))
        return keys

    def _key(self, value, name: str) -> str:
        try:
            return image_key(value, base_dir=self.base_dir)
        except ImageLoadError:  # unreadable: a key of its own, and the scan names the row
            return f"unreadable {name}"

    def retrieval(self, stage: str, split_name: str) -> tuple[dict[str, list], list[RetrievalTask]]:
        prefix = self.hparams.val_name if stage == "val" else self.hparams.test_name
        split, keys = self.splits[split_name], self.keys[split_name]
        images: dict[str, int] = {}
        image_values: list = []
        image_rows: list[int] = []
        captions: dict[str, int] = {}
        caption_to_images: list[set[int]] = []
        for key, value, caption, row in zip(keys, split[self.hparams.image_column], split[self.hparams.caption_column],
                                            split[ROW]):
            if key not in images:
                images[key] = len(images)
                image_values.append(value)
                image_rows.append(row)
            c = captions.setdefault(caption, len(captions))
            if c == len(caption_to_images):
                caption_to_images.append(set())
            caption_to_images[c].add(images[key])
        image_to_captions: list[set[int]] = [set() for _ in images]
        for c, image_ids in enumerate(caption_to_images):
            for i in image_ids:
                image_to_captions[i].add(c)
        streams = {"caption": list(captions), "image": image_values}
        self.image_items[stage] = {"image_key": list(images), "row": image_rows}
        tasks = [RetrievalTask(prefix, "caption", "image", caption_to_images),
                 RetrievalTask(f"{prefix}-image2text", "image", "caption", image_to_captions)]
        return streams, tasks

    def item_columns(self, stage: str, stream: str) -> dict[str, list]:
        """Captions by text; images by file (a path, or the name HF keeps beside inline bytes; None without one), key
        (``image_id_column``'s value, else the sha1 of the bytes) and row (the first ``__row__`` holding the image)."""
        if stream != "image":
            return super().item_columns(stage, stream)
        files = [v if isinstance(v, str) else v.get("path") if isinstance(v, dict) else None
                 for v in self.streams[stage][stream]]
        return {"file": files, **self.image_items[stage]}

    def stream_collator(self, stream: str, stage: str) -> StreamCollator:
        offset = self.image_table()[1][stage] if self.image_table_in_model else None
        cached = self.pixel_cache is not None and stage in self.pixel_offsets
        return StreamCollator(self.processor, stream, f"{self.hparams.dataset} ({stage})", self.base_dir, offset,
                              cache=self.pixel_cache if cached else None, cache_offset=self.pixel_offsets.get(stage, 0))

    def row_codes(self, split: datasets.Dataset) -> np.ndarray:
        captions = arrow_columns(split, [self.hparams.caption_column]).column(0)
        return value_codes([[pa.chunked_array([pa.array(self.keys["train"], pa.string())])], [captions]])

    def value_name(self, split: datasets.Dataset, row: int, column: int) -> str:
        # the codes' columns are (image key, caption); a key is the image id, else a content hash, which tells nothing
        h = self.hparams
        if column == 0:
            return (f"the image id {self.keys['train'][row]!r} (column {h.image_id_column!r})" if h.image_id_column
                    else f"one image (column {h.image_column!r})")
        return super().value_name(split, row, column)  # train_columns[1] is the caption column

    def admit(self, row: dict) -> tuple:
        h = self.hparams
        where = f"{h.dataset} (train stream)"
        caption = text_value(row, h.caption_column, where)
        value = row.get(h.image_column)
        try:
            check_image(value, where=f"{where}, column {h.image_column!r} of the row captioned {caption[:60]!r}",
                        base_dir=self.base_dir)
        except ImageLoadError as err:
            if h.on_bad_image == "error":
                raise ValueError(f"{err}\nFix or remove the row, or set --data.init_args.on_bad_image skip.") from None
            raise BadRow(str(err)) from None
        key = str(row[h.image_id_column]) if h.image_id_column else image_key(value, base_dir=self.base_dir)
        return ("image", key), ("caption", caption)

    def train_collator(self) -> ImageCaptionCollator:
        h = self.hparams
        cached = self.pixel_cache is not None and "train" in self.pixel_offsets
        return ImageCaptionCollator(self.processor, self.columns, h.image_column, f"{h.dataset} (train split)",
                                    self.base_dir, keyed=self.keyed_train_images,
                                    cache=self.pixel_cache if cached else None,
                                    cache_offset=self.pixel_offsets.get("train", 0))


class _TableItems:
    """(table row, image) items of one rank: rows ``rank, rank + world, …`` of the parts laid end to end, the last
    ranks repeating the first rows so that every rank has as many (as the evaluation loaders do)."""

    def __init__(self, parts: list, rank: int, world: int) -> None:
        self.parts, self.rank, self.world = parts, rank, world
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.total = int(self.starts[-1])

    def __len__(self) -> int:
        return -(-self.total // self.world) if self.total else 0

    def __getitem__(self, i: int) -> tuple[int, object]:
        row = (self.rank + i * self.world) % self.total
        part = int(np.searchsorted(self.starts, row, side="right")) - 1
        return row, self.parts[part][row - int(self.starts[part])]


class _TrainImages:
    """The training split's distinct images, by number, read from the split when asked (not held in memory)."""

    def __init__(self, split: datasets.Dataset, column: str, rows: list[int]) -> None:
        self.split, self.column, self.rows = split, column, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, number: int):
        return self.split[self.rows[number]][self.column]
