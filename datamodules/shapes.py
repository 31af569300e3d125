"""A built-in image–caption dataset drawn at run time: one coloured shape on a plain background, with its caption.

Nothing is downloaded and the rows depend only on the seed. Made for a tiny CLIP to learn on CPU: every caption word
is visible as a flat colour, a size or a grid cell, with no noise. The attributes (6 shapes × 8 colours × 2 sizes × 9 positions
× 4 backgrounds = 3,456 combinations) are dealt without replacement, so captions are unique for up to 3,456 images.
"""

import itertools
import math
import random

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (245, 215, 30),
           "purple": (140, 60, 190), "orange": (250, 140, 20), "pink": (245, 120, 190), "brown": (130, 80, 40)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "beige": (235, 222, 195)}
SIZES = {"small": (0.25, 0.29), "large": (0.38, 0.44)}  # half-width of the shape, as a fraction of a grid cell
# (row, column) of the 3×3 grid → (canonical phrase, paraphrase)
POSITIONS = {(0, 0): ("in the top left", "at the upper left"), (0, 1): ("at the top", "at the top middle"),
             (0, 2): ("in the top right", "at the upper right"), (1, 0): ("on the left", "at the middle left"),
             (1, 1): ("in the centre", "in the middle"), (1, 2): ("on the right", "at the middle right"),
             (2, 0): ("in the bottom left", "at the lower left"), (2, 1): ("at the bottom", "at the bottom middle"),
             (2, 2): ("in the bottom right", "at the lower right")}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
# the first template is the canonical caption; the others paraphrase it, as COCO's several captions per image do
TEMPLATES = ("a {size} {colour} {shape} {position} on a {background} background",
             "a {size2} {colour} {shape} {position2} against a {background} background",
             "{background} background with a {size} {colour} {shape} {position}",
             "there is a {size2} {colour} {shape} {position2}, on {background}",
             "a {size2} {colour} {shape} on {background}, {position}")


def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    """Polygon of ``shape`` centred at (x, y), inside the square of half-width r."""
    if shape == "square":
        return [(x - 0.85 * r, y - 0.85 * r), (x + 0.85 * r, y - 0.85 * r), (x + 0.85 * r, y + 0.85 * r),
                (x - 0.85 * r, y + 0.85 * r)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + 0.85 * r), (x - r, y + 0.85 * r)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    if shape == "star":
        return [(x + radius * math.sin(k * math.pi / 5), y - radius * math.cos(k * math.pi / 5))
                for k, radius in zip(range(10), itertools.cycle((r, 0.45 * r)))]
    w = 0.32 * r  # cross: a plus sign with arms of half-width w
    return [(x - w, y - r), (x + w, y - r), (x + w, y - w), (x + r, y - w), (x + r, y + w), (x + w, y + w),
            (x + w, y + r), (x - w, y + r), (x - w, y + w), (x - r, y + w), (x - r, y - w), (x - w, y - w)]


def _draw(shape: str, colour: str, size: str, cell: tuple[int, int], background: str, image_size: int,
               rng: random.Random) -> Image.Image:
    """One shape inside its cell of the 3×3 grid, its size and centre jittered slightly, never crossing the cell."""
    step = image_size / 3
    r = rng.uniform(*SIZES[size]) * step
    slack = max(step / 2 - r - 1, 0)  # 1 pixel margin against rounding
    x = (cell[1] + 0.5) * step + rng.uniform(-slack, slack)
    y = (cell[0] + 0.5) * step + rng.uniform(-slack, slack)
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[colour])
    else:
        draw.polygon(_outline(shape, x, y, r), fill=COLOURS[colour])
    return image


def make_shapes(n: int, *, seed: int = 0, image_size: int = 64, captions_per_image: int = 1) -> list[dict]:
    """``n`` rows ``{"image", "caption", "image_id"}`` of drawn shapes, the same for the same arguments.

    Captions read like "a large red circle in the top left on a white background". Attribute combinations are dealt
    from a shuffled deck of all 3,456, reshuffled when it runs out, so every caption is unique while there are at most
    3,456 images.

    Args:
        n: number of rows.
        seed: seed of the attributes and the jitter.
        image_size: side of the square RGB images, in pixels (≥ 24 keeps small shapes recognisable).
        captions_per_image: rows per image, each with a different paraphrase (the first is the canonical caption);
            consecutive rows share the image (the same object) and its ``image_id``, like COCO's 5 captions.

    Raises:
        ValueError: ``n`` < 0, ``image_size`` < 24, or ``captions_per_image`` not in 1 … 5.
    """
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    if image_size < 24:
        raise ValueError(f"image_size must be ≥ 24 pixels for the shapes to be recognisable, got {image_size}")
    if not 1 <= captions_per_image <= len(TEMPLATES):
        raise ValueError(f"captions_per_image must be between 1 and {len(TEMPLATES)}, got {captions_per_image}")
    rng = random.Random(seed)
    deck: list[tuple] = []
    rows = []
    for image_id in range(math.ceil(n / captions_per_image)):
        if not deck:
            deck = list(itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS))
            rng.shuffle(deck)
        shape, colour, size, cell, background = deck.pop()
        image = _draw(shape, colour, size, cell, background, image_size, rng)
        words = {"shape": shape, "colour": colour, "background": background, "size": SIZE_WORDS[size][0],
                 "size2": SIZE_WORDS[size][1], "position": POSITIONS[cell][0], "position2": POSITIONS[cell][1]}
        for template in TEMPLATES[:min(captions_per_image, n - len(rows))]:
            rows.append({"image": image, "caption": template.format(**words), "image_id": image_id})
    return rows
