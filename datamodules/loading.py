"""Reading a dataset's splits: ``builtin:<name>``, a local file or directory, or a hub name, whole or as a stream.

Also what the files of a split are and how many rows it has, without loading it (a model card, messages naming rows by
file and line, the batch order of a stream).
"""

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


def stream_read_options(source: str, data_files: dict[str, str] | None) -> dict:
    """Builder options that bound a stream's memory: for parquet (local files or a hub repository), batches of
    ``STREAM_PARQUET_ROWS`` rows read through a buffered stream."""
    if os.path.isfile(source):
        parquet = source.lower().endswith(".parquet")
    else:
        try:
            parquet = datasets.load_dataset_builder(source, data_files=data_files).name == "parquet"
        except Exception:  # loading the stream reports what is wrong with the source
            parquet = False
    if not parquet:
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


def dataset_builder(source: str, data_files: dict[str, str] | None) -> datasets.DatasetBuilder | None:
    """HF's builder of a local file, directory or hub name, which knows the split files and counts without loading
    them; None for a built-in, or a source that cannot be read."""
    if source.startswith("builtin:"):
        return None
    if os.path.isfile(source):
        source, data_files = FILE_FORMATS.get(os.path.splitext(source)[1].lower(), source), {"train": source}
    try:
        return datasets.load_dataset_builder(source, data_files=data_files)
    except Exception:  # loading the data itself reports what is wrong with the source
        return None


def local_files(builder: datasets.DatasetBuilder, split: str) -> list[str] | None:
    """The split's local files (an imagefolder's metadata.jsonl only); None when any is not a local file."""
    files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    metadata = [f for f in files if os.path.basename(f) == "metadata.jsonl"]
    files = metadata or files
    return files if files and all(os.path.isfile(f) for f in files) else None
