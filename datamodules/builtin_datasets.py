"""The built-in datasets (``--data.init_args.dataset builtin:<name>``), generated offline at run time: the one registry
the datamodules and ``mine.py`` read them from."""

from collections.abc import Callable

import datasets

from datamodules.shapes import make_shapes
from datamodules.stdlib_pairs import stdlib_docstring_pairs, stdlib_function_pairs, stdlib_method_triplets

SEED = 42  # --data.init_args.seed's default (datamodules.base), which orders a built-in's rows: mine.py mines those

Builtins = dict[str, Callable[[], datasets.DatasetDict]]  # name → its splits, generated when called


def pair_builtins(seed: int) -> Builtins:
    """Question–passage pairs from Python's standard-library docstrings: ``stdlib-docstrings`` (columns anchor,
    positive), and the same pairs split in two sources that share no row (the mixture demo's):
    ``stdlib-functions`` (anchor, positive) and ``stdlib-methods`` (anchor, positive, negative: a method of the same
    class)."""
    return {"stdlib-docstrings": lambda: datasets.DatasetDict({"train": stdlib_docstring_pairs(seed=seed)}),
            "stdlib-functions": lambda: datasets.DatasetDict({"train": stdlib_function_pairs(seed=seed)}),
            "stdlib-methods": lambda: datasets.DatasetDict({"train": stdlib_method_triplets(seed=seed)})}


def image_caption_builtins(seed: int, rows: int, image_size: int) -> Builtins:
    """Image–caption pairs (columns image, caption, image_id): ``rows`` drawn shapes of ``image_size`` pixels."""

    def shapes() -> datasets.DatasetDict:
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(make_shapes(rows, seed=seed,
                                                                                      image_size=image_size))})

    return {"shapes": shapes}
