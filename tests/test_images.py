import io
import pickle
import re
import struct
import zlib

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from datamodules.images import ImageLoadError, image_key, load_image, load_pixels, scan_images

RED, GREEN, WHITE = (255, 0, 0), (0, 255, 0), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height (with no pixel data): PIL reads the size before any pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def photo(size: tuple[int, int] = (128, 96)) -> Image.Image:
    """Noisy content, so that a JPEG of it is long enough to cut in the middle of the pixel data."""
    return Image.merge("RGB", [Image.effect_noise(size, 50) for _ in range(3)])


def pixels(mode: str, values: list) -> Image.Image:
    image = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    return image


def palette_with_transparency() -> Image.Image:
    image = pixels("P", [0, 1])
    image.putpalette([*RED, *GREEN])
    return image


# (name, encoded bytes or PIL image, expected RGB pixels of row 0, tolerance for lossy JPEG)
CASES = [
    ("png", encode(pixels("RGB", [RED, GREEN]), "PNG"), [RED, GREEN], 0),
    ("jpeg", encode(Image.new("RGB", (16, 16), RED), "JPEG", quality=95), [RED], 3),
    ("cmyk jpeg", encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), [RED], 3),
    ("rgba png", encode(pixels("RGBA", [(255, 0, 0, 0), (255, 0, 0, 128), (255, 0, 0, 255)]), "PNG"),
     [WHITE, (255, 127, 127), RED], 1),
    ("la png", encode(pixels("LA", [(0, 0), (0, 255)]), "PNG"), [WHITE, (0, 0, 0)], 0),
    ("p png with transparency", encode(palette_with_transparency(), "PNG", transparency=0), [WHITE, GREEN], 0),
    ("l png", encode(pixels("L", [100]), "PNG"), [(100, 100, 100)], 0),
    ("1-bit png", encode(pixels("1", [0, 1]), "PNG"), [(0, 0, 0), WHITE], 0),
    ("16-bit png", encode(pixels("I;16", [0, 32896, 65535]), "PNG"), [(0, 0, 0), (128, 128, 128), WHITE], 0),
    ("I;16B image", Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 257 * 20, 65535)), [(20,) * 3, WHITE], 0),
    ("32-bit I image", pixels("I", [0, 2, 10]), [(0, 0, 0), (51, 51, 51), WHITE], 0),
    ("float F image", pixels("F", [-1.0, 0.0, 3.0]), [(0, 0, 0), (64, 64, 64), WHITE], 0),
]


@pytest.mark.parametrize("name, value, expected, tolerance", CASES, ids=[case[0] for case in CASES])
def test_load_image_converts_to_rgb(name, value, expected, tolerance):
    image = load_image(value, where="train row 0, column 'image'")
    assert image.mode == "RGB"
    for x, colour in enumerate(expected):
        assert max(abs(a - b) for a, b in zip(image.getpixel((x, 0)), colour)) <= tolerance, (x, image.getpixel((x, 0)))


def test_load_image_accepts_every_container(tmp_path, monkeypatch):
    data = encode(pixels("RGB", [RED, GREEN]), "PNG")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(data)
    path = tmp_path / "images" / "a.png"
    values = [data, bytearray(data), {"bytes": data, "path": "a.png"}, {"bytes": None, "path": str(path)}, str(path),
              path, Image.open(path)]
    for value in values:
        image = load_image(value, where="row 0")
        assert (image.mode, image.size, image.getpixel((1, 0))) == ("RGB", (2, 1), GREEN)
    assert load_image("images/a.png", where="row 0", base_dir=str(tmp_path)).getpixel((0, 0)) == RED
    monkeypatch.chdir(tmp_path / "images")  # without base_dir, relative to the working directory
    assert load_image("a.png", where="row 0").getpixel((0, 0)) == RED


