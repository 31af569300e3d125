"""Reading a dataset's splits: ``builtin:<name>``, a local file or directory, or a hub name, whole or as a stream.

Also what the files of a split are and how many rows it has, without loading it (a model card, messages naming rows by
file and line, the batch order of a stream).
"""

import copy
import dataclasses
import os
from collections.abc import Callable

import datasets
import pyarrow.dataset
from datasets.exceptions import DatasetGenerationError

from datamodules.files import is_table, scan_file

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_splits(
    source: str, builtins: dict[str, Callable[[], datasets.DatasetDict]], data_files: dict[str, str] | None = None,
    streaming: bool = False,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Read a dataset from ``builtin:<name>``, a .jsonl/.json/.csv/.parquet file, a local directory or a hub name.

    A single file becomes the ``train`` split. A directory goes through HF datasets' split inference: name validation
    files ``validation`` (``eval`` files land in the ``test`` split) or pass ``data_files``. ``streaming`` reads the
    files as they are, row by row, instead of downloading and converting every split to Arrow first (built-ins are
    generated in memory either way).
    """
    options = stream_read_options(source, data_files) if streaming and not source.startswith("builtin:") else {}
    try:
        return _load_splits(source, builtins, data_files, streaming, **options)
    except DatasetGenerationError as err:  # local files were read first (check_files): this is a hub dataset's fault
        raise ValueError(f"--data.init_args.dataset {source!r}: HF datasets could not read it "
                         f"({type(err.__cause__ or err).__name__}: {err.__cause__ or err})") from None


# How a stream reads parquet. HF's reader decodes a whole row group per Arrow batch by default and datasets 5 writes
# ~100 MB row groups; the shuffle interleaves up to 10 files, so a COCO-style stream (images inline) held ~1.5 GB more
# than a 1,000-row one before its first step. Reading through a buffered stream, without pre-buffering the row group,
# 100 rows (HF's old row group size for image datasets) per batch halves that; what stays is the row group's decoded
# column chunks, which pyarrow's dataset scanner keeps whole (BENCHMARKS.md, time to first step).
STREAM_PARQUET_ROWS = 100
STREAM_PARQUET_BUFFER = 8 << 20
# How a stream reads JSON lines: in chunks of this many bytes (HF's default is 10 MB). HF also infers a stream's
# columns from its first chunk, parsing every line of it in Python: 10 MB took ~0.5 s per source, which a mixture of
# 10 streamed sources paid before its first step (bench/mixture_first_step.py); 1 MB is ~10,000 QA pairs per chunk.
STREAM_JSON_CHUNK = 1 << 20


def stream_read_options(source: str, data_files: dict[str, str] | None) -> dict:
    """Builder options that bound a stream's memory and start-up: for parquet (local files or a hub repository),
    batches of ``STREAM_PARQUET_ROWS`` rows read through a buffered stream; for JSON lines, chunks of
    ``STREAM_JSON_CHUNK`` bytes."""
    if os.path.isfile(source):
        kind = FILE_FORMATS.get(os.path.splitext(source)[1].lower())
    else:
        builder = dataset_builder(source, data_files)  # (None: loading the stream reports what is wrong)
        kind = builder.name if builder is not None else None
    if kind == "json":
        return {"chunksize": STREAM_JSON_CHUNK}
    if kind != "parquet":
        return {}
    scan = pyarrow.dataset.ParquetFragmentScanOptions(use_buffered_stream=True, buffer_size=STREAM_PARQUET_BUFFER,
                                                      pre_buffer=False)
    return {"batch_size": STREAM_PARQUET_ROWS, "fragment_scan_options": scan}


def _load_splits(
    source: str, builtins: dict[str, Callable[[], datasets.DatasetDict]], data_files: dict[str, str] | None,
    streaming: bool, **options,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in builtins:
            raise ValueError(f"--data.init_args.dataset: unknown built-in dataset {name!r}; built-ins: "
                             f"{sorted(builtins)}")
        return builtins[name]()
    if streaming and (builder := dataset_builder(source, data_files)) is not None:
        # the builder start-up resolved (HF lists the files and matches split patterns once per source), with the
        # stream's read options
        try:
            return _with_options(builder, options).as_streaming_dataset()
        except TypeError:  # an option this builder's config lacks: HF's own path says so
            pass
    if data_files is not None:
        return datasets.load_dataset(source, data_files=data_files, streaming=streaming, **options)
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in FILE_FORMATS:
            raise ValueError(f"--data.init_args.dataset {source!r}: unsupported file type {ext!r}; use one of "
                             f"{sorted(FILE_FORMATS)}")
        return datasets.load_dataset(FILE_FORMATS[ext], data_files={"train": source}, streaming=streaming, **options)
    if os.path.isdir(source):
        return datasets.load_dataset(source, streaming=streaming, **options)
    try:
        return datasets.load_dataset(source, streaming=streaming, **options)
    except Exception as err:  # offline, misspelt or private: all surface here
        raise ValueError(
            f"--data.init_args.dataset {source!r} is not a file, not a directory and could not be loaded from the hub "
            f"({type(err).__name__}: {err}). Check the path, or pass a local .jsonl/.csv/.parquet file or directory."
        ) from err


def count_rows(source: str, split: str, data_files: dict[str, str] | None = None) -> int | None:
    """Rows of a split without loading it: the hub metadata's count, else one read of its local files
    (:func:`~datamodules.files.scan_file`: csv records, non-blank JSON lines, parquet footers). None when neither
    tells (a hub dataset without counts)."""
    builder = dataset_builder(source, data_files)
    if builder is None:
        return None
    if builder.info.splits and split in builder.info.splits and builder.info.splits[split].num_examples:
        return builder.info.splits[split].num_examples
    files = local_files(builder, split)
    return sum(scan_file(path).rows for path in files) if files and all(map(is_table, files)) else None


def split_files(source: str, split: str, data_files: dict[str, str] | None = None) -> list[str] | None:
    """The local files a split is read from, in the order HF concatenates their rows (an imagefolder's
    metadata.jsonl); None for a built-in or hub dataset, or a source that cannot be read."""
    builder = dataset_builder(source, data_files)
    return None if builder is None else local_files(builder, split)


_builders: dict[tuple, datasets.DatasetBuilder | None] = {}


def dataset_builder(source: str, data_files: dict[str, str] | None) -> datasets.DatasetBuilder | None:
    """HF's builder of a local file, directory or hub name, which knows the split files and counts without loading
    them; None for a built-in, or a source that cannot be read. Resolved once per process and source (~0.1 s each:
    HF lists the folder and matches its split patterns, and start-up asks for a source's files, rows and format)."""
    if source.startswith("builtin:"):
        return None
    key = (source, repr(sorted((data_files or {}).items())), _fingerprint(source))
    if key not in _builders:
        name, files = source, data_files
        if os.path.isfile(source):
            name, files = FILE_FORMATS.get(os.path.splitext(source)[1].lower(), source), {"train": source}
        try:
            _builders[key] = datasets.load_dataset_builder(name, data_files=files)
        except Exception:  # loading the data itself reports what is wrong with the source
            _builders[key] = None
    return _builders[key]


def _with_options(builder: datasets.DatasetBuilder, options: dict) -> datasets.DatasetBuilder:
    """A copy of ``builder`` whose config has ``options`` (TypeError: one its config does not have)."""
    if not options:
        return builder
    copied = copy.copy(builder)
    copied.config = dataclasses.replace(builder.config, **options)
    copied.info = copy.deepcopy(builder.info)  # a stream's builder records the columns it infers there
    return copied


def _fingerprint(source: str) -> tuple:
    """What changes when a local source's files do (a file's size and time; a folder's and its subfolders' times,
    which adding or removing a file moves): a builder resolved before is not reused then."""
    if os.path.isfile(source):
        stat = os.stat(source)
        return stat.st_size, stat.st_mtime_ns
    if not os.path.isdir(source):
        return ()
    with os.scandir(source) as entries:
        folders = sorted((e.name, e.stat().st_mtime_ns) for e in entries if e.is_dir())
    return os.stat(source).st_mtime_ns, tuple(folders)


def local_files(builder: datasets.DatasetBuilder, split: str) -> list[str] | None:
    """The split's local files (an imagefolder's metadata.jsonl only); None when any is not a local file."""
    files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    metadata = [f for f in files if os.path.basename(f) == "metadata.jsonl"]
    files = metadata or files
    return files if files and all(os.path.isfile(f) for f in files) else None
