"""The training engine: fit a timm ViT to a dataset and record everything in a run directory.

    result = train(dataset, TrainConfig(epochs=10), run_dir, on_event=print)

The recipe is the one that works for ViTs on small data: AdamW, layer-wise lr
decay (the new head learns fastest), warmup then cosine per update, label
smoothing, timm's augmentation, optional mixup/cutmix and EMA, gradient
clipping and accumulation, AMP on GPU, early stopping on validation. Batches
come from the in-memory decode cache. Runs are seeded and reproducible, and a
resumed run ends where an uninterrupted one would.

Under `torchrun --nproc_per_node N -m vit train ...` it trains with
DistributedDataParallel; only rank 0 writes the run directory.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vit import runs
from vit.data import Dataset, DecodeCache
from vit.models import DEFAULT_MODEL, ModelSpec, create_model, data_config


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
    recipe: list = field(default_factory=list)  # what vit.recipe chose and why, one line each (recorded)

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
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda (got {str(self.device)[:40]!r}).")
        if self.patch_size and self.img_size and self.patch_size > self.img_size:
            raise ConfigError(f"The patch size ({self.patch_size}) is larger than the image size ({self.img_size}).")
        if not isinstance(self.model_args, dict):
            raise ConfigError("model_args must be a mapping of timm model arguments.")
        return self


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


Event = dict
EventHandler = Callable[[Event], None]


def train(dataset: Dataset, config: TrainConfig | None, run_dir: str | os.PathLike, *,
          on_event: EventHandler | None = None, should_stop: Callable[[], bool] | None = None,
          resume: bool = False) -> dict:
    """Fit a model and return the final metrics (or, if cancelled, the state so far).

    `resume=True` continues from the run's last completed epoch with the run's
    own config. Raises TrainError (the run is marked failed, checkpoints kept).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ddp = _Distributed()
    emit = _Emitter(run_dir, on_event, ddp.is_main)
    if resume:
        state = runs.load_resume_state(run_dir)
        if state is None:
            raise TrainError(f"{run_dir} has no saved state (last.pt) to resume from; start a new run instead.")
        config = TrainConfig.from_dict(state["config"])
    elif config is None:
        raise TrainError("no training config given")
    else:
        try:
            config.check()
        except ConfigError as e:
            raise TrainError(str(e)) from None
    try:
        while True:
            try:
                return _fit(dataset, config, run_dir, emit, should_stop, resume, ddp)
            except torch.cuda.OutOfMemoryError:
                if config.batch_size <= 1:
                    raise TrainError("Out of GPU memory even at batch size 1. Use a smaller model or image size, "
                                     "or turn on gradient checkpointing.") from None
                torch.cuda.empty_cache()
                config.batch_size //= 2
                config.grad_accum *= 2
                resume = (run_dir / runs.RESUME).exists()
                emit.status("running", message=f"Out of GPU memory; retrying with batch size {config.batch_size} "
                                                f"x {config.grad_accum} accumulation steps (same effective batch).")
    except TrainError as e:
        emit.status("failed", message=str(e))
        raise
    except Exception as e:  # a dataset error, a bug, a full disk: the run records it and the caller sees it
        message = runs.DISK_FULL if runs.disk_full(e) else f"{type(e).__name__}: {e}"
        emit.status("failed", message=message)  # (on a full disk this write may fail too: the caller is told)
        raise TrainError(f"Training failed: {message}") from e
    finally:
        ddp.close()