def test_load_image_applies_exif_orientation_as_hf_datasets_does():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise for display
    data = encode(Image.new("RGB", (40, 16), RED), "JPEG", exif=exif)
    assert load_image(data, where="row 0").size == (16, 40)
    decoded = datasets.Image().decode_example({"bytes": data, "path": None})
    assert decoded.size == (16, 40)


def test_load_image_errors_name_the_row_and_the_problem(tmp_path):
    where = "train row 17, column 'image'"
    jpeg = encode(photo(), "JPEG")
    png = encode(photo(), "PNG")
    cases = [
        (str(tmp_path / "missing.jpg"), r"train row 17, column 'image': image file not found: .*missing\.jpg"),
        (jpeg[: len(jpeg) // 2], r"^train row 17, column 'image': truncated or corrupt image .*truncated"),
        (png[: len(png) // 2], r"truncated or corrupt image .*truncated"),
        ({"bytes": jpeg[:100], "path": "0001.jpg"}, r"'image' \(0001\.jpg\): truncated or corrupt"),  # in the header
        (b"\x00garbage" * 50, r"not an image format PIL can read \(400 bytes starting b'\\x00garbage"),
        (png_header(0, 5), r"not an image format PIL can read"),  # PIL refuses a zero size in a file header
        (Image.new("RGB", (0, 4)), r"zero size \(0×4\)"),
        (png_header(100_000, 100_000), r"10000000000 pixels"),
        (None, r"no image \(None\)"),
        (42, r"unsupported image value of type int"),
        ({"bytes": None, "path": None}, r"neither 'bytes' nor 'path'"),
        ("https://example.com/cat.jpg", r"is a URL; images are not downloaded"),
        (Image.new("La", (2, 2)), r"cannot convert mode La to RGB"),
    ]
    for value, message in cases:
        with pytest.raises(ImageLoadError, match=message):
            load_image(value, where=where)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_image_names_the_file_and_refuses_over_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (64, 64)), "PNG"))
    message = rf"row 3 \({re.escape(str(path))}\): the image is 64×64 = 4,096 pixels, over max_pixels = 1,000"
    with pytest.raises(ImageLoadError, match=message):
        load_image(str(path), where="row 3", max_pixels=1000)
    assert load_image(str(path), where="row 3", max_pixels=4096).size == (64, 64)


def test_image_load_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ImageLoadError("row 1", "no image (None)")))
    assert (str(err), err.where, err.reason) == ("row 1: no image (None)", "row 1", "no image (None)")


