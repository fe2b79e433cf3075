"""The images as the model sees them: timm's transforms (training and validation), progressive sizes, and the
datasets over the decode cache."""
from __future__ import annotations

import contextlib
import random

import numpy as np
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


class TrainImages(Images):
    """The training images, indexed by (position, image size, epoch) (EpochSampler's items). Each image's random
    augmentation is drawn from a seed of its own, (run seed, epoch, image): it does not depend on which process
    prepares it, nor in what order, so a data worker changes nothing and a resumed run sees the same images as an
    uninterrupted one. The image size (None: the model's) may change from epoch to epoch (progressive resizing)."""

    def __init__(self, cache: DecodeCache, indices: list[int], labels: list[int], config: TrainConfig, dcfg: dict):
        super().__init__(cache, indices, labels, None)
        self.config, self.dcfg = config, dcfg
        self._transforms: dict[int | None, object] = {}  # image size -> timm's training transform at that size

    def __getitem__(self, key: tuple[int, int | None, int]):
        k, size, epoch = key
        i = self.indices[k]
        if size not in self._transforms:
            self._transforms[size] = train_transform(self.config, self.dcfg, size)
        with _seeded(seed_of(self.config.seed, epoch, i)):
            return self._transforms[size](self.cache.pil(i)), self.labels[i]


class EpochSampler(torch.utils.data.Sampler):
    """An epoch's order of the training images as (position, image size, epoch), for TrainImages. The order
    depends on (seed, epoch) only; under torchrun each process takes its shard (DistributedSampler's). With
    `weights` (one per image; class-balanced sampling, single process) an epoch draws n images by them. The
    loader keeps its workers from epoch to epoch: set_epoch tells it the next one."""

    def __init__(self, n: int, seed: int, shard: torch.utils.data.DistributedSampler | None = None,
                 weights: torch.Tensor | None = None):
        self.n, self.seed, self.shard, self.weights = n, seed, shard, weights
        self.epoch, self.size = 0, None

    def set_epoch(self, epoch: int, size: int | None = None) -> None:
        self.epoch, self.size = epoch, size
        if self.shard is not None:
            self.shard.set_epoch(epoch)

    def __iter__(self):
        if self.shard is not None:
            order = list(self.shard)
        else:
            generator = torch.Generator()
            generator.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = (torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()
                     if self.weights is not None else torch.randperm(self.n, generator=generator).tolist())
        return iter([(k, self.size, self.epoch) for k in order])

    def __len__(self) -> int:
        return len(self.shard) if self.shard is not None else self.n


def seed_of(*parts: int) -> int:
    """A seed for what (run seed, epoch, image or step) names: the same in every process and on every run (a
    tuple of ints hashes alike everywhere), within NumPy's 32 bits."""
    return hash(parts) & 0xFFFFFFFF


@contextlib.contextmanager
def _seeded(seed: int):
    """Python's, NumPy's and torch's random numbers drawn from `seed` meanwhile; their streams as they were after."""
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


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
    if not patch:  # a CNN: sizes in steps of its reduction (32 for most)
        info = getattr(model, "feature_info", None)
        reduction = info[-1].get("reduction") if isinstance(info, list) and info else None
        if not reduction:
            raise TrainError("Progressive resizing needs a ViT or a CNN whose reduction is known; turn it off for "
                             "this model.")
        return int(reduction)
    return patch[0] if isinstance(patch, (tuple, list)) else int(patch)


def train_transform(config: TrainConfig, dcfg: dict, size: int | None = None):
    """timm's training transform at `size` (default: the model's), or for crop_padding > 0 the small-image
    one: pad and crop at random (the object is never cut away), flip. Both give uint8 tensors, as timm's do for
    its prefetcher: colour jitter and normalisation follow, for the whole batch at once (BatchAugment)."""
    from timm.data import create_transform
    size = size or dcfg["input_size"][-1]
    if config.crop_padding:
        from torchvision import transforms as T
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                 T.RandomCrop(size, padding=max(1, config.crop_padding * size // dcfg["input_size"][-1]),
                              pad_if_needed=True, padding_mode="reflect")]
        if config.hflip:
            steps.append(T.RandomHorizontalFlip(config.hflip))
        return T.Compose(steps + [T.PILToTensor()])
    return create_transform(
        input_size=(3, size, size), is_training=True, scale=(config.crop_scale_min, 1.0), hflip=config.hflip,
        color_jitter=None, auto_augment="rand-m9-mstd0.5-inc1" if config.randaugment else None,
        interpolation=dcfg.get("interpolation", "bicubic"), mean=dcfg["mean"], std=dcfg["std"], use_prefetcher=True)


