"""Images, safely: the header checked before decoding, bounded decodes normalised to 8-bit RGB, thumbnails."""
from __future__ import annotations

import contextlib
import io
import math
import os
import threading
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vit.data.model import DataError, Dataset, Limits

try:  # HEIC/HEIF/AVIF support where the optional plugin is installed
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - the plugin is optional
    pillow_heif = None


# Images larger than this decode one at a time per process (see read_rgb).
BIG_IMAGE_PIXELS = 16_000_000
_BIG_DECODES = threading.BoundedSemaphore(1)
Image.init()  # every Pillow plugin registered now, so that the formats below are known
SAFE_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "ICO", "TGA",
                                 "HEIF", "AVIF") if f in Image.OPEN)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
                  ".heic", ".heif", ".avif", ".ppm", ".pgm", ".pbm", ".jfif", ".ico"}


_REDUCIBLE_MODES = ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK")


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel


def read_rgb(source: str | os.PathLike | io.BytesIO, *, limits: Limits | None = None,
             draft_side: int | None = None, max_side: int | None = None
             ) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open an image as 8-bit RGB with EXIF orientation applied.

    Returns (image, original colour mode, displayed size before any reduction). The size is read
    from the header and checked against the caps before anything is decoded. `draft_side` lets
    JPEG decode at a reduced scale while keeping the shorter side at least that long; `max_side`
    reduces a larger image (by an integer factor, at decode time for JPEG) so that its longer side
    is at most that. Images over BIG_IMAGE_PIXELS decode one at a time per process, so concurrent
    requests cannot stack their peaks. Raises DataError with a reason.
    """
    limits = limits or Limits()  # (read now: VIT_MAX_PIXELS as it is set, not as it was at import)
    try:
        img = Image.open(source, formats=SAFE_FORMATS)
    except Image.DecompressionBombError:
        raise DataError(f"image has too many pixels (cap max_pixels={limits.max_pixels:,})")
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(_unreadable(e))
    with img:
        w, h = img.size
        if w * h > limits.max_pixels:
            raise DataError(f"image has too many pixels ({w}x{h} = {w * h:,}; cap max_pixels={limits.max_pixels:,})")
        if min(w, h) < limits.min_side:
            raise DataError(f"too small ({w}x{h}; each side must be at least {limits.min_side} px)")
        mode = img.mode
        big = w * h > BIG_IMAGE_PIXELS
        try:
            with _BIG_DECODES if big else contextlib.nullcontext():
                orientation = img.getexif().get(0x0112, 1)  # (a PNG is read to its end for this)
                size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
                if img.format == "JPEG":
                    scale = max(min(w, h) / draft_side if draft_side else 1, max(w, h) / max_side if max_side else 1)
                    if scale >= 2:
                        img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
                img.load()
                pixels = img
                if img.mode in WIDE_MODES:
                    pixels = _eight_bit(img)
                    pixels.info = dict(img.info)  # (its EXIF orientation)
                rgb = to_rgb(ImageOps.exif_transpose(reduced(pixels, max_side)))
                rgb = reduced(rgb, max_side)
        except Image.DecompressionBombError:
            raise DataError(f"image has too many pixels (cap max_pixels={limits.max_pixels:,})")
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DataError(_unreadable(e))
    return rgb, mode, size


def _unreadable(error: BaseException) -> str:
    """Why Pillow could not read an image, in words: metadata past its decompression cap (a text or colour-profile
    chunk that would decompress to megabytes: a bomb in the metadata, not the pixels), or a corrupt file."""
    if any(words in str(error).lower() for words in ("decompressed data too large", "too much memory used in text")):
        return ("metadata (a text or colour-profile chunk) that would decompress past the reader's cap of 1 MB: "
                "skipped for safety; save the image again without its metadata")
    return f"corrupt or truncated image ({error})"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white; 16-bit and float grey as in
    _eight_bit."""
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_MODES:
        return _eight_bit(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """img shrunk by an integer factor so its longer side is at most max_side, where its mode allows
    (read_rgb reduces the others after conversion to RGB)."""
    if not max_side or max(img.size) <= max_side or img.mode not in _REDUCIBLE_MODES:
        return img
    return img.reduce(math.ceil(max(img.size) / max_side))


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as 8-bit "L": 16-bit data keep their high byte (data that fit
    in 8 bits stay as they are), float data are stretched to 0-255. One working copy of the pixels."""
    arr = np.array(img)
    if img.mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        if hi > lo:
            arr -= np.float32(lo)
            arr *= np.float32(255 / (hi - lo))
            arr += np.float32(0.5)
        else:
            arr[...] = 0
    elif arr.max() > 255:
        if arr.dtype.kind != "u":
            np.clip(arr, 0, 65535, out=arr)
        np.right_shift(arr, 8, out=arr)
    else:
        np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "L")


def thumbnails(dataset: Dataset, per_class: int = 4, size: int = 128) -> list[tuple[Image.Image, str]]:
    """A few images of each class, as (thumbnail, caption) pairs, for a sample grid."""
    out = []
    for cls in dataset.classes:
        for it in [it for it in dataset.items if it.label == cls][:per_class]:
            img, _, _ = read_rgb(it.path, draft_side=size, max_side=4 * size)
            img.thumbnail((size, size))
            out.append((img, f"{cls}: {PurePosixPath(it.name).name}"))
    return out