def test_image_key_depends_on_content_not_container(tmp_path):
    data = encode(pixels("RGB", [RED, GREEN]), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    same = [data, {"bytes": data, "path": "x.png"}, {"bytes": None, "path": str(tmp_path / "a.png")},
            str(tmp_path / "a.png"), tmp_path / "a.png"]
    assert len({image_key(value) for value in same}) == 1
    assert image_key("a.png", base_dir=str(tmp_path)) == image_key(data)
    assert image_key(encode(pixels("RGB", [GREEN, RED]), "PNG")) != image_key(data)
    assert image_key(b"not decoded, only hashed") != image_key(data)
    assert image_key(pixels("RGB", [RED, GREEN])) == image_key(pixels("RGB", [RED, GREEN]))
    assert image_key(pixels("RGB", [RED, GREEN])) != image_key(pixels("RGB", [GREEN, RED]))
    assert image_key(pixels("L", [0, 0, 0])) != image_key(pixels("L", [0, 0, 0, 0]))


def test_scan_images_lists_every_bad_row(tmp_path):
    good = encode(photo(), "JPEG")
    (tmp_path / "good.jpg").write_bytes(good)
    values = [good, "missing.jpg", {"bytes": good, "path": None}, good[: len(good) // 2], None, "good.jpg",
              encode(Image.new("RGB", (8, 8), RED), "PNG")]
    indices, problems = scan_images(values, "image", "coco (train split)", base_dir=str(tmp_path), num_threads=2)
    assert indices == [0, 2, 5, 6]
    assert [p.split(":")[0] for p in problems] == [f"coco (train split) row {i}, column 'image'" for i in (1, 3, 4)]
    assert "image file not found" in problems[0] and "truncated" in problems[1] and "no image" in problems[2]


def test_scan_images_reads_a_lazy_hf_column():
    rows = [{"image": Image.new("RGB", (8, 8), RED)}] * 3
    split = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image(decode=False))
    assert scan_images(split["image"], "image", "train") == ([0, 1, 2], [])


@pytest.mark.parametrize("progressive", [False, True])
def test_scan_images_catches_truncation_at_reduced_scale(progressive):
    data = encode(photo((512, 384)), "JPEG", progressive=progressive)
    indices, problems = scan_images([data, data[:-100]], "image", "train")
    assert indices == [0] and problems[0].startswith("train row 1, column 'image': truncated or corrupt image")


def test_scan_images_warns_when_truncation_cannot_be_detected(monkeypatch, caplog):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    scan_images([encode(Image.new("RGB", (8, 8)), "PNG")], "image", "train")
    assert "LOAD_TRUNCATED_IMAGES" in caplog.text


def jpeg_variants() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    image = photo((97, 75))  # odd sizes: chroma upsampling at the edges
    return {"4:2:0": encode(image, "JPEG", quality=90), "4:4:4": encode(image, "JPEG", quality=95, subsampling=0),
            "4:2:2": encode(image, "JPEG", quality=75, subsampling=1),
            "progressive": encode(image, "JPEG", quality=85, progressive=True),
            "exif-rotated": encode(image, "JPEG", quality=90, exif=exif)}


@pytest.mark.parametrize("name", list(jpeg_variants()))
def test_the_tensor_route_gives_the_processor_the_same_pixels_as_pil(name):
    from lightning_modules.clip_backends import TransformersClip
    from tests.tiny import TINY_HF_CLIP_CONFIG
    processor = TransformersClip(config=TINY_HF_CLIP_CONFIG).processor
    data = jpeg_variants()[name]
    tensor = load_pixels(data, where="row 0", tensors=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8  # the tensor route was taken
    image = load_image(data, where="row 0")
    assert tensor.shape == (3, image.height, image.width)
    assert torch.equal(tensor, torch.from_numpy(np.asarray(image)).permute(2, 0, 1))  # the decoders agree exactly
    assert torch.equal(processor.image_transform(tensor, True), processor.image_transform(image, True))


@pytest.mark.parametrize("name, data", [
    ("grey", encode(Image.new("L", (8, 8), 90), "JPEG")), ("cmyk", encode(Image.new("CMYK", (8, 8)), "JPEG")),
    ("png", encode(Image.new("RGB", (8, 8), RED), "PNG"))])
def test_grey_cmyk_and_other_formats_go_through_pil(name, data):
    image = load_pixels(data, where="row 0", tensors=True)
    assert isinstance(image, Image.Image) and image.mode == "RGB"


def test_a_corrupt_jpeg_on_the_tensor_route_gets_pils_message():
    data = jpeg_variants()["4:2:0"]
    with pytest.raises(ImageLoadError, match="row 3: truncated or corrupt image"):
        load_pixels(data[: len(data) // 2], where="row 3", tensors=True)


@pytest.mark.parametrize("name, data", [("bad.jpg", jpeg_variants()["4:2:0"][:3000]),
                                        ("bad.png", encode(photo(), "PNG")[:3000])])
def test_a_bad_file_on_the_tensor_route_is_named_as_on_pils(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    messages = []
    for tensors in (False, True):
        with pytest.raises(ImageLoadError) as err:
            load_pixels(name, where="row 3", base_dir=str(tmp_path), tensors=tensors)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and f"row 3 ({tmp_path / name}): truncated or corrupt image" in messages[1]
