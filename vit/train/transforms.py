"""The images as the model sees them: timm's transforms (training and validation), progressive sizes, and the
dataset over the decode cache."""
from __future__ import annotations

import torch
from torch import nn

from vit.data import DecodeCache
from vit.train.config import TrainConfig, TrainError


class Images(torch.utils.data.Dataset):
    """Items of the decode cache, transformed for the model."""

    def __init__(self, cache: DecodeCache, indices: list[int], labels: list[int], transform):
        self.cache, self.indices, self.labels, self.transform = cache, list(indices), labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        return self.transform(self.cache.pil(i)), self.labels[i]


def progressive_sizes(final: int, patch: int, epochs: int) -> list[int]:
    """Progressive resizing: the training image size of each epoch. It starts at about half the final size
    (never below a 4x4 grid of patches: smaller ones learn next to nothing, so a 4x4 grid is not shrunk) and
    grows linearly, a whole number of patches at a time, to the final size at 60% of the epochs; the rest
    train at the final size. Patch size stays fixed: the token grid grows."""
    start = min(final, max(4 * patch, (final // 2) // patch * patch))
    ramp = max(1, round(0.6 * epochs))
    return [final if e >= ramp else min(final, (start + (final - start) * e // ramp) // patch * patch)
            for e in range(epochs)]


def patch_size_of(model: nn.Module) -> int:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if not patch:
        raise TrainError("Progressive resizing needs a ViT with a patch embedding; turn it off for this model.")
    return patch[0] if isinstance(patch, (tuple, list)) else int(patch)


def train_transform(config: TrainConfig, dcfg: dict, size: int | None = None):
    """timm's training transform at `size` (default: the model's), or for crop_padding > 0 the small-image
    one: pad and crop at random (the object is never cut away), flip, colour jitter."""
    from timm.data import create_transform
    size = size or dcfg["input_size"][-1]
    if config.crop_padding:
        from torchvision import transforms as T
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                 T.RandomCrop(size, padding=max(1, config.crop_padding * size // dcfg["input_size"][-1]),
                              pad_if_needed=True, padding_mode="reflect")]
        if config.hflip:
            steps.append(T.RandomHorizontalFlip(config.hflip))
        if config.color_jitter:
            steps.append(T.ColorJitter(*(config.color_jitter,) * 3))
        return T.Compose(steps + [T.ToTensor(), T.Normalize(dcfg["mean"], dcfg["std"])])
    return create_transform(
        input_size=(3, size, size), is_training=True, scale=(config.crop_scale_min, 1.0), hflip=config.hflip,
        color_jitter=config.color_jitter, auto_augment="rand-m9-mstd0.5-inc1" if config.randaugment else None,
        interpolation=dcfg.get("interpolation", "bicubic"), mean=dcfg["mean"], std=dcfg["std"])


def eval_transform(dcfg: dict):
    from timm.data import create_transform
    return create_transform(**dcfg, is_training=False)


def export_data_config(dcfg: dict) -> dict:
    return {k: dcfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in dcfg}
