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

from timm.utils import NativeScaler, random_seed

from vit import features, probe, runs
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
    # frozen features (vit.features, vit.probe)
    quick: bool = False                 # the quick model: fit only the head, on the frozen features (seconds)
    lp_ft: bool = False                 # LP-FT: fine-tune from that fitted head instead of a random one
    probe_flip: bool = False            # the head also sees the mirror image of each training image

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
        if (self.quick or self.lp_ft) and not (self.pretrained or self.weights):
            raise ConfigError(("A quick model fits only the head" if self.quick else "LP-FT first fits the head")
                              + " on the features of trained weights, and random weights have none worth "
                              "fitting. Start from pretrained weights, or from an earlier run's (in the app: "
                              "pick 'Start from your run' as the Model; on the command line: --weights RUN_DIR).")
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


OFF_AT_ZERO = ("early_stopping", "ema_decay", "layer_decay")  # 0 in a form or a flag turns these off


def zero_means_off(settings: dict) -> dict:
    """Settings as the user typed them, with 0 meaning "off" (None) for the settings that can be off."""
    return {k: None if k in OFF_AT_ZERO and v == 0 and not isinstance(v, bool) else v for k, v in settings.items()}


def epoch_line(e: dict) -> str:
    """One finished epoch (an "epoch" event) in a line, as the command line and the run's log print it."""
    return (f"epoch {e['epoch']}/{e['epochs']}  train loss {e['train_loss']:.4f} acc {e['train_acc']:.1%}  "
            f"val loss {e['val_loss']:.4f} acc {e['val_acc']:.1%}  lr {e['lr']:.2e}  "
            f"{e['images_per_s']:.0f} img/s  {e['epoch_time']:.1f}s  eta {e['eta_s']:.0f}s")


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
                if config.quick:
                    return _fit_quick(dataset, config, run_dir, emit, should_stop, ddp)
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
    random_seed(config.seed % 2 ** 31, ddp.rank)  # python, numpy and torch
    classes = dataset.classes
    if not dataset.report.ok:
        raise TrainError(dataset.report.refusal())
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
    lp_ft = None
    if config.lp_ft and not resume and (config.pretrained or config.weights):  # LP, then FT from its head
        lp_ft = _probe_head(model, dcfg, dataset, cache, labels, config, run_dir, emit, device,
                            _StopFlag(run_dir, should_stop, ddp), ddp.is_main)
        if lp_ft is None:
            return _cancelled(emit, 0, 0, [], {"epoch": None})
        emit.status("running", message=f"LP-FT: the head fitted on frozen features scores {lp_ft['val_acc']:.1%} "
                                       "on validation; fine-tuning the whole model from it")
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
        if state.get("scaler"):
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
                    "layer_decay_used": layer_decay, "warmup_epochs_used": warmup,
                    **({"lp_ft_head": lp_ft} if lp_ft else {})}
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
            need_update = (step + 1) % config.grad_accum == 0 or step + 1 == len(loader)
            scaler(loss / config.grad_accum, optimizer, clip_grad=config.clip_grad, parameters=model.parameters(),
                   need_update=need_update)  # backward; on an update: unscale, clip, step
            if need_update:
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
                "scaler": scaler.state_dict(), "rng": _rng_state()})
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


