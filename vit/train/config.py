"""What a run is asked to do: TrainConfig, and each of its settings described once, in one place.

    config = TrainConfig(epochs=10).check()      # ConfigError names a setting out of range

Each field carries a `Setting` (its metadata): the title and allowed range that validation messages use, the help
text, the command-line flag, the group of the app's Train form it appears in, whether the recipe chooses it when it
is left open, and its label in the model card's table. The CLI parser (vit.cli), the Train form and its API names
(vit.ui.train_tab), the validation below and the card (vit.hub.card) are all made from it: adding a setting is
one field here and its use in the engine (README, "Adding a setting").

What is left open is chosen by vit.train.recipe (from the data when training from scratch).
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from vit.models import DEFAULT_MODEL


class TrainError(RuntimeError):
    """Training failed; the message says why and what to try."""


@dataclass(frozen=True)
class Setting:
    """What the rest of the code knows about one TrainConfig field.

    title       its name in words (validation messages, the form's label unless `label` says otherwise)
    lo, hi      the allowed range of a number; `kind` "int" or "float" (None: not a number)
    optional    None is allowed (the setting is off, or the model's own value is used)
    off_at_zero 0 typed in a form or a flag means None (off)
    help        one line: the CLI's help and the form's hint
    flag        the command-line flag ("" for none; default --the-name)
    form        "main" or "advanced": where it appears in the app's Train form ("" for not there)
    auto        the recipe chooses it when it is left open: the form shows an empty "auto" field, the flag has
                no default (a bool becomes auto/on/off)
    choices     the values a form or a flag offers (text settings)
    card        its label in the model card's settings table ("" for not there); `quick`: shown for a quick
                model too (it was used there)
    """
    title: str = ""
    lo: float | None = None
    hi: float | None = None
    kind: str | None = None
    optional: bool = False
    off_at_zero: bool = False
    help: str = ""
    flag: str | None = None
    form: str = ""
    auto: bool = False
    choices: tuple = ()
    card: str = ""
    quick: bool = False
    label: str = ""


def setting(default=MISSING, *, factory=MISSING, **about) -> Any:
    """A TrainConfig field with its Setting."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"setting": Setting(**about)})
    return field(default=default, metadata={"setting": Setting(**about)})


def _num(lo, hi, kind="float", **about) -> dict:
    return dict(lo=lo, hi=hi, kind=kind, **about)


@dataclass
class TrainConfig:
    # model
    model: str = setting(DEFAULT_MODEL, title="Model", help="a timm name, hf-hub:user/repo or local-dir:PATH",
                         card="model", quick=True)
    pretrained: bool = setting(True, title="Pretrained weights", flag="--no-pretrained",
                               help="random init: train from scratch", card="pretrained weights", quick=True)
    weights: str | None = setting(None, title="Weights",
                                  help="weights to start from: a file, a timm-format folder or a run directory")
    img_size: int | None = setting(None, **_num(16, 1024, "int", optional=True), title="Image size", auto=True,
                                   form="main", label="Image size (px)", card="image size", quick=True,
                                   help="input size (default: the model's when fine-tuning, chosen from the "
                                        "images' size from scratch)")
    patch_size: int | None = setting(None, **_num(1, 256, "int", optional=True), title="Patch size", auto=True,
                                     card="patch size", quick=True,
                                     help="patch size (default: the model's when fine-tuning; from scratch, a 4x4 "
                                          "grid of tokens, 8x8 from 5,000 images)")
    model_args: dict = setting(factory=dict, title="Model arguments", flag="", card="model arguments", quick=True)
    # schedule
    epochs: int = setting(10, **_num(1, 1000, "int"), title="Epochs", auto=True, form="main", card="epochs (max)")
    batch_size: int = setting(32, **_num(1, 1024, "int"), title="Batch size", auto=True, form="main",
                              card="batch size")
    lr: float = setting(1e-4, **_num(1e-10, 1.0), title="Learning rate", auto=True, form="main",
                        label="Learning rate (head)", card="learning rate (head)",
                        help="peak learning rate of the head")
    min_lr: float = setting(1e-6, **_num(0.0, 1.0), title="Minimum learning rate", flag="")
    warmup_epochs: int = setting(1, **_num(0, 1000, "int"), title="Warm-up epochs", auto=True, form="advanced")
    weight_decay: float = setting(0.05, **_num(0.0, 10.0), title="Weight decay", form="advanced",
                                  card="weight decay")
    layer_decay: float | None = setting(0.75, **_num(0.01, 1.0, optional=True, off_at_zero=True),
                                        title="Layer-wise lr decay", card="layer-wise lr decay",
                                        help="used when starting from trained weights (0 turns it off)")
    early_stopping: int | None = setting(5, **_num(1, 1000, "int", optional=True, off_at_zero=True),
                                         title="Early stopping patience", auto=True, form="advanced",
                                         label="Early stopping patience (0: off)",
                                         help="stop after this many epochs without a better validation result "
                                              "(0: never)")
    # regularisation and augmentation
    label_smoothing: float = setting(0.1, **_num(0.0, 0.5), title="Label smoothing", form="advanced",
                                     card="label smoothing")
    crop_scale_min: float = setting(0.25, **_num(0.01, 1.0), title="Random crop scale (min)", auto=True,
                                    card="random crop scale (min)",
                                    help="smallest random crop, as a fraction of the image")
    crop_padding: int = setting(0, **_num(0, 256, "int"), title="Crop padding", flag="",
                                help="> 0: pad by this many pixels and crop at random instead (small images)")
    crop_pct: float | None = setting(None, **_num(0.1, 1.0, optional=True), title="Validation crop", flag="",
                                     help="validation's centre crop (None: the model's; 1.0: the whole image)")
    progressive: bool = setting(False, title="Progressive resizing", auto=True, form="advanced",
                                card="progressive resizing",
                                help="train the first epochs on smaller images (faster), growing to the final size "
                                     "(patch size fixed)")
    hflip: float = setting(0.5, **_num(0.0, 1.0), title="Horizontal flip", flag="")
    color_jitter: float = setting(0.4, **_num(0.0, 2.0), title="Colour jitter", flag="")
    randaugment: bool = setting(False, title="RandAugment", form="advanced", card="RandAugment")
    mixup: float = setting(0.0, **_num(0.0, 10.0), title="Mixup alpha", form="advanced", card="mixup",
                           label="Mixup alpha (0: off)", help="mixup alpha (0: off)")
    cutmix: float = setting(0.0, **_num(0.0, 10.0), title="CutMix alpha", form="advanced", card="cutmix",
                            label="CutMix alpha (0: off)", help="cutmix alpha (0: off)")
    ema_decay: float | None = setting(None, **_num(0.5, 0.99999, optional=True, off_at_zero=True), title="EMA decay",
                                      flag="--ema", form="advanced", card="EMA decay", label="EMA decay (0: off)",
                                      help="keep an EMA of the weights with this decay (0: off)")
    # mechanics
    clip_grad: float | None = setting(1.0, **_num(1e-6, 1e6, optional=True), title="Gradient clipping", flag="")
    grad_accum: int = setting(1, **_num(1, 1024, "int"), title="Gradient accumulation",
                              help="add up the gradients of this many batches before each update")
    grad_checkpointing: bool = setting(False, title="Gradient checkpointing",
                                       help="recompute activations in the backward pass (less memory, slower)")
    amp: bool = setting(True, title="Mixed precision", flag="",
                        help="on GPU: bf16 where supported, else fp16 with a scaler")
    seed: int = setting(0, **_num(0, 2 ** 32 - 1, "int"), title="Seed", form="advanced", card="seed", quick=True)
    val_fraction: float = setting(0.2, **_num(0.0, 0.9), title="Validation fraction", form="advanced",
                                  help="the share of each class held out for validation (when no split is given)")
    device: str = setting("auto", title="Device", choices=("auto", "cpu", "cuda"), help="auto, cpu or cuda")
    threads: int | None = setting(None, **_num(1, 1024, "int", optional=True), title="Threads",
                                  help="CPU threads for torch (default: torch's)")
    workers: int | None = setting(None, **_num(0, 64, "int", optional=True), title="Workers",
                                  help="data loader workers (default 0 on CPU, 4 on GPU)")
    cache_max_bytes: int = setting(2 * 1024 ** 3, **_num(0, 2 ** 40, "int"), title="Decode cache size", flag="")
    data: str | None = setting(None, flag="")  # where the dataset came from (recorded, used by resume)
    recipe: list = setting(factory=list, flag="")  # what vit.train.recipe chose and why, one line each (recorded)
    # frozen features (vit.data.features, vit.probe)
    quick: bool = setting(False, title="Quick model",
                          help="the quick model: fit only the head on the frozen features of the starting weights "
                               "(pretrained, --weights or an earlier run): seconds instead of minutes")
    lp_ft: bool = setting(False, title="LP-FT", auto=True,
                          help="LP-FT: fine-tune from a head first fitted on the frozen features (default: on when "
                               "starting from trained weights)")
    probe_flip: bool = setting(False, title="Mirror images for the head",
                               help="the fitted head also sees each training image's mirror image (twice the "
                                    "features)")
    # distillation (vit.train.teacher)
    teacher: str | None = setting(None, title="Teacher",
                                  help="distil from a trained model of the same classes: a run directory, a "
                                       "timm-format folder or hf-hub:user/repo")
    distill: str = setting("auto", title="Distillation", choices=("auto", "hard", "soft"), form="advanced", auto=True,
                           help="with a teacher: hard (learn its top class as well as the label, DeiT's default) or "
                                "soft (its probabilities at a temperature); auto: hard when fine-tuning, soft from "
                                "scratch")
    distill_temperature: float = setting(3.0, **_num(0.1, 100.0), title="Distillation temperature", form="advanced",
                                         label="Temperature (soft distillation)",
                                         help="soft distillation's temperature")
    # imbalanced classes (vit.train.recipe: "auto" balances from a largest/smallest class ratio of 3)
    class_balance: str = setting("auto", title="Class balance", auto=True, form="advanced",
                                 choices=("auto", "on", "off"),
                                 help="draw each class about as often in training (auto: on when the largest class "
                                      "has 3x the images of the smallest)")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self) -> "TrainConfig":
        """Refuse a setting that cannot train (ConfigError saying which and the allowed range); whole
        numbers given as floats (10.0, from a form) become ints. Returns self."""
        for name, s in SETTINGS.items():
            if s.kind:
                setattr(self, name, _checked_number(name, getattr(self, name), s))
        if not isinstance(self.model, str) or not self.model.strip() or len(self.model) > 200:
            raise ConfigError("Choose a model: a timm name such as vit_tiny_patch16_224, or hf-hub:user/repo.")
        if self.class_balance not in BALANCE_CHOICES:
            raise ConfigError(f"class_balance must be one of {', '.join(BALANCE_CHOICES)} (got "
                              f"{str(self.class_balance)[:40]!r}).")
        if self.device not in SETTINGS["device"].choices:
            *some, last = SETTINGS["device"].choices
            raise ConfigError(f"device must be {', '.join(some)} or {last} (got {str(self.device)[:40]!r}).")
        if self.patch_size and self.img_size and self.patch_size > self.img_size:
            raise ConfigError(f"The patch size ({self.patch_size}) is larger than the image size ({self.img_size}).")
        if (self.quick or self.lp_ft) and not (self.pretrained or self.weights):
            raise ConfigError(("A quick model fits only the head" if self.quick else "LP-FT first fits the head")
                              + " on the features of trained weights, and random weights have none worth "
                              "fitting. Start from pretrained weights, or from an earlier run's (in the app: "
                              "pick 'Start from your run' as the Model; on the command line: --weights RUN_DIR).")
        if self.distill not in SETTINGS["distill"].choices:
            raise ConfigError(f"distill must be auto, hard or soft (got {str(self.distill)[:40]!r}).")
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher.strip()
                                         or len(self.teacher) > 1000):
            raise ConfigError("The teacher is a run directory, a timm-format folder or hf-hub:user/repo.")
        if self.teacher and self.quick:
            raise ConfigError("A quick model fits only a head on frozen features, so there is nothing for a teacher "
                              "to teach. Train the model (untick Quick model) to distil from a teacher.")
        if not isinstance(self.model_args, dict):
            raise ConfigError("model_args must be a mapping of timm model arguments.")
        return self


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(TrainConfig)}
DEFAULTS: dict = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def in_form(group: str) -> tuple[str, ...]:
    """The settings of a group of the Train form ("main", "advanced"), in TrainConfig's order."""
    return tuple(name for name, s in SETTINGS.items() if s.form == group)


BALANCE_CHOICES = ("auto", "on", "off", "weights", "sampling")


class ConfigError(ValueError):
    """A training setting is out of range; the message names it and what is allowed."""


def zero_means_off(settings: dict) -> dict:
    """Settings as the user typed them, with 0 meaning "off" (None) for the settings that can be off."""
    return {k: None if k in SETTINGS and SETTINGS[k].off_at_zero and v == 0 and not isinstance(v, bool) else v
            for k, v in settings.items()}


def _checked_number(name: str, value, s: Setting):
    lo, hi, kind = s.lo, s.hi, s.kind
    label = f"{s.title or name.replace('_', ' ').capitalize()} ({name})"
    if value is None or value == "":
        if s.optional:
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
