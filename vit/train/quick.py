"""The quick model and the head of LP-FT: the backbone frozen, its features computed once (vit.data.features), a
linear head fitted on them (vit.train.probe) and put in the model, which is saved as any run."""
from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vit import probe, runs, trust
from vit.runs import RunState
from vit.data import features
from vit.data import Dataset, DecodeCache
from vit.data.pixels import read_for_model
from vit.train.config import TrainConfig
from vit.train.distributed import Distributed
from vit.train.events import Emitter, StopFlag, cancelled
from vit.train.metrics import delivered, estimate_line, holdout, loss_acc
from vit.train.prepare import prepare
from vit.train.transforms import Images, export_data_config


def fit_quick(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: "Emitter",
               should_stop: Callable[[], bool] | None, ddp: "Distributed") -> dict:
    """The quick model: the backbone frozen, only the head fitted (logistic regression on the cached
    features, its penalty chosen on validation). Saved like any run, so everything downstream works."""
    t0 = time.perf_counter()
    classes = dataset.classes
    p = prepare(dataset, config, run_dir, emit, ddp, epochs=1, train_images=False)
    model, dcfg, labels = p.model, p.dcfg, p.labels
    head = probe_head(model, dcfg, dataset, p.eval_cache, labels, config, run_dir, emit, p.device,
                       StopFlag(run_dir, should_stop, ddp), ddp.is_main, keep=True)
    if head is None:
        return cancelled(emit, 0, 0, [], {"epoch": None})
    x, y = head.pop("features"), torch.tensor(labels)
    layer = features.classifier(model)
    logits = x @ layer.weight.detach().cpu().T + layer.bias.detach().cpu()
    elapsed = time.perf_counter() - t0
    split = holdout(dataset, config.seed)
    train_loss, train_acc = loss_acc(logits[dataset.train], y[dataset.train])
    val_loss, val_acc = loss_acc(logits[split.select], y[split.select]) if split.select else \
        loss_acc(logits[split.estimate], y[split.estimate])  # (the curve's point; the penalty chose on select)
    best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": 1}
    history = [{"epoch": 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc, "lr": 0.0, "images_per_s": len(labels) / max(elapsed, 1e-9),
                "epoch_time": elapsed, "img_size": dcfg["input_size"][-1], "eta_s": 0.0, "best_epoch": 1}]
    record = {**asdict(config), "classes": classes, "img_size_used": dcfg["input_size"][-1], "probe_head": head,
              "built": p.built}
    if ddp.is_main:
        runs.save_model(run_dir, model, classes, record, data_config=export_data_config(dcfg))
        runs.write_metrics_log(run_dir, history)
    crossed = None
    if dataset.train:  # the training images' probabilities out of fold, for the temperature (log: logits to it)
        probs = probe.cross_val_proba(x[dataset.train], y[dataset.train], len(classes), head["C"], seed=config.seed)
        crossed = (probs.clamp_min(1e-12).log(), y[dataset.train])
    bank = trust.bank_sample(labels, dataset.train, config.seed)
    feats = _trust_features(model, p, bank + split.select + split.estimate, len(labels))
    metrics = delivered(logits, feats, dataset, labels, split, bank, best, history, False, config.seed, run_dir,
                        ddp.is_main, quick=True, crossed=crossed)
    emit.status(RunState.COMPLETED, epoch=1, message=f"Quick model: {estimate_line(metrics['accuracy_estimate'])} "
                                                     f"(a head fitted on frozen features in {elapsed:.0f} s)")
    emit.event(type="end", metrics=metrics)
    return metrics


def _trust_features(model: nn.Module, p, indices: list[int], n: int) -> dict | None:
    """The features the "none of these" check reads (vit.trust.Seen.features: the first block's tokens too, which
    the feature cache does not keep) of the images at `indices`, in rows by dataset index."""
    import contextlib
    if not indices:
        return None
    p.eval_cache.fill(indices=indices)
    images = Images(p.eval_cache, indices, p.labels, p.pixels.tensor)
    _, f = trust.collect(model, torch.utils.data.DataLoader(images, batch_size=64), p.device, contextlib.nullcontext)
    return trust.put(None, f, indices, n)


def probe_head(model: nn.Module, dcfg: dict, dataset: Dataset, cache: DecodeCache, labels: list[int],
                config: TrainConfig, run_dir: Path, emit: "Emitter", device, stop, is_main: bool,
                keep: bool = False) -> dict | None:
    """Fit the model's head on its frozen features (cached under the runs' root) and put it in the model; `cache`
    holds the images as inference crops them (Prepared.eval_cache);
    write what the features say about the data (diagnostics.json). Returns what was chosen (with the
    features when `keep`), None when asked to stop."""
    shas = [it.sha256 for it in dataset.items]
    emit.status(RunState.RUNNING, message=f"Computing the frozen features of {len(shas)} images")

    def computed(flip: bool):
        return features.extract(model, dcfg, cache.pil, shas, cache_dir=run_dir.parent / runs.FEATURES,
                                device=device, flip=flip, should_stop=stop,
                                progress=lambda done, total: emit.event(type="features", done=done, total=total))
    x = computed(False)
    mirrored = computed(True) if config.probe_flip and x is not None else None
    if x is None or (config.probe_flip and mirrored is None):
        return None
    emit.status(RunState.RUNNING, message="Fitting the head on the frozen features")
    choosing = holdout(dataset, config.seed).select  # (the images that choose the penalty)
    y, train, val = torch.tensor(labels), torch.tensor(dataset.train), torch.tensor(choosing, dtype=torch.long)
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
        emit.status(RunState.RUNNING,
                    message="Reading the features for near-duplicates, label errors, a learning curve")
        splits = {i: s for s, idx in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))
                  for i in idx}
        picked = random.Random(config.seed).sample(range(len(labels)), min(features.COPY_SAMPLES, len(labels)))
        copies = features.copy_similarities(model, dcfg, [read_for_model(dataset.items[i].path) for i in picked],
                                            device)
        report = features.diagnose(x, labels, [it.name for it in dataset.items],
                                   [splits.get(i, "") for i in range(len(labels))], dataset.classes, head.C,
                                   config.seed, copies=copies, copied=picked)
        runs.write_json(run_dir / runs.DIAGNOSTICS, report)
    chosen = {"C": head.C, "val_acc": head.val_acc, "val_loss": head.val_loss, "val_images": len(val),
              "flip": config.probe_flip}
    return {**chosen, "features": x} if keep else chosen
