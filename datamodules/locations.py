"""How messages name a split's rows: by file and line (a jsonl's or csv's), or by row counting from 1."""

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from datamodules.files import is_table, scan_file
from datamodules.loading import split_files

ROW = "__row__"  # each row's position as loaded, kept for messages
SHOWN_ROWS = 10  # rows a message names by file and line; it counts the others


@dataclass(frozen=True)
class Where:
    """How messages name a split: ``str()`` gives the data and split (``"data/qa (train split)"``), :meth:`rows` its
    rows by file and line, :meth:`flags` the options that chose its columns.

    Args:
        text: the data and split, as messages start.
        source: ``--data.init_args.dataset``.
        file_split: the split whose files the ``__row__`` numbers index (train, for rows held out by ``val_size``).
        data_files: ``--data.init_args.data_files``.
        column_flags: the option naming each column, e.g. ``{"positive": "--data.init_args.columns"}``.
    """

    text: str
    source: str
    file_split: str
    data_files: dict[str, str] | None = None
    column_flags: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text

    def flags(self, columns: Iterable[str]) -> str:
        """The options that name ``columns``."""
        return " or ".join(dict.fromkeys(self.column_flags.get(c, "--data.init_args.columns") for c in columns))

    def files(self) -> list[str] | None:
        return split_files(self.source, self.file_split, self.data_files)

    def rows(self, positions: Sequence[int], total: int | None = None) -> str:
        """``positions`` (``__row__`` values) as a user finds them: ``"lines 70, 91 of data/train.jsonl"``. A jsonl's
        or csv's rows are named by the file's line (blank lines, which HF skips, and a csv's header and line breaks
        inside quoted cells counted); other rows count from 1: a parquet's, or the split's where no local file holds
        it. ``total``: rows the positions were taken from; those not named are counted."""
        positions = sorted(positions)
        files = self.files()
        places = (_file_rows(files, positions) if files else None) or [
            (f"the {self.file_split} split", "row", p + 1) for p in positions]
        parts = []
        for (name, kind), group in itertools.groupby(places, key=lambda place: place[:2]):
            numbers = [str(number) for *_, number in group]
            parts.append(f"{kind}{'s' * (len(numbers) > 1)} {', '.join(numbers)} of {name}")
        more = (total or 0) - len(positions)
        counting = " (counting from 1)" if any(kind == "row" for _, kind, _ in places) else ""
        return "; ".join(parts) + counting + (f", and {more} more" if more > 0 else "")


def _file_rows(files: list[str], positions: list[int]) -> list[tuple[str, str, int]] | None:
    """(file, "line" or "row", number) of each of the sorted 0-based ``positions`` in the split that ``files`` make,
    in order; None when a file holds no table (images) or a position lies beyond their rows."""
    if not all(map(is_table, files)):
        return None
    places, start, wanted = [], 0, iter(positions)
    position = next(wanted, None)
    for path in files:
        scan = scan_file(path)
        while position is not None and position < start + scan.rows:
            places.append((path, *scan.place(position - start)))
            position = next(wanted, None)
        start += scan.rows
    return places if position is None else None
