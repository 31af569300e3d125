"""The built-in datasets (``--data.init_args.dataset builtin:<name>``), generated offline at run time: the one registry
the datamodules and ``mine.py`` read them from."""

from collections.abc import Callable

import datasets

from datamodules.shapes import make_shapes
from datamodules.stdlib_pairs import stdlib_docstring_pairs

SEED = 42  # --data.init_args.seed's default (datamodules.base), which orders a built-in's rows: mine.py mines those

Builtins = dict[str, Callable[[], datasets.DatasetDict]]  # name → its splits, generated when called


def pair_builtins(seed: int) -> Builtins:
    """Question–passage pairs (columns anchor, positive): Python's standard-library docstrings."""
    return {"stdlib-docstrings": lambda: datasets.DatasetDict({"train": stdlib_docstring_pairs(seed=seed)})}


def image_caption_builtins(seed: int, rows: int, image_size: int) -> Builtins:
    """Image–caption pairs (columns image, caption, image_id): ``rows`` drawn shapes of ``image_size`` pixels."""

    def shapes() -> datasets.DatasetDict:
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(make_shapes(rows, seed=seed,
                                                                                      image_size=image_size))})

    return {"shapes": shapes}
