"""A built-in sample dataset generated offline: coloured shapes on noisy backgrounds.

Each class is a shape (circle, square, triangle) of random size, position and
hue on a dark noisy background of random hue, so colour and position carry no
label information and a model must learn shape. Shapes are always brighter
than the background, so every image shows its label and a small ViT can learn
the task from scratch on a CPU in about a minute. Used by the app's "try it"
path, the tests and the benchmarks; nothing is downloaded.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle")


def make_shapes_dataset(dest: str | Path, per_class: int = 30, *, size: int | tuple[int, int] = 96,
                        classes: tuple[str, ...] = SHAPES, seed: int = 0, fmt: str = "png",
                        quality: int = 90) -> Path:
    """Write `per_class` images of each shape into dest/<shape>/<n>.<fmt>; return dest."""
    dest = Path(dest)
    rng = random.Random(seed)
    for shape in classes:
        folder = dest / shape
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            img = draw_shape(shape, size, rng)
            kwargs = {"quality": quality} if fmt.lower() in ("jpg", "jpeg") else {}
            img.save(folder / f"{shape}_{n:04d}.{fmt}", **kwargs)
    return dest


def draw_shape(shape: str, size: int | tuple[int, int], rng: random.Random) -> Image.Image:
    """One RGB image of `shape`, its bounding box 44-84% of the shorter side."""
    return draw_shape_with_mask(shape, size, rng)[0]


def draw_shape_with_mask(shape: str, size: int | tuple[int, int],
                         rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    """An image of `shape` and the boolean mask of the shape's pixels (for checking heatmaps)."""
    w, h = (size, size) if isinstance(size, int) else size
    base = [rng.randrange(100) for _ in range(3)]  # dark, of random hue
    img = Image.fromarray(_background(w, h, base, rng))
    mask = Image.new("L", (w, h), 0)
    side = min(w, h)
    r = rng.uniform(0.22, 0.42) * side
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    colour = _shape_colour(rng)
    angle = rng.uniform(0, 2 * math.pi) if shape == "triangle" else 0.0
    for canvas, fill in ((ImageDraw.Draw(img), colour), (ImageDraw.Draw(mask), 255)):
        if shape == "circle":
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            canvas.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "triangle":
            canvas.polygon([(cx + r * math.cos(angle + k * 2 * math.pi / 3),
                             cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)], fill=fill)
        else:
            raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return img, np.asarray(mask) > 0


def _shape_colour(rng: random.Random) -> tuple[int, ...]:
    """A bright colour of random hue: brighter than any background, so the shape always shows."""
    colour = [rng.randrange(256) for _ in range(3)]
    colour[rng.randrange(3)] = rng.randrange(200, 256)
    return tuple(max(c, 140) if i == colour.index(max(colour)) else c for i, c in enumerate(colour))


def _background(w: int, h: int, base: list[int], rng: random.Random) -> np.ndarray:
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 12, (h, w, 3))
    return np.clip(np.array(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


DIGITS = tuple("0123456789")


def make_glyphs_dataset(dest: str | Path, per_class: int = 180, *, chars: tuple[str, ...] = DIGITS,
                        scan_size: int = 16, size: int = 32, seed: int = 0) -> Path:
    """A small-image dataset like low-resolution scans: each character drawn in a random font (the machine's
    TrueType fonts, else Pillow's own), size, stroke, rotation (up to 15 degrees) and position, reduced to
    `scan_size` pixels, enlarged back to `size` and given sensor noise; grey ink-on-dark, one folder per
    character (dest/<char>/<n>.png). Used by the benchmarks; nothing is downloaded."""
    dest = Path(dest)
    rng = random.Random(seed)
    fonts = _fonts()
    for char in chars:
        folder = dest / f"char_{char}" if not char.isalnum() else dest / char
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            _draw_glyph(char, rng, fonts, scan_size, size).save(folder / f"{n:04d}.png")
    return dest


def _draw_glyph(char: str, rng: random.Random, fonts: list, scan_size: int, size: int) -> Image.Image:
    canvas = 64
    img = Image.new("L", (canvas, canvas), 0)
    font_file = rng.choice(fonts) if fonts else None
    points = rng.randint(34, 50)
    font = ImageFont.truetype(font_file, points) if font_file else ImageFont.load_default(points)
    draw = ImageDraw.Draw(img)
    stroke = rng.choice((0, 0, 1, 2))  # heavier ink now and then
    box = draw.textbbox((0, 0), char, font=font, stroke_width=stroke)
    w, h = box[2] - box[0], box[3] - box[1]
    x = (canvas - w) / 2 - box[0] + rng.uniform(-5, 5)
    y = (canvas - h) / 2 - box[1] + rng.uniform(-5, 5)
    ink = rng.randint(170, 255)
    draw.text((x, y), char, fill=ink, font=font, stroke_width=stroke, stroke_fill=ink)
    img = img.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    scan = img.resize((scan_size, scan_size), Image.BOX).resize((size, size), Image.BILINEAR)
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 10, (size, size))
    return Image.fromarray(np.clip(np.asarray(scan, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def _fonts() -> list[str]:
    """TrueType fonts of the machine (DejaVu, Liberation, ...), regular, bold and italic alike."""
    roots = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts"]
    found = sorted({str(p) for root in roots if root.is_dir() for p in root.rglob("*.ttf")})
    return [f for f in found if "Math" not in f and "ExtraLight" not in f]
