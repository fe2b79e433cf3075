"""The decode cache: training images decoded once into memory (uint8, height x width x channels, the layout PIL
reads without reordering), within a memory cap."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from vit.data.images import read_rgb
from vit.data.model import Item, Limits, worker_count


class DecodeCache:
    """Decoded training images kept in memory as uint8 HWC tensors (`cache[i]` is their CHW view).

    Each image is decoded once and resized so its shorter side is
    `short_side` (never upscaled), or, given `decode`, kept as decode(path)
    gives it (the eval cache keeps vit.data.pixels' crop of each image).
    Images beyond `max_bytes` are not kept and are decoded from disk when
    asked for, so a large dataset still trains.
    """

    def __init__(self, items: Sequence[Item] | Sequence[str | os.PathLike], *, short_side: int = 256,
                 max_bytes: int = 2 * 1024 ** 3, limits: Limits | None = None,
                 decode: Callable[[Path], Image.Image] | None = None):
        self.paths = [Path(i.path) if isinstance(i, Item) else Path(i) for i in items]
        self.short_side = short_side
        self.max_bytes = max_bytes
        self.limits = limits or Limits()
        self.decode = decode
        self.nbytes = 0
        self._images: list = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def cached(self) -> int:
        return sum(t is not None for t in self._images)

    def fill(self, workers: int | None = None, progress: Callable[[int, int], None] | None = None,
             indices: Sequence[int] | None = None) -> "DecodeCache":
        """Decode every image (or those of `indices`) not yet cached, until the memory cap is reached."""
        todo = [i for i in (range(len(self)) if indices is None else indices) if self._images[i] is None]
        done = 0
        with ThreadPoolExecutor(max_workers=worker_count(workers)) as pool:
            for i, tensor in zip(todo, pool.map(self._decode, todo)):
                self._keep(i, tensor)
                done += 1
                if progress:
                    progress(done, len(todo))
        return self

    def __getitem__(self, i: int):
        """The image as a uint8 CHW tensor (a view of the cached one)."""
        return self._hwc(i).permute(2, 0, 1)

    def pil(self, i: int) -> Image.Image:
        """The cached image as a PIL image (for PIL-based transforms): one copy, no reordering."""
        return Image.fromarray(self._hwc(i).numpy())

    def _hwc(self, i: int):
        tensor = self._images[i]
        if tensor is None:
            tensor = self._decode(i)
            self._keep(i, tensor)
        return tensor

    def _decode(self, i: int):
        import torch

        if self.decode is not None:
            return torch.from_numpy(np.asarray(self.decode(self.paths[i])).copy())
        img, _, _ = read_rgb(self.paths[i], limits=self.limits, draft_side=self.short_side)
        w, h = img.size
        if min(w, h) > self.short_side:
            scale = self.short_side / min(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR,
                             reducing_gap=None)
        return torch.from_numpy(np.asarray(img).copy())

    def _keep(self, i: int, tensor) -> None:
        size = tensor.numel()
        with self._lock:
            if self._images[i] is None and self.nbytes + size <= self.max_bytes:
                self._images[i] = tensor
                self.nbytes += size


# ---------------------------------------------------------------------------
# Helpers: reading sources into (name, path) entries
