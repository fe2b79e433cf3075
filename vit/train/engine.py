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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from timm.utils import NativeScaler
from torch import nn

from vit import runs, trust
from vit.runs import RunState
from vit.data import Dataset, DecodeCache
from vit.train.config import ConfigError, TrainConfig, TrainError
from vit.train.distributed import Distributed
from vit.train.events import Emitter, EventHandler, StopFlag, cancelled
from vit.train.metrics import Holdout, delivered, estimate_line, holdout, loss_acc
from vit.train.prepare import prepare
from vit.train.recipe import balancing, class_counts, class_weights
from vit.train.quick import fit_quick, probe_head
from vit.train.transforms import (BatchAugment, Images, TrainImages, export_data_config, patch_size_of,
                                  progressive_sizes)


def train(dataset: Dataset, config: TrainConfig | None, run_dir: str | os.PathLike, *,
          on_event: EventHandler | None = None, should_stop: Callable[[], bool] | None = None,
          resume: bool = False) -> dict:
    """Fit a model and return the final metrics (or, if cancelled, the state so far).

    `resume=True` continues from the run's last completed epoch with the run's
    own config. Raises TrainError (the run is marked failed, checkpoints kept).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ddp = Distributed()
    emit = Emitter(run_dir, on_event, ddp.is_main)
    if resume:
        state = runs.load_resume_state(run_dir)
        if state is None:
            raise TrainError(f"{run_dir} has no saved state (last.pt) to resume from; start a new run instead.")
        config = TrainConfig.from_dict(state["config"])
    elif config is None:
        raise TrainError("no training config given")
    else:
        try:
            config = replace(config).check()  # a copy: the caller's config is never changed (OOM halves the batch)
        except ConfigError as e:
            raise TrainError(str(e)) from None
    try:
        while True:
            try:
                if config.quick:
                    return fit_quick(dataset, config, run_dir, emit, should_stop, ddp)
                return _fit(dataset, config, run_dir, emit, should_stop, resume, ddp)
            except torch.cuda.OutOfMemoryError:
                if config.batch_size <= 1:
                    raise TrainError("Out of GPU memory even at batch size 1. Use a smaller model or image size, "
                                     "or turn on gradient checkpointing.") from None
                torch.cuda.empty_cache()
                config.batch_size //= 2
                config.grad_accum *= 2
                resume = (run_dir / runs.RESUME).exists()
                emit.status(RunState.RUNNING, message=f"Out of GPU memory; retrying with batch size "
                                                      f"{config.batch_size} x {config.grad_accum} accumulation steps "
                                                      "(same effective batch).")
    except TrainError as e:
        emit.status(RunState.FAILED, message=str(e))
        raise
    except Exception as e:  # a dataset error, a bug, a full disk: the run records it and the caller sees it
        message = runs.DISK_FULL if runs.disk_full(e) else f"{type(e).__name__}: {e}"
        emit.status(RunState.FAILED, message=message)  # (on a full disk this write may fail too: the caller is told)
        raise TrainError(f"Training failed: {message}") from e
    finally:
        ddp.close()


@dataclass
class _Run:
    """What one training run works with: built by _setup, changed by each epoch, read at the end."""
    config: TrainConfig
    run_dir: Path
    emit: Emitter
    ddp: Distributed
    device: torch.device
    model: nn.Module
    dcfg: dict
    sizes: list | None
    cache: DecodeCache
    eval_cache: DecodeCache                # validation and test images as inference sees them (vit.data.pixels)
    pixels: object                         # ... and the rest of the eval transform (EvalPixels)
    labels: list
    train_set: TrainImages
    split: Holdout                       # which images choose the epoch, which estimate the accuracy
    val_set: Images                      # the images each epoch is validated on: split.select (or, when nothing
                                         # is chosen, split.estimate, only to show the curve)
    loader: torch.utils.data.DataLoader  # the training batches, every epoch (persistent workers)
    augment: BatchAugment                # colour jitter and normalisation, a batch at a time
    record: dict = field(default_factory=dict)       # config.json's training record
    optimizer: object = None
    scheduler: object = None
    scaler: object = None
    autocast: Callable = contextlib.nullcontext
    mixup: object = None
    criterion: nn.Module | None = None
    teacher: nn.Module | None = None                   # distillation (vit.train.teacher)
    ema: object = None
    net: nn.Module | None = None                       # the model, DDP-wrapped under torchrun
    start_epoch: int = 0
    update: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "val_loss": float("inf"), "epoch": None})
    stale: int = 0
    stopped_at: int = 0                                # the step a cancel came at

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved: the EMA of the weights when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _fit(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: Emitter,
         should_stop: Callable[[], bool] | None, resume: bool, ddp: Distributed) -> dict:
    """Set up, then train epoch by epoch (checkpointing each), then report on the best weights."""
    run = _setup(dataset, config, run_dir, emit, resume, ddp)
    if config.teacher:
        _teacher(run, dataset)
    if not resume and config.lp_ft and (config.pretrained or config.weights):  # LP, then FT from its head
        head = probe_head(run.model, run.dcfg, dataset, run.eval_cache, run.labels, config, run_dir, emit,
                          run.device, StopFlag(run_dir, should_stop, ddp), ddp.is_main)
        if head is None:
            return cancelled(emit, 0, 0, [], {"epoch": None})
        run.record["lp_ft_head"] = head
        score = f"scores {head['val_acc']:.1%} on validation" if head["val_acc"] is not None else "is fitted"
        emit.status(RunState.RUNNING, message=f"LP-FT: the head fitted on frozen features {score}; fine-tuning the "
                                       "whole model from it")
    _optimisation(run, len(dataset.classes))
    if resume:
        _restore(run)
    if ddp.is_main:
        runs.write_metrics_log(run_dir, run.history)
    emit.status(RunState.RUNNING, message="Training", epoch=run.start_epoch, epochs=config.epochs,
                steps_per_epoch=_steps_per_epoch(run), device=str(run.device), classes=dataset.classes,
                train_images=len(run.train_set), val_images=len(run.val_set))
    stop = StopFlag(run_dir, should_stop, ddp)
    stopped_early = False
    for epoch in range(run.start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        trained = train_one_epoch(run, epoch, stop)
        if trained is None:
            return cancelled(emit, epoch, run.stopped_at, run.history, run.best)
        val = evaluate(run.eval_model, run.val_set, config, run.device, run.autocast)
        val_loss, val_acc = val.loss, val.accuracy
        stopped_early = _end_epoch(run, epoch, trained, val_loss, val_acc, time.perf_counter() - t_epoch)
        if stopped_early:
            break
    return _finish(run, dataset, stopped_early)


def _setup(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: Emitter, resume: bool,
           ddp: Distributed) -> _Run:
    """The model (a resumed run is rebuilt from its own config.json: no download, same architecture) and
    the data, decoded into memory once."""
    p = prepare(dataset, config, run_dir, emit, ddp, resume)
    img_size = p.dcfg["input_size"][-1]
    sizes = progressive_sizes(img_size, patch_size_of(p.model), config.epochs) if config.progressive else None
    if config.grad_checkpointing:
        p.model.set_grad_checkpointing(True)
    train_set = TrainImages(p.cache, dataset.train, p.labels, config, p.dcfg)
    split = holdout(dataset, config.seed)
    counts = class_counts(dataset)
    balance = balancing(config.class_balance, counts)
    weights = class_weights(counts)
    sampling = torch.tensor([weights[p.labels[i]] for i in dataset.train]) if balance == "sampling" else None
    return _Run(config, run_dir, emit, ddp, p.device, p.model, p.dcfg, sizes, p.cache, p.eval_cache, p.pixels,
                p.labels, train_set, split,
                Images(p.eval_cache, split.select or split.estimate, p.labels, p.pixels.tensor),
                ddp.train_loader(train_set, config.batch_size, config.seed, _workers(config, p.device), sampling),
                BatchAugment(config, p.dcfg, p.device),
                record={**asdict(config), "classes": dataset.classes, "img_size_used": img_size, "built": p.built,
                        "class_balance_used": balance, "class_weights": weights if balance else None})


def _teacher(run: _Run, dataset: Dataset) -> None:
    """Load the teacher (refusing one of other classes, or one that trained on this run's held-out images), measure
    it on the images this run's accuracy estimate uses (the two compare), and let a student with a distillation
    token learn from that token."""
    from vit.train import teacher
    held_out = {dataset.items[i].sha256 for i in (*dataset.val, *dataset.test)}
    run.emit.status(RunState.RUNNING, message="Loading the teacher")
    run.teacher, info = teacher.load(run.config, dataset.classes, held_out, run.device, run.dcfg)
    same = Images(run.eval_cache, run.split.estimate, run.labels, run.pixels.tensor)  # (the student's estimate's)
    info.val_acc = teacher.accuracy(run.teacher, same, run.config.batch_size * 2, run.device, run.autocast)
    info.images = len(same)
    if hasattr(run.model, "set_distilled_training"):  # timm's deit_*_distilled_*: the token's head learns the teacher
        run.model.set_distilled_training(True)
    line = teacher.said(run.teacher, info)
    run.record.update(teacher_info=asdict(info), recipe=[*run.config.recipe, line])  # (the card names it)
    run.emit.event(type="recipe", text=line)


def _optimisation(run: _Run, n_classes: int) -> None:
    """AdamW with layer-wise lr decay (from trained weights), warm-up then cosine per update, the loss (soft
    targets under mixup/cutmix), EMA, autocast and the loss scaler; the model wrapped for DDP."""
    import timm.optim
    import timm.scheduler
    import timm.utils
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    config = run.config
    layer_decay = config.layer_decay if (config.weights or config.pretrained) else None  # no use from scratch
    run.optimizer = timm.optim.create_optimizer_v2(run.model, opt="adamw", lr=config.lr,
                                                   weight_decay=config.weight_decay, layer_decay=layer_decay)
    warmup = min(config.warmup_epochs, max(0, config.epochs // 5)) if config.epochs > 1 else 0
    run.scheduler, _ = timm.scheduler.create_scheduler_v2(
        run.optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=warmup, warmup_lr=config.lr * 0.01,
        min_lr=config.min_lr, step_on_epochs=False,
        updates_per_epoch=math.ceil(_steps_per_epoch(run) / config.grad_accum))
    balance = run.record["class_balance_used"]  # (sampling under torchrun: the loss is weighted instead)
    weight = (torch.tensor(run.record["class_weights"], device=run.device)
              if balance == "weights" or (balance == "sampling" and run.ddp.world > 1) else None)
    if config.mixup > 0 or config.cutmix > 0:
        run.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
                          label_smoothing=config.label_smoothing, num_classes=n_classes)
        run.criterion = SoftTargetCrossEntropy() if weight is None else WeightedSoftTargetCrossEntropy(weight)
    else:
        run.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    run.ema = timm.utils.ModelEmaV3(run.model, decay=config.ema_decay) if config.ema_decay else None
    run.autocast, run.scaler = _amp(config, run.device)
    run.net = run.ddp.wrap(run.model)
    run.record.update(layer_decay_used=layer_decay, warmup_epochs_used=warmup)


def _restore(run: _Run) -> None:
    """Where a resumed run left off: weights, optimizer, schedule, EMA, scaler, history and random state."""
    state = runs.load_resume_state(run.run_dir)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None and state.get("ema") is not None:
        run.ema.load_state_dict(state["ema"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.update, run.history = state["epoch"] + 1, state["update"], list(state["history"])
    run.best, run.stale = dict(state["best"]), state["stale"]
    _set_rng_state(state["rng"])
    runs.clear_cancel(run.run_dir)


def train_one_epoch(run: _Run, epoch: int, stop: StopFlag) -> dict | None:
    """One pass over the training images: forward, loss, backward, and an optimizer update every grad_accum
    steps (the scheduler steps per update, the EMA follows). Returns the epoch's loss, accuracy and
    throughput, or None when asked to stop (run.stopped_at says at which step)."""
    config, optimizer = run.config, run.optimizer
    run.net.train()
    loader = run.loader
    loader.sampler.set_epoch(epoch, run.sizes[epoch] if run.sizes else None)
    loss_sum = correct = seen = 0.0
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for step, (x, y) in enumerate(loader):
        if stop():
            run.stopped_at = step
            return None
        x, y = run.augment(x.to(run.device, non_blocking=True), epoch, step), y.to(run.device, non_blocking=True)
        target = y
        if run.mixup is not None:
            if len(y) % 2:  # timm's Mixup needs an even batch
                x, y = x[:-1], y[:-1]
            if len(y) == 0:
                continue
            x, target = run.mixup(x, y)
        with run.autocast():
            logits = run.net(x)
            logits, logits_kd = logits if isinstance(logits, tuple) else (logits, logits)  # (a distillation token)
            loss = run.criterion(logits, target)
            if run.teacher is not None:
                loss = run.teacher.loss(loss, logits_kd, x)
                logits = (logits + logits_kd) / 2  # (the answer of a two-headed model, as at inference)
        if not torch.isfinite(loss):
            raise TrainError(f"The loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}: training "
                             f"diverged. Lower the learning rate (now {config.lr:g}), keep gradient clipping on, "
                             "or check the images. The best checkpoint so far is kept.")
        need_update = (step + 1) % config.grad_accum == 0 or step + 1 == len(loader)
        run.scaler(loss / config.grad_accum, optimizer, clip_grad=config.clip_grad,
                   parameters=run.model.parameters(), need_update=need_update)  # backward; on an update: step
        if need_update:
            optimizer.zero_grad(set_to_none=True)
            run.update += 1
            run.scheduler.step_update(num_updates=run.update)
            if run.ema is not None:
                run.ema.update(run.model, step=run.update)
        n = len(y)
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        run.emit.step(epoch=epoch, step=step + 1, steps=len(loader), images=n, loss=loss.item(), lr=_lr(optimizer))
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "images_per_s": seen * run.ddp.world / max(time.perf_counter() - t0, 1e-9)}


TIE = 1e-6  # a validation loss lower by less than this fraction is no improvement (float noise, not learning)


def _end_epoch(run: _Run, epoch: int, trained: dict, val_loss: float, val_acc: float, seconds: float) -> bool:
    """Keep the best weights, record the epoch (metrics.jsonl, last.pt to resume from, status); True when
    early stopping ends the run here."""
    config = run.config
    choosing = bool(run.split.select)  # else nothing is chosen on the images: the last epoch is kept
    if not choosing or val_acc > run.best["val_acc"] or (val_acc == run.best["val_acc"]
                                                         and val_loss < run.best["val_loss"] * (1 - TIE)):
        run.best, run.stale = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}, 0
        if run.ddp.is_main:
            runs.save_model(run.run_dir, run.eval_model, run.record["classes"], run.record,
                            data_config=export_data_config(run.dcfg))
    else:
        run.stale += 1
    times = [row["epoch_time"] for row in run.history] + [seconds]
    row = {"epoch": epoch + 1, **trained, "val_loss": val_loss, "val_acc": val_acc, "lr": _lr(run.optimizer),
           "epoch_time": seconds, "img_size": run.sizes[epoch] if run.sizes else run.dcfg["input_size"][-1],
           "eta_s": float(np.mean(times)) * (config.epochs - epoch - 1), "best_epoch": run.best["epoch"]}
    row = {k: row[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s",
                               "epoch_time", "img_size", "eta_s", "best_epoch")}  # metrics.jsonl's column order
    run.history.append(row)
    if run.ddp.is_main:
        runs.save_resume_state(run.run_dir, {
            "config": asdict(config), "epoch": epoch, "update": run.update, "history": run.history,
            "best": run.best, "stale": run.stale, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None, "scaler": run.scaler.state_dict(),
            "rng": _rng_state()})
        runs.write_metrics_log(run.run_dir, run.history)
    run.emit.epoch(row, config.epochs, run.best)
    return (choosing and bool(config.early_stopping) and run.stale >= config.early_stopping
            and epoch + 1 < config.epochs)


def _finish(run: _Run, dataset: Dataset, stopped_early: bool) -> dict:
    """The final report, on the delivered weights: validation metrics (every image), the test split measured
    once, the accuracy estimate, the calibration and the "none of these" check, on the images that chose
    nothing."""
    from safetensors.torch import load_file
    config, best, history, classes = run.config, run.best, run.history, dataset.classes
    run.emit.status(RunState.RUNNING, message="Computing final metrics on the delivered model")
    run.ddp.barrier()  # rank 0 has written the best weights
    run.eval_model.load_state_dict(load_file(run.run_dir / runs.WEIGHTS))
    n = len(dataset.items)
    logits, feats = torch.zeros(n, len(classes)), None
    for split in (dataset.val, dataset.test):  # (the test split measured once, on the chosen model)
        if split:
            seen = evaluate(run.eval_model, Images(run.eval_cache, split, run.labels, run.pixels.tensor),
                            config, run.device, run.autocast, keep=True)
            logits[split] = seen.logits
            feats = trust.put(feats, seen.features, split, n)
    bank = trust.bank_sample(run.labels, dataset.train, config.seed)
    if bank and feats is not None:
        run.emit.status(RunState.RUNNING, message="Reading the training images' features for the 'none of these' check")
        run.eval_cache.fill(indices=bank)
        _, f = outputs(run.eval_model, Images(run.eval_cache, bank, run.labels, run.pixels.tensor),
                       config.batch_size * 2, run.device, run.autocast)
        feats = trust.put(feats, f, bank, n)
    metrics = delivered(logits, feats, dataset, run.labels, run.split, bank, best, history, stopped_early,
                        config.seed, run.run_dir, run.ddp.is_main)
    chosen = metrics["selection"]
    message = f"Finished: {estimate_line(metrics['accuracy_estimate'])}" + (
        f"; best of {chosen['epochs']} epochs on validation {chosen['val_acc']:.1%} (epoch {chosen['epoch']}, "
        f"chosen on those {chosen['images']} images)" if chosen else "") + (
        f" (stopped early after {len(history)} epochs: no improvement in {config.early_stopping})"
        if stopped_early else "")
    run.emit.status(RunState.COMPLETED, message=message, epoch=len(history))
    run.emit.event(type="end", metrics=metrics)
    return metrics


class WeightedSoftTargetCrossEntropy(nn.Module):
    """Cross-entropy with soft targets (mixup, cutmix) and class weights: each image weighs as its target's
    classes do, and the weights' sum normalises, as torch's weighted cross-entropy does with hard targets."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_image = torch.sum(-target * nn.functional.log_softmax(logits, dim=-1), dim=-1)
        weight = target @ self.weight.to(target.dtype)
        return (per_image * weight).sum() / weight.sum().clamp_min(1e-12)


def _steps_per_epoch(run: _Run) -> int:
    return math.ceil(len(run.train_set) / run.ddp.world / run.config.batch_size)


def _workers(config: TrainConfig, device: torch.device) -> int:
    """DataLoader workers: as set; else 4 on a GPU (started once per run), and none on a CPU, where a worker
    takes cores the model trains on (measured slower at 32 and at 224 px on 2 cores)."""
    if config.workers is not None:
        return config.workers
    return 4 if device.type == "cuda" else 0


class Evaluation(NamedTuple):
    """What evaluate gives: the mean loss, the accuracy and, asked for (keep=True), each image's logits and
    features on the CPU, in order (None otherwise, or without images)."""
    loss: float
    accuracy: float
    logits: torch.Tensor | None = None
    features: dict | None = None


@torch.no_grad()
def evaluate(model: nn.Module, val_set: "Images", config: TrainConfig, device, autocast,
             keep: bool = False) -> Evaluation:
    """Validation loss and accuracy; with keep=True also each image's logits and features (outputs)."""
    if len(val_set) == 0:
        return Evaluation(float("nan"), 0.0)
    if keep:
        logits, feats = outputs(model, val_set, config.batch_size * 2, device, autocast)
        y = torch.tensor([val_set.labels[i] for i in val_set.indices])
        return Evaluation(*loss_acc(logits, y), logits=logits, features=feats)
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(val_set, batch_size=config.batch_size * 2, shuffle=False)
    loss_sum, correct = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return Evaluation(loss_sum / len(val_set), correct / len(val_set))


def outputs(model: nn.Module, images: "Images", batch_size: int, device, autocast):
    """The logits and the features (vit.trust.Seen.features: None where the classifier's input cannot be read)
    of each image, in order, on the CPU, in eval mode."""
    return trust.collect(model, torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False), device,
                         autocast)


def _amp(config: TrainConfig, device: torch.device):
    """The autocast context and the loss scaler: bf16 where the GPU has it, else fp16 with gradient scaling;
    on CPU (or amp off) full precision, and the scaler only runs backward, clip and step."""
    if device.type != "cuda" or not config.amp:
        return contextlib.nullcontext, _Scaler(device.type, scaling=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), _Scaler("cuda", scaling=dtype == torch.float16)


class _Scaler(NativeScaler):
    """timm's NativeScaler (scale, backward, then on an update unscale, clip, step, update), with the
    scaling itself on only for fp16: disabled, torch's GradScaler passes the loss and the step through."""

    def __init__(self, device_type: str, scaling: bool):
        self._scaler = torch.amp.GradScaler(device_type, enabled=scaling)


def _lr(optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


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