def _fit_quick(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: "_Emitter",
               should_stop: Callable[[], bool] | None, ddp: "_Distributed") -> dict:
    """The quick model: the backbone frozen, only the head fitted (logistic regression on the cached
    features, its penalty chosen on validation). Saved like any run, so everything downstream works."""
    t0 = time.perf_counter()
    device = ddp.device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    random_seed(config.seed % 2 ** 31)
    classes = dataset.classes
    if not dataset.report.ok:
        raise TrainError(dataset.report.refusal())
    runs.write_json(run_dir / runs.DATA_REPORT, runs.public_report(dataset.report.to_dict()))
    emit.status("running", message="Creating the model", epoch=0, epochs=1, **runs.process_identity())
    model = create_model(ModelSpec(config.model, pretrained=config.pretrained, weights=config.weights,
                                   img_size=config.img_size, patch_size=config.patch_size,
                                   model_args=config.model_args), num_classes=len(classes)).to(device)
    dcfg = data_config(model)
    if config.crop_pct:
        dcfg["crop_pct"] = config.crop_pct
    cache = DecodeCache(dataset.items, short_side=math.ceil(dcfg["input_size"][-1] / dcfg.get("crop_pct", 0.875)),
                        max_bytes=config.cache_max_bytes)
    emit.status("running", message=f"Decoding {len(dataset.items)} images")
    cache.fill(progress=lambda done, total: emit.event(type="cache", done=done, total=total))
    labels = dataset.labels(range(len(dataset.items)))
    head = _probe_head(model, dcfg, dataset, cache, labels, config, run_dir, emit, device,
                       _StopFlag(run_dir, should_stop, ddp), ddp.is_main, keep=True)
    if head is None:
        return _cancelled(emit, 0, 0, [], {"epoch": None})
    x, y = head.pop("features"), torch.tensor(labels)
    layer = features.classifier(model)
    logits = x @ layer.weight.detach().cpu().T + layer.bias.detach().cpu()
    elapsed = time.perf_counter() - t0
    train_loss, train_acc = _loss_acc(logits[dataset.train], y[dataset.train])
    val_loss, val_acc = _loss_acc(logits[dataset.val], y[dataset.val])
    best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": 1}
    history = [{"epoch": 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc, "lr": 0.0, "images_per_s": len(labels) / max(elapsed, 1e-9),
                "epoch_time": elapsed, "img_size": dcfg["input_size"][-1], "eta_s": 0.0, "best_epoch": 1}]
    record = {**asdict(config), "classes": classes, "img_size_used": dcfg["input_size"][-1], "probe_head": head}
    if ddp.is_main:
        runs.save_model(run_dir, model, classes, record, data_config=_export_data_config(dcfg))
        runs.write_metrics_log(run_dir, history)
    metrics = _final_metrics(_predicted(logits, dataset.val, labels), dataset, classes, best, history, False)
    if dataset.test:
        held_out = _final_metrics(_predicted(logits, dataset.test, labels), dataset, classes, best, history, False)
        metrics["test"] = {"acc": held_out["val_acc"], "images": len(dataset.test),
                           "per_class": held_out["per_class"], "confusion_matrix": held_out["confusion_matrix"]}
    metrics["quick"] = True
    if ddp.is_main:
        runs.write_json(run_dir / runs.METRICS, metrics)
    measured = f"{val_acc:.1%} validation accuracy" if dataset.val else "no validation images to measure it on"
    emit.status("completed", epoch=1, message=f"Quick model: {measured} (a head fitted on frozen features in "
                f"{elapsed:.0f} s)" + (f"; test accuracy {metrics['test']['acc']:.1%}" if "test" in metrics else ""))
    emit.event(type="end", metrics=metrics)
    return metrics


def _probe_head(model: nn.Module, dcfg: dict, dataset: Dataset, cache: DecodeCache, labels: list[int],
                config: TrainConfig, run_dir: Path, emit: "_Emitter", device, stop, is_main: bool,
                keep: bool = False) -> dict | None:
    """Fit the model's head on its frozen features (cached under the runs' root) and put it in the model;
    write what the features say about the data (diagnostics.json). Returns what was chosen (with the
    features when `keep`), None when asked to stop."""
    shas = [it.sha256 for it in dataset.items]
    emit.status("running", message=f"Computing the frozen features of {len(shas)} images")

    def computed(flip: bool):
        return features.extract(model, dcfg, cache.pil, shas, cache_dir=run_dir.parent / runs.FEATURES,
                                device=device, flip=flip, should_stop=stop,
                                progress=lambda done, total: emit.event(type="features", done=done, total=total))
    x = computed(False)
    mirrored = computed(True) if config.probe_flip and x is not None else None
    if x is None or (config.probe_flip and mirrored is None):
        return None
    emit.status("running", message="Fitting the head on the frozen features")
    y, train, val = torch.tensor(labels), torch.tensor(dataset.train), torch.tensor(dataset.val)
    x_train, y_train = x[train], y[train]
    if mirrored is not None:
        x_train, y_train = torch.cat([x_train, mirrored[train]]), torch.cat([y_train, y_train])
    head = probe.fit_head(x_train, y_train, x[val] if len(val) else None, y[val] if len(val) else None,
                          len(dataset.classes), seed=config.seed)
    with torch.no_grad():
        layer = features.classifier(model)
        layer.weight.copy_(head.weight)
        layer.bias.copy_(head.bias)
    if is_main:
        emit.status("running", message="Reading the features for near-duplicates, label errors, a learning curve")
        splits = {i: s for s, idx in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))
                  for i in idx}
        report = features.diagnose(x, labels, [it.name for it in dataset.items],
                                   [splits.get(i, "") for i in range(len(labels))], dataset.classes, head.C,
                                   config.seed)
        runs.write_json(run_dir / runs.DIAGNOSTICS, report)
    chosen = {"C": head.C, "val_acc": head.val_acc, "val_loss": head.val_loss, "flip": config.probe_flip}
    return {**chosen, "features": x} if keep else chosen


def _predicted(logits: torch.Tensor, indices: list[int], labels: list[int]) -> list[tuple]:
    """(index, true, predicted, confidence) of each image, as _evaluate(keep=True) gives."""
    conf, pred = logits[indices].softmax(1).max(1)
    return [(i, labels[i], p, c) for i, p, c in zip(indices, pred.tolist(), conf.tolist())]


def _loss_acc(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if not len(y):
        return float("nan"), 0.0
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


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