GREY = (0.299, 0.587, 0.114)  # PIL's "L" conversion, the grey of ImageEnhance's contrast and saturation


class BatchAugment:
    """The training batch (uint8, from train_transform) on the device: timm's colour jitter, then the model's
    normalisation. Colour jitter (brightness, contrast, saturation, each factor uniform in [1 - j, 1 + j], in an
    order drawn per image, as torchvision's ColorJitter does) is linear in the pixels, so one image's is one 3x3
    matrix and an offset (jitter_affine), and the batch's one batched product: PIL's ImageEnhance, image by image,
    cost about 3% of a training step on 2 cores (bench/train_bench.py). Values are clipped once, at the end,
    where PIL clips after each step. As in timm, there is no colour jitter under RandAugment. The factors come
    from (seed, epoch, step): a resumed run draws the same."""

    def __init__(self, config: TrainConfig, dcfg: dict, device: torch.device):
        self.jitter = 0.0 if config.randaugment else float(config.color_jitter or 0.0)
        self.seed = config.seed
        self.mean = torch.tensor(dcfg["mean"], device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(dcfg["std"], device=device).view(1, -1, 1, 1) * 255

    def __call__(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        x = x.float()
        if self.jitter and x.shape[1] == 3:
            n, c, h, w = x.shape
            factors, orders = self.draw(n, epoch, step)
            grey = x.mean(dim=(2, 3)).cpu() @ torch.tensor(GREY)
            affine = [jitter_affine(float(grey[i]), factors[i].tolist(), orders[i]) for i in range(n)]
            matrix = torch.stack([a for a, _ in affine]).to(x.device)
            offset = torch.stack([o for _, o in affine]).to(x.device)
            x = torch.baddbmm(offset.unsqueeze(-1), matrix, x.view(n, c, h * w)).view(n, c, h, w).clamp_(0, 255)
        return x.sub_(self.mean).div_(self.std)

    def draw(self, n: int, epoch: int, step: int) -> tuple[torch.Tensor, list[list[int]]]:
        """The colour jitter of a batch of n images: each image's (brightness, contrast, saturation) factors, [n, 3],
        and the order it applies them in, drawn from (seed, epoch, step)."""
        generator = torch.Generator().manual_seed(seed_of(self.seed, epoch, step))
        factors = torch.empty(n, 3).uniform_(max(0.0, 1 - self.jitter), 1 + self.jitter, generator=generator)
        return factors, [torch.randperm(3, generator=generator).tolist() for _ in range(n)]


def jitter_affine(grey_mean: float, factors: list[float], order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Brightness, contrast and saturation (factors[0], [1], [2]) applied in `order` to an RGB image whose mean
    grey is `grey_mean`, as one map x -> A x + o of its pixels. Brightness scales (and so scales the mean grey);
    contrast blends with the mean grey, saturation with each pixel's grey (neither changes the mean grey)."""
    a, o, mean = torch.eye(3), torch.zeros(3), grey_mean
    to_grey = torch.ones(3, 1) @ torch.tensor([GREY])  # each channel becomes the pixel's grey
    for op in order:
        f = factors[op]
        if op == 0:
            a, o, mean = f * a, f * o, f * mean
        elif op == 1:
            a, o = f * a, f * o + (1 - f) * mean
        else:
            blend = f * torch.eye(3) + (1 - f) * to_grey
            a, o = blend @ a, blend @ o
    return a, o


def export_data_config(dcfg: dict) -> dict:
    return {k: dcfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in dcfg}