def _fit(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: "_Emitter",
         should_stop: Callable[[], bool] | None, resume: bool, ddp: "_Distributed") -> dict:
    device = ddp.device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed + ddp.rank)
    classes = dataset.classes
    if not dataset.report.ok:
        raise TrainError("The dataset cannot be trained on: " + " ".join(dataset.report.errors))
    if ddp.is_main and not resume:
        runs.write_json(run_dir / runs.DATA_REPORT, runs.public_report(dataset.report.to_dict()))

    # model (a resumed run is rebuilt from its own config.json: no download, same architecture)
    resizing = {"dynamic_img_size": True} if config.progressive else {}  # smaller inputs, pos. embeddings resampled
    if resume:
        spec = ModelSpec(f"local-dir:{run_dir}", pretrained=False, model_args=resizing)
    else:
        spec = ModelSpec(config.model, pretrained=config.pretrained, weights=config.weights,
                         img_size=config.img_size, patch_size=config.patch_size,
                         model_args={**config.model_args, **resizing})
    for line in ([] if resume else config.recipe):
        emit.event(type="recipe", text=line)
    emit.status("running", message="Creating the model", epoch=0, epochs=config.epochs, **runs.process_identity())
    model = create_model(spec, num_classes=len(classes))
    dcfg = data_config(model)
    if config.crop_pct:
        dcfg["crop_pct"] = config.crop_pct
    img_size = dcfg["input_size"][-1]
    sizes = progressive_sizes(img_size, _patch_size(model), config.epochs) if config.progressive else None
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)

    # data
    short_side = math.ceil(img_size / dcfg.get("crop_pct", 0.875))
    emit.status("running", message=f"Decoding {len(dataset.items)} images into memory")
    cache = DecodeCache(dataset.items, short_side=short_side, max_bytes=config.cache_max_bytes)
    cache.fill(progress=lambda done, total: emit.event(type="cache", done=done, total=total))
    labels = dataset.labels(range(len(dataset.items)))
    train_set = _Images(cache, dataset.train, labels, _train_transform(config, dcfg))
    val_set = _Images(cache, dataset.val, labels, _eval_transform(dcfg))
    workers = config.workers if config.workers is not None else (0 if device.type == "cpu" else 4)
    steps_per_epoch = math.ceil(len(train_set) / ddp.world / config.batch_size)
    updates_per_epoch = math.ceil(steps_per_epoch / config.grad_accum)

    # optimisation
    import timm.optim
    import timm.scheduler
    import timm.utils
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    layer_decay = config.layer_decay if (config.weights or config.pretrained) else None  # no use from scratch
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay,
                                               layer_decay=layer_decay)
    warmup = min(config.warmup_epochs, max(0, config.epochs // 5)) if config.epochs > 1 else 0
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=warmup, warmup_lr=config.lr * 0.01,
        min_lr=config.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                      num_classes=len(classes))
        criterion = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    ema = timm.utils.ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay else None
    eval_model = ema.module if ema is not None else model  # what is validated and saved
    autocast, scaler = _amp(config, device)
    net = ddp.wrap(model)

    # state: fresh or resumed
    start_epoch, update, history = 0, 0, []
    best = {"val_acc": -1.0, "val_loss": float("inf"), "epoch": None}
    stale = 0
    if resume:
        state = runs.load_resume_state(run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        start_epoch, update, history = state["epoch"] + 1, state["update"], list(state["history"])
        best, stale = dict(state["best"]), state["stale"]
        _set_rng_state(state["rng"])
        runs.clear_cancel(run_dir)
    if ddp.is_main:
        runs.write_metrics_log(run_dir, history)
    emit.status("running", message="Training", epoch=start_epoch, epochs=config.epochs,
                steps_per_epoch=steps_per_epoch, device=str(device), classes=classes,
                train_images=len(train_set), val_images=len(val_set))
    train_record = {**asdict(config), "classes": classes, "img_size_used": img_size,
                    "layer_decay_used": layer_decay, "warmup_epochs_used": warmup}
    stop = _StopFlag(run_dir, should_stop, ddp)

    epoch_times: list[float] = [row["epoch_time"] for row in history]
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        net.train()
        if sizes:
            train_set.transform = _train_transform(config, dcfg, sizes[epoch])
        loader = ddp.loader(train_set, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                            workers=workers)
        loss_sum = correct = seen = 0.0
        optimizer.zero_grad(set_to_none=True)
        for step, (x, y) in enumerate(loader):
            if stop():
                return _cancelled(emit, epoch, step, history, best)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            target = y
            if mixup is not None:
                if len(y) % 2:  # timm's Mixup needs an even batch
                    x, y = x[:-1], y[:-1]
                if len(y) == 0:
                    continue
                x, target = mixup(x, y)
            with autocast():
                logits = net(x)
                loss = criterion(logits, target)
            if not torch.isfinite(loss):
                raise TrainError(f"The loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}: training "
                                 f"diverged. Lower the learning rate (now {config.lr:g}), keep gradient clipping on, "
                                 "or check the images. The best checkpoint so far is kept.")
            scaled = loss / config.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            if (step + 1) % config.grad_accum == 0 or step + 1 == len(loader):
                if scaler:
                    scaler.unscale_(optimizer)
                if config.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                update += 1
                scheduler.step_update(num_updates=update)
                if ema is not None:
                    ema.update(model, step=update)
            n = len(y)
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            emit.step(epoch=epoch, step=step + 1, steps=len(loader), images=n, loss=loss.item(), lr=_lr(optimizer))
        train_time = time.perf_counter() - t_epoch

        val_loss, val_acc, _ = _evaluate(eval_model, val_set, config, device, autocast)
        improved = val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["val_loss"])
        if improved:
            best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
            stale = 0
            if ddp.is_main:
                runs.save_model(run_dir, eval_model, classes, train_record, data_config=_export_data_config(dcfg))
        else:
            stale += 1
        epoch_times.append(time.perf_counter() - t_epoch)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_loss": val_loss, "val_acc": val_acc, "lr": _lr(optimizer),
               "images_per_s": seen * ddp.world / max(train_time, 1e-9), "epoch_time": epoch_times[-1],
               "img_size": sizes[epoch] if sizes else img_size,
               "eta_s": float(np.mean(epoch_times)) * (config.epochs - epoch - 1), "best_epoch": best["epoch"]}
        history.append(row)
        stopped_early = bool(config.early_stopping) and stale >= config.early_stopping and epoch + 1 < config.epochs
        if ddp.is_main:
            runs.save_resume_state(run_dir, {
                "config": asdict(config), "epoch": epoch, "update": update, "history": history, "best": best,
                "stale": stale, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": _rng_state()})
            runs.write_metrics_log(run_dir, history)
        emit.epoch(row, config.epochs, best)
        if stopped_early:
            break

    # final report on the best weights
    emit.status("running", message="Computing final metrics on the best model")
    from safetensors.torch import load_file
    ddp.barrier()  # rank 0 has written the best weights
    eval_model.load_state_dict(load_file(run_dir / runs.WEIGHTS))
    _, _, predictions = _evaluate(eval_model, val_set, config, device, autocast, keep=True)
    metrics = _final_metrics(predictions, dataset, classes, best, history, stopped_early)
    if dataset.test:  # a held-out test split: measured once, on the chosen model, reported apart
        test_set = _Images(cache, dataset.test, labels, _eval_transform(dcfg))
        _, _, on_test = _evaluate(eval_model, test_set, config, device, autocast, keep=True)
        held_out = _final_metrics(on_test, dataset, classes, best, history, stopped_early)
        metrics["test"] = {"acc": held_out["val_acc"], "images": len(test_set), "per_class": held_out["per_class"],
                           "confusion_matrix": held_out["confusion_matrix"]}
    if ddp.is_main:
        runs.write_json(run_dir / runs.METRICS, metrics)
    message = (f"Finished: best validation accuracy {best['val_acc']:.1%} at epoch {best['epoch']}"
               + (f" (stopped early after {len(history)} epochs: no improvement in {config.early_stopping})"
                  if stopped_early else "")
               + (f"; test accuracy {metrics['test']['acc']:.1%} on {metrics['test']['images']} held-out images"
                  if "test" in metrics else ""))
    emit.status("completed", message=message, epoch=len(history))
    emit.event(type="end", metrics=metrics)
    return metrics


# ---------------------------------------------------------------------------
# helpers


class _Images(torch.utils.data.Dataset):
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


def _patch_size(model: nn.Module) -> int:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if not patch:
        raise TrainError("Progressive resizing needs a ViT with a patch embedding; turn it off for this model.")
    return patch[0] if isinstance(patch, (tuple, list)) else int(patch)


def _train_transform(config: TrainConfig, dcfg: dict, size: int | None = None):
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


def _eval_transform(dcfg: dict):
    from timm.data import create_transform
    return create_transform(**dcfg, is_training=False)


def _export_data_config(dcfg: dict) -> dict:
    return {k: dcfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in dcfg}


@torch.no_grad()
def _evaluate(model: nn.Module, val_set: "_Images", config: TrainConfig, device, autocast, keep: bool = False):
    """Validation loss and accuracy; with keep=True also (index, true, pred, confidence) per image."""
    if len(val_set) == 0:
        return float("nan"), 0.0, []
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(val_set, batch_size=config.batch_size * 2, shuffle=False)
    loss_sum, correct, out, k = 0.0, 0, [], 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        prob = logits.softmax(1)
        conf, pred = prob.max(1)
        correct += (pred == y).sum().item()
        if keep:
            for t, p, c in zip(y.tolist(), pred.tolist(), conf.tolist()):
                out.append((val_set.indices[k], t, p, c))
                k += 1
    model.train(was_training)
    return loss_sum / len(val_set), correct / len(val_set), out


def _final_metrics(predictions, dataset: Dataset, classes: list[str], best: dict, history: list[dict],
                   stopped_early: bool) -> dict:
    n = len(classes)
    confusion = np.zeros((n, n), dtype=int)
    for _, t, p, _ in predictions:
        confusion[t, p] += 1
    per_class = {}
    for i, c in enumerate(classes):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(confusion[i].sum())}
    misclassified = [{"name": dataset.items[i].name, "true": classes[t], "predicted": classes[p],
                      "confidence": round(c, 4)} for i, t, p, c in predictions if t != p]
    total = int(confusion.sum())
    return {"classes": classes, "val_acc": float(np.trace(confusion) / total) if total else 0.0,
            "best_epoch": best["epoch"], "epochs_run": len(history), "stopped_early": stopped_early,
            "best_val_loss": best["val_loss"], "per_class": per_class, "confusion_matrix": confusion.tolist(),
            "misclassified": misclassified, "history": history}


def _cancelled(emit: "_Emitter", epoch: int, step: int, history: list[dict], best: dict) -> dict:
    best_note = f"best checkpoint (epoch {best['epoch']}) kept" if best["epoch"] else "no checkpoint had been saved yet"
    emit.status("cancelled", message=f"Cancelled at epoch {epoch + 1}, step {step + 1}; {best_note}.",
                epoch=epoch, step=step)
    emit.event(type="end", cancelled=True)
    return {"cancelled": True, "epoch": epoch + 1, "step": step + 1, "best_epoch": best["epoch"], "history": history}


def _amp(config: TrainConfig, device: torch.device):
    if device.type != "cuda" or not config.amp:
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _lr(optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    """A cooperative cancel: the caller's flag or a CANCEL file, agreed on by every rank."""

    def __init__(self, run_dir: Path, should_stop, ddp: "_Distributed"):
        self.run_dir, self.should_stop, self.ddp = run_dir, should_stop, ddp

    def __call__(self) -> bool:
        local = bool(self.should_stop and self.should_stop()) or runs.cancel_requested(self.run_dir)
        return self.ddp.any(local)


class _Emitter:
    """Progress: events to the caller, status.json in the run directory (rank 0 only)."""

    def __init__(self, run_dir: Path, on_event: EventHandler | None, writes: bool):
        self.run_dir, self.on_event, self.writes = run_dir, on_event, writes
        self._last_step_write = 0.0

    def event(self, **e) -> None:
        if self.on_event and self.writes:
            self.on_event(e)

    def status(self, state: str | None = None, **fields) -> None:
        if self.writes:
            runs.update_status(self.run_dir, state, **fields)
        self.event(type="status", state=state, **fields)

    def step(self, **e) -> None:
        self.event(type="step", **e)
        now = time.monotonic()
        if self.writes and now - self._last_step_write > 1.0:
            self._last_step_write = now
            runs.update_status(self.run_dir, epoch=e["epoch"], step=e["step"], steps_per_epoch=e["steps"],
                               loss=e["loss"])

    def epoch(self, row: dict, epochs: int, best: dict) -> None:
        self.event(type="epoch", epochs=epochs, **row)
        if self.writes:
            runs.update_status(self.run_dir, epoch=row["epoch"], step=0, eta_s=row["eta_s"],
                               best_val_acc=best["val_acc"], best_epoch=best["epoch"],
                               message=f"Epoch {row['epoch']}/{epochs}: val acc {row['val_acc']:.1%}")


class _Distributed:
    """torchrun support: process group, device, DDP wrapper, sharded loader. A no-op on one process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self._own_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self._own_group = True

    def device(self, wanted: str) -> torch.device:
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda":
            if not torch.cuda.is_available():
                raise TrainError("device 'cuda' was asked for but no GPU is visible; use --device cpu or auto.")
            return torch.device("cuda", self.local_rank)
        return torch.device(wanted)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        dev = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def loader(self, data, batch_size: int, shuffle: bool, seed: int, epoch: int, workers: int):
        if self.world > 1:
            sampler = torch.utils.data.DistributedSampler(data, shuffle=shuffle, seed=seed)
            sampler.set_epoch(epoch)
            return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers)
        generator = torch.Generator()
        generator.manual_seed(seed * 1_000_003 + epoch)  # the order of an epoch depends on (seed, epoch) only
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           num_workers=workers, persistent_workers=False)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0],
                         device=f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()
            self._own_group = False
