"""Decoding and preprocessing COCO-size JPEGs (640×480) for CLIP at 224 px: images/s on one core, by route.

Routes (each on the same in-memory JPEGs, one thread, best of ``--repeats`` passes):
  hf        sentence-transformers (and litembed before issue 10): PIL decode (``load_image``) + transformers'
            CLIPImageProcessor (resize shortest edge 224 bicubic, centre crop, normalise)
  open_clip PIL decode + open_clip's validation transform (the same steps in torchvision on PIL)
  draft     PIL decode at a reduced DCT scale (``Image.draft``: 640×480 → 320×240, no smaller than 224) + the hf
            processor: most of the decode's work is skipped; pixels differ slightly from a full decode (printed)
  tv        litembed's HF backend: torchvision.io.decode_jpeg (libjpeg-turbo) on the CPU + the hf processor on
            the uint8 tensor (``datamodules.images.load_pixels``)
  nvjpeg    torchvision.io.decode_jpeg(device="cuda") in batches + the processor on the GPU (with a GPU only)
Each route's pixels are compared with the hf route's (largest absolute difference after normalisation). The last
lines say how many cores each CPU route needs to feed a GPU at a given rate of training pairs/s.

    python bench/jpeg_decode.py                 # 200 images, 3 passes
    python bench/jpeg_decode.py --feed 930      # cores to feed 930 pairs/s (ViT-L/14 at 50 % MFU on an H100)
"""

import argparse
import io
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datamodules.images import load_image  # noqa: E402


def photo_like_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """640×480 JPEGs (quality 90) with smooth regions, edges and grain, so that their size (~100–200 KB) and decoding
    cost are those of COCO's photos rather than of flat or white-noise images."""
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float32)
        for _ in range(6):  # a few hard-edged blocks, like objects
            y, x = rng.integers(0, 400), rng.integers(0, 560)
            pixels[y:y + rng.integers(30, 200), x:x + rng.integers(30, 200)] = rng.integers(0, 256, 3)
        pixels += rng.normal(0, 9, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def clip_processor():
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor()  # openai/clip-vit-*'s settings: 224, bicubic, OpenAI mean/std


def routes(processor, device: str | None) -> dict:
    import open_clip
    from torchvision.io import decode_jpeg
    _, _, open_clip_val = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)

    def hf(data: bytes):
        return processor(images=load_image(data, where="bench"), return_tensors="pt")["pixel_values"][0]

    def oc(data: bytes):
        return open_clip_val(load_image(data, where="bench"))

    def draft(data: bytes):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (224, 224))  # the largest DCT scale that keeps both sides ≥ 224
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def tv(data: bytes):
        return processor(images=decode_jpeg(torch.frombuffer(data, dtype=torch.uint8)), return_tensors="pt")[
            "pixel_values"][0]

    table = {"hf": hf, "open_clip": oc, "draft": draft, "tv": tv}
    if device == "cuda":
        def nvjpeg(batch: list[bytes]):
            images = decode_jpeg([torch.frombuffer(d, dtype=torch.uint8) for d in batch], device="cuda")
            return processor(images=images, return_tensors="pt", device="cuda")["pixel_values"]

        table["nvjpeg"] = nvjpeg
    return table


def timed(route, jpegs: list[bytes], repeats: int, batched: bool) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        if batched:
            out = torch.cat([route(jpegs[i:i + 64]) for i in range(0, len(jpegs), 64)])
            torch.cuda.synchronize()
        else:
            out = [route(d) for d in jpegs]
            out = torch.stack(out) if isinstance(out[0], torch.Tensor) else None
        best = min(best, time.perf_counter() - start)
    return len(jpegs) / best, None if out is None else out.float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--feed", type=float, default=930.0, help="training pairs/s a GPU consumes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    jpegs = photo_like_jpegs(args.images)
    device = "cuda" if torch.cuda.is_available() else None
    print(f"{args.images} JPEGs 640×480, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB; 1 thread; "
          f"torch {torch.__version__}")
    decode_only, _ = timed(lambda d: load_image(d, where="bench"), jpegs, args.repeats, False)
    print(f"PIL decode alone: {decode_only:.0f} images/s per core")
    print("| route | images/s per core | × hf | largest difference from hf | cores to feed "
          f"{args.feed:.0f} pairs/s |")
    print("|---|--:|--:|--:|--:|")
    results, reference = {}, None
    for name, route in routes(clip_processor(), device).items():
        rate, pixels = timed(route, jpegs, args.repeats, batched=name == "nvjpeg")
        reference = pixels if reference is None else reference
        results[name] = rate
        cores = "(GPU)" if name == "nvjpeg" else f"{args.feed / rate:.1f}"
        print(f"| {name} | {rate:.0f} | {rate / results['hf']:.2f} | {(pixels - reference).abs().max():.3f} | "
              f"{cores} |", flush=True)
    if device is None:
        print("nvjpeg: no GPU here (run on a CUDA machine for the GPU route)")


if __name__ == "__main__":
    main()
