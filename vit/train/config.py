"""What a run is asked to do: TrainConfig, its allowed ranges and their messages, in one place.

    config = TrainConfig(epochs=10).check()      # ConfigError names a setting out of range

What is left open is chosen by vit.train.recipe (from the data when training from scratch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from vit.models import DEFAULT_MODEL


class TrainError(RuntimeError):
    """Training failed; the message says why and what to try."""


@dataclass
class TrainConfig:
    # model
    model: str = DEFAULT_MODEL
    pretrained: bool = True
    weights: str | None = None
    img_size: int | None = None
    patch_size: int | None = None
    model_args: dict = field(default_factory=dict)
    # schedule
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    layer_decay: float | None = 0.75    # used when starting from pretrained weights
    early_stopping: int | None = 5      # epochs without a better validation result
    # regularisation and augmentation
    label_smoothing: float = 0.1
    crop_scale_min: float = 0.25
    crop_padding: int = 0               # > 0: pad by this many pixels and crop at random instead (small images)
    crop_pct: float | None = None       # validation's centre crop (None: the model's; 1.0: the whole image)
    progressive: bool = False           # grow the image size over the first epochs (patch size fixed)
    hflip: float = 0.5
    color_jitter: float = 0.4
    randaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float | None = None
    # mechanics
    clip_grad: float | None = 1.0
    grad_accum: int = 1
    grad_checkpointing: bool = False
    amp: bool = True                    # on GPU: bf16 where supported, else fp16 with a scaler
    seed: int = 0
    val_fraction: float = 0.2
    device: str = "auto"
    threads: int | None = None          # CPU threads for torch (None: torch's default)
    workers: int | None = None          # DataLoader workers (None: 0 on CPU, 4 on GPU)
    cache_max_bytes: int = 2 * 1024 ** 3
    data: str | None = None             # where the dataset came from (recorded, used by resume)
    recipe: list = field(default_factory=list)  # what vit.train.recipe chose and why, one line each (recorded)
    # frozen features (vit.data.features, vit.probe)
    quick: bool = False                 # the quick model: fit only the head, on the frozen features (seconds)
    lp_ft: bool = False                 # LP-FT: fine-tune from that fitted head instead of a random one
    probe_flip: bool = False            # the head also sees the mirror image of each training image
    # imbalanced classes (vit.train.recipe: "auto" balances from a largest/smallest class ratio of 3)
    class_balance: str = "auto"         # auto, on (recipe.BALANCE_BY), off; or how: sampling, weights (of the loss)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self) -> "TrainConfig":
        """Refuse a setting that cannot train (ConfigError saying which and the allowed range); whole
        numbers given as floats (10.0, from a form) become ints. Returns self."""
        for name, (lo, hi, kind, optional) in _RANGES.items():
            setattr(self, name, _checked_number(name, getattr(self, name), lo, hi, kind, optional))
        if not isinstance(self.model, str) or not self.model.strip() or len(self.model) > 200:
            raise ConfigError("Choose a model: a timm name such as vit_tiny_patch16_224, or hf-hub:user/repo.")
        if self.class_balance not in BALANCE_CHOICES:
            raise ConfigError(f"class_balance must be one of {', '.join(BALANCE_CHOICES)} (got "
                              f"{str(self.class_balance)[:40]!r}).")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda (got {str(self.device)[:40]!r}).")
        if self.patch_size and self.img_size and self.patch_size > self.img_size:
            raise ConfigError(f"The patch size ({self.patch_size}) is larger than the image size ({self.img_size}).")
        if (self.quick or self.lp_ft) and not (self.pretrained or self.weights):
            raise ConfigError(("A quick model fits only the head" if self.quick else "LP-FT first fits the head")
                              + " on the features of trained weights, and random weights have none worth "
                              "fitting. Start from pretrained weights, or from an earlier run's (in the app: "
                              "pick 'Start from your run' as the Model; on the command line: --weights RUN_DIR).")
        if not isinstance(self.model_args, dict):
            raise ConfigError("model_args must be a mapping of timm model arguments.")
        return self


BALANCE_CHOICES = ("auto", "on", "off", "weights", "sampling")


class ConfigError(ValueError):
    """A training setting is out of range; the message names it and what is allowed."""


# name: (lowest, highest, "int" or "float", None allowed). The one place these ranges live.
_RANGES = {
    "epochs": (1, 1000, "int", False), "batch_size": (1, 1024, "int", False),
    "lr": (1e-10, 1.0, "float", False), "min_lr": (0.0, 1.0, "float", False),
    "warmup_epochs": (0, 1000, "int", False), "weight_decay": (0.0, 10.0, "float", False),
    "layer_decay": (0.01, 1.0, "float", True), "early_stopping": (1, 1000, "int", True),
    "label_smoothing": (0.0, 0.5, "float", False), "crop_scale_min": (0.01, 1.0, "float", False),
    "hflip": (0.0, 1.0, "float", False), "color_jitter": (0.0, 2.0, "float", False),
    "mixup": (0.0, 10.0, "float", False), "cutmix": (0.0, 10.0, "float", False),
    "ema_decay": (0.5, 0.99999, "float", True), "clip_grad": (1e-6, 1e6, "float", True),
    "grad_accum": (1, 1024, "int", False), "seed": (0, 2 ** 32 - 1, "int", False),
    "val_fraction": (0.0, 0.9, "float", False), "img_size": (16, 1024, "int", True),
    "patch_size": (1, 256, "int", True), "threads": (1, 1024, "int", True), "workers": (0, 64, "int", True),
    "cache_max_bytes": (0, 2 ** 40, "int", False), "crop_padding": (0, 256, "int", False),
    "crop_pct": (0.1, 1.0, "float", True),
}


OFF_AT_ZERO = ("early_stopping", "ema_decay", "layer_decay")  # 0 in a form or a flag turns these off


def zero_means_off(settings: dict) -> dict:
    """Settings as the user typed them, with 0 meaning "off" (None) for the settings that can be off."""
    return {k: None if k in OFF_AT_ZERO and v == 0 and not isinstance(v, bool) else v for k, v in settings.items()}


_TITLES = {"epochs": "Epochs", "batch_size": "Batch size", "lr": "Learning rate", "img_size": "Image size",
           "seed": "Seed", "val_fraction": "Validation fraction", "weight_decay": "Weight decay",
           "label_smoothing": "Label smoothing", "warmup_epochs": "Warm-up epochs",
           "early_stopping": "Early stopping patience", "ema_decay": "EMA decay", "mixup": "Mixup alpha",
           "cutmix": "CutMix alpha"}


def _checked_number(name: str, value, lo, hi, kind: str, optional: bool):
    label = f"{_TITLES.get(name, name.replace('_', ' ').capitalize())} ({name})"
    if value is None or value == "":
        if optional:
            return None
        raise ConfigError(f"{label} is missing: give a number from {lo:g} to {hi:g}.")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{label} must be a number from {lo:g} to {hi:g} (got {str(value)[:40]!r}).") from None
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a number from {lo:g} to {hi:g} (got {value}).")
    if kind == "int":
        if value != int(value):
            raise ConfigError(f"{label} must be a whole number from {lo:g} to {hi:g} (got {value:g}).")
        value = int(value)
    if not lo <= value <= hi:
        raise ConfigError(f"{label} must be from {lo:g} to {hi:g} (got {value:g}).")
    return value if kind == "int" else float(value)
