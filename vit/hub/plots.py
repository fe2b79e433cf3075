"""The pictures of a run: its confusion matrix, its learning curves and its reliability diagram, drawn with Pillow (no
plotting library in the web process)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def confusion_image(confusion: list[list[int]], labels: list[str], cell: int = 56) -> Image.Image:
    """The confusion matrix: rows true, columns predicted, shaded by each row's share."""
    m = np.asarray(confusion, dtype=float)
    n = len(m)
    labels = [_short(lb) for lb in (labels or [str(i) for i in range(n)])]
    font = _font(13)
    margin_l, margin_t = 110, 100
    img = Image.new("RGB", (max(margin_l + n * cell + 20, 470), margin_t + n * cell + 40), "white")
    d = ImageDraw.Draw(img)
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    for i in range(n):
        for j in range(n):
            x0, y0 = margin_l + j * cell, margin_t + i * cell
            v = share[i, j]
            colour = (int(255 - 200 * v), int(255 - 140 * v), 255) if i == j else (255, int(255 - 160 * v),
                                                                                  int(255 - 160 * v))
            d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=colour)
            d.text((x0 + cell / 2, y0 + cell / 2), str(int(m[i, j])), fill="black", font=font, anchor="mm")
    for k, lb in enumerate(labels):
        d.text((margin_l - 8, margin_t + k * cell + cell / 2), lb, fill="black", font=font, anchor="rm")
        d.text((margin_l + k * cell + cell / 2, margin_t - 8), lb, fill="black", font=font, anchor="md")
    d.text((10, 15), "Confusion matrix (validation images)", fill="black", font=font)
    d.text((10, 35), "rows: true class, columns: predicted class", fill="#444", font=font)
    return img


def curves_image(history: list[dict], width: int = 420, height: int = 260) -> Image.Image:
    """Loss and accuracy per epoch, train and validation, side by side."""
    img = Image.new("RGB", (2 * width, height), "white")
    epochs = [r["epoch"] for r in history]
    def curve(key: str) -> list:
        return [r[key] for r in history]

    panels = [("Loss", [("train", curve("train_loss")), ("validation", curve("val_loss"))]),
              ("Accuracy", [("train", curve("train_acc")), ("validation", curve("val_acc"))])]
    for k, (title, series) in enumerate(panels):
        _plot(ImageDraw.Draw(img), (k * width, 0, width, height), title, epochs, series)
    return img


def reliability_image(calibration: dict, size: int = 300) -> Image.Image:
    """The reliability diagram before and after the temperature, side by side: in each confidence bin, the share
    of images that were right (bars) against the diagonal a calibrated model follows; each panel's expected
    calibration error in its title."""
    panels = [("before", calibration.get("diagram_before"), calibration.get("ece_before")),
              ("after (out of fold)", calibration.get("diagram_after"), calibration.get("ece_after"))]
    panels = [p for p in panels if p[1]]
    img = Image.new("RGB", (max(1, len(panels)) * (size + 20) + 20, size + 120), "white")
    d, font = ImageDraw.Draw(img), _font(12)
    for k, (name, bins, error) in enumerate(panels):  # (room on top: a page may lay its label over the picture)
        left, top = 60 + k * (size + 20), 70
        right, bottom = left + size - 50, top + size - 50
        d.rectangle([left, top, right, bottom], outline="#888")
        d.line([left, bottom, right, top], fill="#bbb", width=1)
        d.text((left, 42), f"{name}: calibration error {error:.3f}" if error is not None else name, fill="black",
               font=font)
        for b in bins:
            if not b["images"]:
                continue
            x0 = left + (right - left) * b["low"]
            x1 = left + (right - left) * b["high"]
            d.rectangle([x0 + 1, bottom - (bottom - top) * b["accuracy"], x1 - 1, bottom], fill="#1f77b4")
            y = bottom - (bottom - top) * b["confidence"]
            d.line([x0 + 1, y, x1 - 1, y], fill="#ff7f0e", width=2)
        for t in (0, 0.5, 1):
            d.text((left - 6, bottom - (bottom - top) * t), f"{t:g}", fill="#444", font=font, anchor="rm")
            d.text((left + (right - left) * t, bottom + 6), f"{t:g}", fill="#444", font=font, anchor="mt")
        d.text(((left + right) / 2, bottom + 24), "confidence", fill="#444", font=font, anchor="mm")
    d.text((10, size + 92), "bars: share right in each confidence bin; orange: the bin's mean confidence; grey: "
                            "perfect calibration", fill="#444", font=font)
    return img


def _plot(d: ImageDraw.ImageDraw, box, title: str, xs: list, series: list[tuple[str, list[float]]]) -> None:
    x0, y0, w, h = box
    font = _font(12)
    left, top, right, bottom = x0 + 50, y0 + 32, x0 + w - 15, y0 + h - 40
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)
    d.rectangle([left, top, right, bottom], outline="#888")
    d.text((left, y0 + 8), title, fill="black", font=font)
    for t in range(5):
        v = lo + (hi - lo) * t / 4
        y = bottom - (bottom - top) * t / 4
        d.line([left - 4, y, left, y], fill="#888")
        d.text((left - 6, y), f"{v:.2f}", fill="#444", font=font, anchor="rm")
    d.text(((left + right) / 2, bottom + 22), "epoch", fill="#444", font=font, anchor="mm")
    for x in sorted({x_lo, max(xs), *xs[::max(1, len(xs) // 5)]}):
        px = left + (right - left) * (x - x_lo) / (x_hi - x_lo)
        d.line([px, bottom, px, bottom + 4], fill="#888")
        d.text((px, bottom + 6), str(x), fill="#444", font=font, anchor="mt")
    for k, ((name, vs), colour) in enumerate(zip(series, ("#1f77b4", "#ff7f0e"))):
        lx = right - 170 + 90 * k  # legend, above the plot
        d.line([lx, y0 + 15, lx + 14, y0 + 15], fill=colour, width=3)
        d.text((lx + 18, y0 + 15), name, fill=colour, font=font, anchor="lm")
        pts = [(left + (right - left) * (x - x_lo) / (x_hi - x_lo), bottom - (bottom - top) * (v - lo) / (hi - lo))
               for x, v in zip(xs, vs) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow: fixed size
        return ImageFont.load_default()


def _short(label: str, n: int = 14) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


# ---------------------------------------------------------------------------
# card text
