import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from datamodules.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, make_shapes

CANONICAL = re.compile(rf"a (?P<size>small|large) (?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) "
                       rf"(?P<position>{'|'.join(p for p, _ in POSITIONS.values())}) "
                       rf"on a (?P<background>{'|'.join(BACKGROUNDS)}) background")


def test_rows_are_deterministic_by_seed():
    first, again, other = make_shapes(40, seed=1), make_shapes(40, seed=1), make_shapes(40, seed=2)
    assert len(first) == 40 and [r["image_id"] for r in first] == list(range(40))
    assert [(r["caption"], r["image"].tobytes()) for r in first] == \
        [(r["caption"], r["image"].tobytes()) for r in again]
    assert [r["caption"] for r in first] != [r["caption"] for r in other]
    assert all(r["image"].mode == "RGB" and r["image"].size == (64, 64) for r in first)
    assert make_shapes(0) == []


def test_captions_are_unique_up_to_every_combination():
    for n in (2000, 3456):
        assert len({r["caption"] for r in make_shapes(n, seed=3)}) == n
    counts = Counter(r["caption"] for r in make_shapes(4000))
    assert len(counts) == 3456 and max(counts.values()) == 2  # the deck is reshuffled, not cut short


def test_several_captions_per_image_share_it():
    rows = make_shapes(7, seed=5, captions_per_image=3)
    assert [r["image_id"] for r in rows] == [0, 0, 0, 1, 1, 1, 2]
    for image_id in (0, 1):
        group = [r for r in rows if r["image_id"] == image_id]
        assert len({r["caption"] for r in group}) == 3 and all(r["image"] is group[0]["image"] for r in group)
        assert CANONICAL.fullmatch(group[0]["caption"])
    single = make_shapes(3, seed=5)  # the first caption of each image is the one captions_per_image=1 gives
    assert [r["caption"] for r in single[:2]] == [rows[0]["caption"], rows[3]["caption"]]
    five = [r["caption"] for r in make_shapes(5, seed=5, captions_per_image=5)]
    words = CANONICAL.fullmatch(five[0])
    assert len(set(five)) == 5
    assert all(words["colour"] in c and words["shape"] in c and words["background"] in c for c in five)


def test_captions_describe_the_pixels():
    """Outside the stated grid cell is all background; inside, the shape is in the stated colour; large > small."""
    areas = defaultdict(lambda: defaultdict(list))
    cell_of = {phrase: cell for cell, (phrase, _) in POSITIONS.items()}
    for row in make_shapes(300, seed=7, image_size=60):  # cells of 20 pixels
        words = CANONICAL.fullmatch(row["caption"])
        pixels = np.asarray(row["image"])
        background = np.all(pixels == BACKGROUNDS[words["background"]], axis=-1)
        r, c = cell_of[words["position"]]
        inside = np.zeros_like(background)
        inside[20 * r:20 * (r + 1), 20 * c:20 * (c + 1)] = True
        assert background[~inside].all(), row["caption"]
        shape = pixels[inside & ~background]
        assert len(shape) > 20 and (shape == COLOURS[words["colour"]]).all(), row["caption"]
        areas[words["shape"]][words["size"]].append(len(shape))
    for shape, by_size in areas.items():
        assert min(by_size["large"]) > 1.3 * max(by_size["small"]), shape


@pytest.mark.parametrize("kwargs, message", [
    ({"n": -1}, "n must be ≥ 0"),
    ({"n": 5, "image_size": 16}, "image_size must be ≥ 24"),
    ({"n": 5, "captions_per_image": 6}, "captions_per_image must be between 1 and 5"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(**kwargs)
