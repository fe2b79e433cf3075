"""What a model sees of an image: one pipeline for validation, test, the frozen features and every inference
(the app, the CLI, batch prediction), so that a number measured on a file is the number delivered on it.

    pixels = EvalPixels(dcfg)                     # timm's eval transform for the model
    x = pixels(read_for_model("ant.jpg"))         # [3, H, W], what the model is given
    crop = pixels.crop(read_for_model(path))      # the resized, cropped RGB image (what the eval cache stores)
    x = pixels.tensor(crop)                       # ... the same tensor as pixels(image)

An image is read as read_rgb reads it (EXIF orientation applied, transparency composited on white, grey and
16-bit made 8-bit RGB), reduced by an integer factor when its longer side is over READ_MAX_SIDE (JPEG at decode
time), then given to timm's eval transform: resize, crop, to tensor, normalise. The model card's snippet repeats
these steps with stock Pillow and timm.
"""
from __future__ import annotations

import io
import os

from PIL import Image

from vit.data.images import read_rgb
from vit.data.model import Limits

READ_MAX_SIDE = 2048  # an image is decoded at most this large (the model sees 224 or so)


def read_for_model(source: str | os.PathLike | io.BytesIO, limits: Limits | None = None) -> Image.Image:
    """The image as every evaluation and inference reads it (see the module's docstring); DataError if it
    cannot be read."""
    return read_rgb(source, limits=limits, max_side=READ_MAX_SIDE)[0]


class EvalPixels:
    """timm's eval transform for a data config, split where the image becomes a tensor: `crop` (resize and
    crop, still a PIL image: exact to store as uint8) and `tensor` (to float, normalise)."""

    def __init__(self, dcfg: dict):
        from timm.data import create_transform
        from torchvision import transforms as T
        whole = create_transform(**dcfg, is_training=False)
        steps = list(whole.transforms)
        cut = next(i for i, t in enumerate(steps) if type(t).__name__ in ("MaybeToTensor", "ToTensor"))
        self.whole = whole
        self.crop = T.Compose(steps[:cut])
        self.tensor = T.Compose(steps[cut:])

    def __call__(self, image: Image.Image):
        return self.whole(image)


def describe(dcfg: dict) -> str:
    """The eval preprocessing of a data config in words (the card, the Share tab, the ONNX file's metadata)."""
    h, w = dcfg["input_size"][-2:]
    crop_pct = dcfg.get("crop_pct") or 0.875
    mode = dcfg.get("crop_mode") or "center"
    interp = dcfg.get("interpolation") or "bilinear"
    scaled = (int(h / crop_pct), int(w / crop_pct))  # (timm's math.floor)
    if mode == "squash":
        resize = f"resize to {scaled[1]}x{scaled[0]} px, ignoring the aspect ratio ({interp})"
    elif mode == "border":
        resize = f"resize to fit {scaled[1]}x{scaled[0]} px ({interp}), pad"
    else:
        resize = f"resize the shorter side to {scaled[0]} px ({interp})"
    mean = ", ".join(f"{m:.3f}" for m in dcfg["mean"])
    std = ", ".join(f"{s:.3f}" for s in dcfg["std"])
    return (f"RGB; {resize}, crop the centre {w}x{h}; scale to 0-1, subtract mean ({mean}), divide by std ({std}); "
            "channels first")
