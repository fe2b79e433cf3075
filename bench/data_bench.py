"""Dataset ingestion speed: `check`, decode-cache fill, and a cached epoch vs decoding from disk.

Generates 500 JPEGs of 500x375 (the shapes sample) and prints images/s for each
stage and the ratio of a disk-decoded epoch to a cached one, both measured in
this run. Target (issue 2): check + cache fill at 300 images/s or more on a 2-core machine.

    python bench/data_bench.py [--images 500] [--short-side 256]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path


import torch  # noqa: E402,F401  (imported before timing: the training process has it loaded already)
from PIL import Image  # noqa: E402

from vit import data, samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--short-side", type=int, default=256)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        _write_jpegs(Path(tmp), args.images)
        t0 = time.perf_counter()
        ds = data.load_dataset(tmp)
        t_check = time.perf_counter() - t0
        n = len(ds.items)
        assert n == args.images, ds.report.to_text()

        t0 = time.perf_counter()
        cache = data.DecodeCache(ds.items, short_side=args.short_side).fill()
        t_fill = time.perf_counter() - t0

        t0 = time.perf_counter()
        for i in range(n):
            cache.pil(i)
        t_cached = time.perf_counter() - t0

        t0 = time.perf_counter()
        for it in ds.items:
            img, _, _ = data.read_rgb(it.path, draft_side=args.short_side)
            scale = args.short_side / min(img.size)
            img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR, reducing_gap=None)
        t_disk = time.perf_counter() - t0

    both = n / (t_check + t_fill)
    print(f"images: {n} JPEG 500x375, cache short side {args.short_side} px, {cache.nbytes / 2**20:.0f} MiB cached")
    print(f"check:                 {n / t_check:8.0f} images/s")
    print(f"cache fill:            {n / t_fill:8.0f} images/s")
    print(f"check + cache fill:    {both:8.0f} images/s   (target >= 300: {'met' if both >= 300 else 'NOT met'})")
    print(f"epoch from cache:      {n / t_cached:8.0f} images/s")
    print(f"epoch decoding disk:   {n / t_disk:8.0f} images/s")
    print(f"ratio cached/disk epoch speed: {t_disk / t_cached:.1f}x")


def _write_jpegs(root: Path, count: int) -> None:
    rng = random.Random(0)
    for k in range(count):
        shape = samples.SHAPES[k % len(samples.SHAPES)]
        folder = root / shape
        folder.mkdir(exist_ok=True)
        samples.draw_shape(shape, (500, 375), rng).save(folder / f"{k:04d}.jpg", quality=90)


if __name__ == "__main__":
    main()
