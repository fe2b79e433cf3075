"""The one place that decides how a run trains, for the app and the command line alike.

    config = recipe.choose(TrainConfig(pretrained=False), DataFacts.of(dataset), given={"epochs"})
    print("\\n".join(config.recipe))    # every choice, and why

The user's settings always win: `given` names the ones they set. What they leave open follows the start:
pretrained weights keep the fine-tuning recipe (TrainConfig's defaults) and start it with LP-FT (the head
fitted on the frozen features first, bench/probe_bench.py); random weights ("from scratch")
get a recipe chosen from the data, because the fine-tuning one (lr 1e-4, crops down to a quarter of the
image, 224-pixel inputs, a 12-block model) barely learns from a few hundred images:

- the image size is the images' own typical size, never enlarged, at most 32 px (64 px from 5,000 images);
- the patch size gives a 4x4 grid of tokens (8x8 from 5,000 images): with a few thousand images, fewer and
  larger tokens learn much faster (the sample shapes: 96% against 71% at the same 20 epochs);
- a small model (96 wide, 6 blocks; 192 wide, 8 blocks from 5,000 images; a larger one from random
  weights overfits a few hundred images and is slower) whose head takes the strongest feature of any
  patch (global max pooling, no class token): it learns far sooner than one reading a class token (the
  sample shapes: 97% by epoch 10 against under 70%; drawn digits: 90% against 51% in 20 epochs);
- AdamW at lr 1e-3 for a batch of 32 (scaled with the batch size), warm-up then cosine, label smoothing;
- augmentation that keeps the object: inputs of 32 px or less are padded and cropped at random, larger
  ones cropped to no less than 70% of the image; no flips for grey images (digits, scans, X-rays have a
  handedness); validation keeps the centre square, no further crop;
- progressive resizing on a grid of 8x8 tokens or more (a 4x4 grid has nothing to shrink);
- enough epochs for about 200 updates per class (600 to 4,000 in all, at least 15 epochs: ten digits
  need three times the updates of three shapes), no early stopping (accuracy climbs late from random
  weights, and the cosine schedule needs its last epochs).

A CNN (resnet, convnext, efficientnet, ...; any timm model other than its VisionTransformer) keeps the schedule and
the augmentation, is built as timm builds it (no patch size, none of the ViT's shape) and gets inputs of at least
64 px (its 32x reduction leaves a 2x2 map), at most 128 (160 from 5,000 images).

`student` chooses the smaller model a finished run is distilled into (the Train tab's one click).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Iterable

from vit import figures
from vit.data.report import IMBALANCE_WARN_RATIO
from vit.models import architecture, built_text
from vit.train.config import TrainConfig

LARGE = 5000            # training images from which a from-scratch run gets a larger model and token grid
UPDATES_PER_CLASS = 200  # optimizer updates a from-scratch run aims for, per class (within UPDATES_RANGE)
UPDATES_RANGE = (600, 4000)
MIN_EPOCHS = 15
BASE_LR, BASE_BATCH = 1e-3, 32
LP_FT_NOTE = ("LP-FT: the new head is first fitted on the frozen features (seconds), then the whole model is "
              "fine-tuned from it instead of from a random head, which distorts the pretrained features less "
              f"(Kumar et al., 2022; {figures.LP_FT.bench}: {figures.LP_FT.text}).")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"}


BALANCE_FROM = IMBALANCE_WARN_RATIO  # the largest class's training images over the smallest's: "auto" balances
BALANCE_BY = "sampling"  # what balancing does (bench/trust_bench.py, glyphs at 10:1, balanced accuracy over two
                        # seeds: sampling 95.2%, loss weights 93.4%, neither 88.0%)


@dataclass(frozen=True)
class DataFacts:
    """What the recipe reads from a dataset."""
    train_images: int
    classes: int
    side: int               # the typical (median) shorter side of the images, in pixels
    grayscale: bool = False  # most images are grey (scans, documents, X-rays)
    imbalance: float = 1.0   # the largest class's training images over the smallest's

    @classmethod
    def of(cls, dataset) -> "DataFacts":
        """The facts of a vit.data.Dataset (its training split, its images' sizes and colour modes)."""
        sides = [min(it.width, it.height) for it in dataset.items] or [224]
        grey = sum(it.mode in GREY_MODES for it in dataset.items)
        counts = class_counts(dataset)
        return cls(len(dataset.train), len(dataset.classes), int(statistics.median(sides)),
                   grey > len(dataset.items) / 2, max(counts) / min(counts) if counts and min(counts) else 1.0)

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataFacts | None":
        try:
            return cls(int(d["train_images"]), int(d["classes"]), int(d["side"]), bool(d.get("grayscale")),
                       float(d.get("imbalance") or 1.0))
        except (TypeError, KeyError, ValueError):
            return None

    def to_dict(self) -> dict:
        return asdict(self)


def choose(config: TrainConfig, facts: DataFacts | None, given: Iterable[str] = ()) -> TrainConfig:
    """A copy of `config` with what the user left open decided, and config.recipe saying what and why.
    `facts` None (no dataset yet) assumes a few hundred 224-pixel images, and says so."""
    given = set(given)
    config = replace(config, model_args=dict(config.model_args), recipe=[])
    balance = _balance(config, facts, given) + _distill(config, given)
    if config.pretrained or config.weights:  # fine-tuning: TrainConfig's defaults are its recipe, with LP-FT
        if "lp_ft" not in given and not config.quick:
            config.lp_ft = True
            config.recipe = [LP_FT_NOTE]
        config.recipe += balance
        return config
    notes = [] if facts else ["No dataset yet: the choices below assume a few hundred 224-pixel images."]
    facts = facts or DataFacts(train_images=400, classes=2, side=224)
    large = facts.train_images >= LARGE
    arch = architecture(config.model)
    picked = _from_scratch(config, facts, large, given) if arch.vit else _cnn_from_scratch(config, facts, large,
                                                                                           given, arch)
    for name, (value, why) in picked.items():
        if name not in given:
            setattr(config, name, value)
            if why:
                notes.append(why)
    config.recipe = notes + balance
    return config.check()


STUDENT_PRETRAINED = "deit_tiny_distilled_patch16_224.fb_in1k"  # DeiT's own student: a token for the teacher


@dataclass(frozen=True)
class Student:
    """A smaller model to distil a finished run into: its config (the teacher, seed and validation fraction set:
    the same images held out), the settings it fixes (the rest is the recipe's) and why it was chosen."""
    config: TrainConfig
    given: frozenset
    why: str


def student(teacher_dir: str, record: dict, pretrained_ok: bool) -> Student:
    """The student of a finished run (`record`: its config.json's training record): DeiT-Tiny with a distillation
    token, pretrained, for a teacher fine-tuned from pretrained weights and larger than it (when the weights can be
    had); else the from-scratch recipe's ViT when it is under half the teacher's size; else a ViT of half its width
    and fewer blocks. TrainError when the teacher is already as small as that."""
    from vit.train.config import TrainError
    from vit.models import DEFAULT_MODEL, catalog_entry
    built = record.get("built") or {}
    params = int(built.get("params") or 0)
    base = dict(teacher=str(teacher_dir), seed=int(record.get("seed", 0)),
                val_fraction=float(record.get("val_fraction", 0.2)))
    fixed = frozenset({"seed", "val_fraction"})
    tiny = catalog_entry(STUDENT_PRETRAINED)
    if (record.get("pretrained") or record.get("weights")) and pretrained_ok and params > tiny.params_m * 1.2e6:
        return Student(TrainConfig(model=STUDENT_PRETRAINED, **base), fixed,
                       f"{tiny.title}, pretrained ({tiny.params_m:g}M parameters against the teacher's "
                       f"{params / 1e6:.1f}M): DeiT's own student, whose distillation token learns from the teacher.")
    width, depth, shown = built.get("width"), built.get("depth"), built_text(built, weights=False)
    recipe_vit = 96 * 96 * 12 * 6  # (about the from-scratch recipe's ViT for small data: 0.7M parameters)
    if built.get("kind") != "ViT" and params <= 2 * recipe_vit:
        raise TrainError(f"This run's model ({shown}) is already smaller than the students the app makes.")
    if built.get("kind") != "ViT" or not width or not depth or params > 2 * recipe_vit:
        return Student(TrainConfig(model=DEFAULT_MODEL, pretrained=False, **base), fixed,
                       f"the from-scratch recipe's ViT (about 0.7M parameters, chosen for the data) against the "
                       f"teacher's {params / 1e6:.2f}M" + ("" if pretrained_ok or not record.get("pretrained") else
                                                          "; pretrained weights cannot be downloaded here"))
    if width < 64:
        raise TrainError(f"This run's model ({shown}) is already as small as the students the app makes; distil a "
                         "larger run into it instead.")
    heads = built.get("heads") or 3
    half = max(heads * 8, width // 2 // heads * heads)
    args = {"embed_dim": half, "depth": max(2, depth - 2), "num_heads": heads, "class_token": False,
            "global_pool": "max"}
    config = TrainConfig(model=DEFAULT_MODEL, pretrained=False, model_args=args, **base)
    return Student(config, fixed | {"model_args"},
                   f"a ViT of half the teacher's width and fewer blocks ({half} wide, {args['depth']} blocks) against "
                   f"the teacher's {width} wide, {depth} blocks")


def distill_mode(config: TrainConfig) -> str:
    """With a teacher: DeiT's hard distillation when fine-tuning trained weights; soft from scratch, where a few
    hundred images leave the student weakest and the teacher's probabilities teach it most (figures.DISTILL)."""
    return "hard" if config.pretrained or config.weights else "soft"


def _distill(config: TrainConfig, given: set[str]) -> list[str]:
    """The distillation mode left open ("auto") of a run with a teacher, decided; the line says why."""
    if config.distill != "auto" or not config.teacher or config.quick:  # (set by the user, or nothing to decide)
        return []
    config.distill = distill_mode(config)
    if config.distill == "hard":
        return ["Hard distillation (DeiT's): the model learns half from the labels, half from the teacher's top class."]
    return [f"Soft distillation: from random weights on few images the teacher's probabilities teach more than its "
            f"top class ({figures.DISTILL.text}, {figures.DISTILL.bench})."]


def _balance(config: TrainConfig, facts: DataFacts | None, given: set[str]) -> list[str]:
    """Class balance: what the user set wins; else on from a BALANCE_FROM imbalance (the line says why)."""
    if "class_balance" in given and config.class_balance != "auto" or config.quick or facts is None:
        return []
    on = facts.imbalance >= BALANCE_FROM
    if on:
        config.class_balance = "on"
    return [f"Class-balanced sampling: the largest class has {facts.imbalance:.1f}x the training images of the "
            f"smallest (from {BALANCE_FROM:g}x), so each epoch draws every class about as often; otherwise the model "
            f"learns to favour the large classes ({figures.BALANCE.text}, {figures.BALANCE.bench})."] if on else []


def class_counts(dataset) -> list[int]:
    """Training images per class, in the dataset's class order."""
    index = {c: k for k, c in enumerate(dataset.classes)}
    counts = [0] * len(dataset.classes)
    for i in dataset.train:
        counts[index[dataset.items[i].label]] += 1
    return counts


def balancing(setting: str, counts: list[int]) -> str | None:
    """How a run balances its classes: None, "weights" or "sampling" ("auto" decides from the counts, for a
    run that did not go through choose)."""
    ratio = max(counts) / min(counts) if counts and min(counts) else 1.0
    mode = ("on" if ratio >= BALANCE_FROM else "off") if setting == "auto" else setting
    mode = BALANCE_BY if mode == "on" else mode
    return None if mode == "off" else mode


def class_weights(counts: list[int]) -> list[float]:
    """Each class's weight, in inverse proportion to its images, 1 on average over the images."""
    total, present = sum(counts), sum(1 for c in counts if c)
    return [total / (present * c) if c else 0.0 for c in counts]


def _from_scratch(config: TrainConfig, facts: DataFacts, large: bool, given: set[str]) -> dict:
    """Each setting of the from-scratch recipe: (value, why), in the order they are explained."""
    grid = 8 if large else 4
    img = config.img_size if "img_size" in given and config.img_size else _image_size(facts.side, large, grid)
    patch = config.patch_size if "patch_size" in given and config.patch_size else max(1, img // grid)
    width, depth, heads = (192, 8, 3) if large else (96, 6, 3)
    batch = config.batch_size if "batch_size" in given else (64 if large else BASE_BATCH)
    lr = BASE_LR * batch / BASE_BATCH
    updates_per_epoch = math.ceil(max(facts.train_images, 1) / batch)
    updates = min(max(UPDATES_PER_CLASS * facts.classes, UPDATES_RANGE[0]), UPDATES_RANGE[1])
    epochs = config.epochs if "epochs" in given else min(300, max(MIN_EPOCHS, math.ceil(updates / updates_per_epoch)))
    small = img <= 32
    size_why = (f"the images are typically {facts.side} px; from random weights small inputs learn fastest"
                if facts.side > img else f"the images' own size ({facts.side} px), not enlarged")
    return {
        "img_size": (img, f"Image size {img} px: {size_why}."),
        "patch_size": (patch, f"Patch size {patch}: a {img // patch}x{img // patch} grid of tokens; with "
                              f"{facts.train_images} training images, fewer and larger tokens learn faster."),
        "model_args": ({"embed_dim": width, "depth": depth, "num_heads": heads, "class_token": False,
                        "global_pool": "max"},
                       f"A small model ({width} wide, {depth} blocks, {heads} heads; a larger one overfits "
                       f"{facts.train_images} images) whose head takes the strongest feature of any patch (global "
                       "max pooling, no class token): it finds what marks a class wherever it lies, and learns "
                       f"far sooner ({figures.MAX_POOL.text})."),
        "batch_size": (batch, None),
        "lr": (lr, f"AdamW at lr {lr:g} for batch {batch} (random weights need about 10x fine-tuning's rate), "
                   "warm-up then cosine."),
        "epochs": (epochs, f"{epochs} epochs: about {epochs * updates_per_epoch} updates of batch {batch}, some "
                           f"{UPDATES_PER_CLASS} for each of the {facts.classes} classes (from random weights "
                           "accuracy comes late)."),
        "warmup_epochs": (max(1, round(epochs / 10)), None),
        "crop_padding": (max(1, img // 8) if small else 0,
                         f"Augmentation: pad {max(1, img // 8)} px and crop at random (nothing of the object is "
                         "cut away)." if small else None),
        "crop_scale_min": (0.7, None if small else "Augmentation: random crops of at least 70% of the image "
                                                   "(the object stays in view)."),
        "hflip": (0.0, "No flips: grey images (scans, digits, X-rays) often have a handedness that a mirror "
                       "image changes.") if facts.grayscale else (config.hflip, None),
        "crop_pct": (1.0, _crop_note(img)),
        "early_stopping": (None, "No early stopping: the cosine schedule needs its last epochs."),
        "progressive": (img // patch >= 8,
                        f"Progressive resizing: the first epochs train on smaller images, growing to {img} px "
                        f"({figures.PROGRESSIVE.text})."
                        if img // patch >= 8 else None),
    }


def _cnn_from_scratch(config: TrainConfig, facts: DataFacts, large: bool, given: set[str], arch) -> dict:
    """The from-scratch recipe for a CNN (or a transformer other than timm's ViT): the ViT recipe's schedule and
    augmentation, the network as timm builds it, and inputs large enough for its 32x reduction."""
    vit = _from_scratch(config, facts, large, given)
    img = config.img_size if "img_size" in given and config.img_size else _cnn_image_size(facts.side, large)
    small = facts.side <= 32
    size_why = (f"the images are typically {facts.side} px, enlarged: a CNN reduces its input 32x, and a smaller "
                "one ends in a 1x1 map" if img > facts.side else
                f"the images are typically {facts.side} px; from random weights small inputs learn fastest"
                if facts.side > img else f"the images' own size ({facts.side} px), not enlarged")
    picked = {**vit,
              "img_size": (img, f"Image size {img} px: {size_why}."),
              "patch_size": (None, None),
              "model_args": ({}, f"{config.model} as timm builds it, from random weights (a {arch.kind}: no patch "
                                 "size, and none of the ViT recipe's shape)."),
              "crop_padding": (max(1, img // 8) if small else 0,
                               f"Augmentation: pad {max(1, img // 8)} px and crop at random (nothing of the object "
                               "is cut away)." if small else None),
              "crop_scale_min": (0.7, None if small else "Augmentation: random crops of at least 70% of the image "
                                                         "(the object stays in view)."),
              "crop_pct": (1.0, _crop_note(img)),
              "progressive": (False, None)}
    return {k: picked[k] for k in vit}  # (the ViT recipe's order of explanation)


def _crop_note(img: int) -> str:
    return (f"Validation and Classify resize the shorter side to {img} px and keep the centre square, with no further "
            "crop (an oblong image loses its two ends: Classify outlines what is seen).")


def _cnn_image_size(side: int, large: bool) -> int:
    """The images' own size, but at least 64 px (a 2x2 map after a CNN's 32x reduction) and at most 128 (160 for
    large data), a multiple of 32."""
    size = min(max(side, 64), 160 if large else 128)
    return size // 32 * 32


def _image_size(side: int, large: bool, grid: int) -> int:
    """The images' own size, never enlarged (but at least 16), at most 32 px (64 for large data), a whole
    number of grid cells."""
    size = min(max(side, 16), 64 if large else 32)
    return max(16, size // grid * grid)
