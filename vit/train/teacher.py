"""Distillation from a teacher (DeiT, Touvron et al. 2021): a trained model whose answers the student learns from
as well as from the labels.

    teacher = load(source, dataset, config, dcfg, device)   # refuses a teacher of other classes, or one that
    loss = distillation_loss(base, logits_kd, teacher(x), "hard")  # trained on this run's held-out images

The teacher sees the student's own augmented batch: its pixels are taken back from the student's normalisation,
resized to the teacher's input size and normalised as the teacher was trained, so a 64-pixel CNN can teach a
32-pixel ViT. It runs in eval mode without gradients (under the student's autocast on a GPU).

- hard (DeiT's default): the student learns half from the true label and half from the teacher's top class;
- soft: the true label weighs 0.9, the teacher's probabilities at temperature T (3) 0.1, as in DeiT's soft runs.

A student with a distillation token (timm's deit_*_distilled_*) learns the teacher from that token's head and the
labels from the class token's, as in DeiT; at inference the two heads are averaged (timm's eval forward).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vit import runs
from vit.train.config import TrainError

WEIGHT = {"hard": 0.5, "soft": 0.1}  # the teacher's share of the loss (DeiT's paper: hard 1/2, soft lambda 0.1)


def distillation_loss(base: torch.Tensor, logits_kd: torch.Tensor, teacher_logits: torch.Tensor, mode: str,
                      temperature: float = 3.0) -> torch.Tensor:
    """The student's loss with a teacher: (1 - w) * base + w * the teacher's part, w = WEIGHT[mode]. `base` is the
    loss on the labels; `logits_kd` the student's logits that learn from the teacher (its distillation head, else
    its only head); hard: cross-entropy with the teacher's top class; soft: KL divergence to the teacher's
    probabilities, both at `temperature`, times T^2 (Hinton et al., 2015)."""
    teacher_logits = teacher_logits.detach().float()
    logits_kd = logits_kd.float()
    if mode == "hard":
        kd = nn.functional.cross_entropy(logits_kd, teacher_logits.argmax(1))
    elif mode == "soft":
        t = temperature
        kd = nn.functional.kl_div(nn.functional.log_softmax(logits_kd / t, 1),
                                  nn.functional.log_softmax(teacher_logits / t, 1),
                                  reduction="batchmean", log_target=True) * t * t
    else:
        raise TrainError(f"distill must be hard or soft (got {str(mode)[:20]!r}).")
    w = WEIGHT[mode]
    return (1 - w) * base + w * kd


class Teacher(nn.Module):
    """A trained model answering on the student's batches: the student's normalised pixels in, the teacher's
    logits out, in the order of the student's classes."""

    def __init__(self, model: nn.Module, teacher_dcfg: dict, student_dcfg: dict, order: list[int], mode: str = "hard",
                 temperature: float = 3.0):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.mode, self.temperature = mode, temperature
        self.size = tuple(teacher_dcfg["input_size"][-2:])

        def stat(d: dict, key: str) -> torch.Tensor:
            return torch.tensor(d[key], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("s_mean", stat(student_dcfg, "mean"), persistent=False)
        self.register_buffer("s_std", stat(student_dcfg, "std"), persistent=False)
        self.register_buffer("t_mean", stat(teacher_dcfg, "mean"), persistent=False)
        self.register_buffer("t_std", stat(teacher_dcfg, "std"), persistent=False)
        self.register_buffer("order", torch.tensor(order), persistent=False)

    def train(self, mode: bool = True) -> "Teacher":  # always in eval mode (batch norm, dropout)
        return super().train(False)

    def loss(self, base: torch.Tensor, logits_kd: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The student's loss on the batch x: `base` (the labels') with this teacher's part (distillation_loss)."""
        return distillation_loss(base, logits_kd, self(x), self.mode, self.temperature)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * self.s_std + self.s_mean
        if tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                                          antialias=x.shape[-1] > self.size[-1])
        x = ((x - self.t_mean) / self.t_std).to(next(self.model.parameters()).dtype)
        out = self.model(x)
        return out[:, self.order] if len(self.order) else out


@dataclass
class TeacherInfo:
    """What a run records of its teacher (config.json's `teacher_used`, the card, the plan line)."""
    source: str          # as given (a run's id for a run directory)
    model: str           # vit.models.built_text of the teacher
    mode: str = "hard"   # how it teaches: hard or soft
    val_acc: float | None = None  # its accuracy on the images the student's estimate uses (measured at the start)
    images: int = 0


def load(config, classes: list[str], held_out_sha: set[str], device: torch.device,
         student_dcfg: dict) -> tuple[Teacher, TeacherInfo]:
    """The teacher of a run's config (its source: a run directory, a timm-format folder or hf-hub:user/repo; its
    distillation mode and temperature) for a run of `classes`:
    TrainError when it cannot be loaded, its classes are not the dataset's, or it trained on images this run holds
    out (`held_out_sha`, the sha256 of its validation and test images): their answers would reach the student and
    its validation accuracy would overstate."""
    from vit import predict
    from vit.models import built, built_text
    source = config.teacher
    try:
        loaded = predict.load_model(source, device=str(device))
    except predict.PredictError as e:
        raise TrainError(f"The teacher cannot be loaded: {e}") from None
    order = class_order(loaded.labels, classes)
    seen = trained_on(loaded.folder) & held_out_sha
    if seen:
        record = runs.read_config(loaded.folder).get(runs.CONFIG_KEY) or {}
        split = (f" (the teacher's: seed {record['seed']}, validation fraction {record['val_fraction']})"
                 if "seed" in record and "val_fraction" in record else "")
        raise TrainError(
            f"The teacher trained on {len(seen)} of this run's validation or test images, so the student would learn "
            "their answers from it and its validation accuracy would overstate. Hold out the same images as the "
            f"teacher did: train on the same data with the same seed and validation fraction{split}.")
    name = Path(source).name if Path(source).is_dir() else source
    model = loaded.model
    info = TeacherInfo(source=str(name)[:200], model=built_text(built(model, None)), mode=mode_of(config))
    return Teacher(model, loaded.data_config, student_dcfg, order, mode_of(config),
                   config.distill_temperature).to(device), info


def mode_of(config) -> str:
    """hard or soft: the config's, or for "auto" (a run that did not go through vit.train.recipe.choose) the
    recipe's rule."""
    from vit.train.recipe import distill_mode
    return config.distill if config.distill in WEIGHT else distill_mode(config)


def said(teacher: Teacher, info: TeacherInfo) -> str:
    """The run's line on its teacher: what it is, its accuracy on this run's validation images, and how it
    teaches."""
    measured = (f"{info.val_acc:.1%} on the {info.images} held-out images this run's accuracy is estimated on"
                if info.val_acc is not None else "not measured (no held-out images)")
    return f"Teacher: {info.source} ({info.model}), {measured}; {plan_words(teacher.mode, teacher.temperature)}."


def distilling(config) -> str:
    """How the teacher of a run's config will teach, in words (the Train tab's plan)."""
    return plan_words(mode_of(config), config.distill_temperature)


def plan_words(mode: str, temperature: float) -> str:
    """How a teacher teaches, in words (the run's line, the Train tab's plan)."""
    return f"{mode} distillation (" + ("half from the labels, half from its top class)" if mode == "hard" else
                                       f"from its probabilities at temperature {temperature:g}, weight "
                                       f"{WEIGHT['soft']:g})")


def class_order(teacher_labels: list[str], classes: list[str]) -> list[int]:
    """For each of the dataset's classes, the teacher's output that answers it; TrainError naming the difference
    when the two sets of classes are not the same."""
    missing = [c for c in classes if c not in teacher_labels]
    extra = [c for c in teacher_labels if c not in classes]
    if missing or extra:
        said = "; ".join(part for part in (
            f"the dataset has {_names(missing)}, which the teacher does not know" if missing else "",
            f"the teacher answers {_names(extra)}, which the dataset does not have" if extra else "") if part)
        raise TrainError(f"The teacher's classes are not the dataset's: {said}. A teacher must answer exactly the "
                         f"dataset's classes ({_names(classes)}).")
    return [teacher_labels.index(c) for c in classes]


def _names(labels: list[str], most: int = 6) -> str:
    shown = ", ".join(repr(str(c)[:40]) for c in labels[:most])
    return shown + (f" and {len(labels) - most} more" if len(labels) > most else "")


def trained_on(folder: Path) -> set[str]:
    """The sha256 of the images a run trained on (its trained_on.txt; empty for a model that does not say)."""
    try:
        return set((Path(folder) / runs.TRAINED_ON).read_text().split())
    except (OSError, UnicodeDecodeError):
        return set()


@torch.no_grad()
def accuracy(teacher: Teacher, images, batch_size: int, device, autocast) -> float | None:
    """The teacher's accuracy on some of a run's held-out images (vit.train.transforms.Images: the student's
    pixels)."""
    if len(images) == 0:
        return None
    correct = 0
    for x, y in torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False):
        with autocast():
            correct += (teacher(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(images)
