"""The final report of a run: confusion matrix, per-class precision/recall/F1, every validation image's result,
and the accuracy estimate, measured on images that chose nothing.

Which images choose and which estimate (holdout): with a test split, validation chooses (the epoch, early
stopping, the quick model's penalty) and the test split estimates. Without one, half of the validation images
(stratified, seeded) are held out when there are at least HOLDOUT_MIN of them: the other half chooses. With
fewer, nothing is chosen: the last epoch's weights are kept (no early stopping, the probe's penalty by
cross-validation on the training images) and all validation images estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vit.data import Dataset
from vit.data.report import IMBALANCE_WARN_RATIO

if TYPE_CHECKING:  # (torch is imported where it is used: the web page reads the wording here without it)
    import torch

HOLDOUT_MIN = 40   # validation images from which half is held out for the estimate (when there is no test split)
Z95 = 1.959964     # the normal quantile of a two-sided 95% interval
IMBALANCED = IMBALANCE_WARN_RATIO  # the largest class over the smallest from which the pages say "imbalanced"


@dataclass
class Holdout:
    select: list[int]     # the images that choose: the epoch, early stopping, the probe's penalty
    estimate: list[int]   # the images that choose nothing: the accuracy estimate is measured on them
    source: str           # "test", "holdout" (half of validation) or "unselected" (nothing chosen)

    def describe(self, quick: bool = False) -> str:
        chose = "the head's penalty" if quick else "the epoch or when to stop"
        n = len(self.estimate)
        if self.source == "test":
            return f"the test split ({n} images), used for nothing else"
        if self.source == "holdout":
            return (f"half of the validation images ({n}), held out: they chose neither {chose} "
                    f"(the other {len(self.select)} did)")
        if not n:
            return "no images: the dataset has neither validation nor test images"
        kept = "the head's penalty came from cross-validation on the training images" if quick else \
            "the last epoch's weights are kept, nothing chosen on them"
        return f"the validation images ({n}); too few to hold half out (under {HOLDOUT_MIN}), so {kept}"


def holdout(dataset: Dataset, seed: int = 0) -> Holdout:
    """Which images choose and which estimate (see the module's docstring)."""
    import torch
    from vit.probe import stratified_folds
    val = list(dataset.val)
    if dataset.test:
        return Holdout(val, list(dataset.test), "test")
    if len(val) >= HOLDOUT_MIN:
        fold = stratified_folds(torch.tensor(dataset.labels(val)), 2, seed).tolist()
        return Holdout([i for i, f in zip(val, fold) if f == 0], [i for i, f in zip(val, fold) if f == 1], "holdout")
    return Holdout([], val, "unselected")


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion of correct/n (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_estimate(predictions, split: Holdout, quick: bool = False) -> dict:
    """The delivered model's accuracy on the images that chose nothing, with a 95% Wilson interval:
    {"value", "low", "high", "images", "from"} (value None without such images)."""
    by_index = {i: (t, p) for i, t, p, *_ in predictions}
    scored = [by_index[i] for i in split.estimate if i in by_index]
    correct = sum(t == p for t, p in scored)
    low, high = wilson(correct, len(scored))
    balanced, macro_f1 = class_averages(scored)
    return {"value": correct / len(scored) if scored else None, "low": round(low, 4), "high": round(high, 4),
            "images": len(scored), "correct": correct, "from": split.source, "says": split.describe(quick),
            "balanced": balanced, "macro_f1": macro_f1}


def class_averages(pairs: list[tuple[int, int]]) -> tuple[float | None, float | None]:
    """Balanced accuracy (the mean of the classes' recalls) and macro F1 of (true, predicted) pairs, over the
    classes that have images among them."""
    present = sorted({t for t, _ in pairs})
    if not present:
        return None, None
    recalls, f1s = [], []
    for c in present:
        tp = sum(t == c and p == c for t, p in pairs)
        support, called = sum(t == c for t, _ in pairs), sum(p == c for _, p in pairs)
        recall, precision = tp / support, tp / called if called else 0.0
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return round(sum(recalls) / len(recalls), 4), round(sum(f1s) / len(f1s), 4)


def imbalance(dataset: Dataset) -> float | None:
    """The largest training class's images over the smallest's (None without training images)."""
    from vit.train.recipe import class_counts
    counts = class_counts(dataset)
    return max(counts) / min(counts) if counts and min(counts) else None


SOURCE_WORDS = {"test": "test images", "holdout": "held-out validation images",
                "unselected": "validation images, nothing chosen on them"}  # (the pages and the card say these)


def estimate_line(estimate: dict | None) -> str:
    """The accuracy estimate in one line: value, interval, images and where they come from."""
    if not estimate or estimate.get("value") is None:
        return "no accuracy estimate (no validation or test images to measure on)"
    return (f"accuracy {estimate['value']:.1%} (95% interval {estimate['low']:.0%}-{estimate['high']:.0%}) on "
            f"{estimate['images']} {SOURCE_WORDS.get(estimate.get('from'), 'images')}")


def selection(best: dict, history: list[dict], split: Holdout) -> dict:
    """The "best of N epochs" figure, labelled as chosen on its images: None when nothing was chosen."""
    if not split.select or best.get("epoch") is None:
        return None
    return {"val_acc": best["val_acc"], "epoch": best["epoch"], "epochs": len(history), "images": len(split.select)}


def final_metrics(predictions, dataset: Dataset, classes: list[str], best: dict, history: list[dict],
                   stopped_early: bool) -> dict:
    """predictions: (index, true, predicted, confidence, probability of the true class) of each image, as
    evaluate(keep=True) gives."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=int)
    for _, t, p, *_ in predictions:
        confusion[t, p] += 1
    per_class = {}
    for i, c in enumerate(classes):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(confusion[i].sum())}
    results = [{"name": dataset.items[i].name, "true": classes[t], "predicted": classes[p], "confidence": round(c, 6),
                "p_true": round(pt, 6)} for i, t, p, c, pt in predictions]
    misclassified = [r for r in results if r["true"] != r["predicted"]]
    total = int(confusion.sum())
    balanced, macro_f1 = class_averages([(t, p) for _, t, p, *_ in predictions])
    return {"classes": classes, "val_acc": float(np.trace(confusion) / total) if total else 0.0,
            "balanced_acc": balanced, "macro_f1": macro_f1, "imbalance": imbalance(dataset),
            "best_epoch": best["epoch"], "epochs_run": len(history), "stopped_early": stopped_early,
            "best_val_loss": best["val_loss"], "per_class": per_class, "confusion_matrix": confusion.tolist(),
            "misclassified": misclassified, "predictions": results, "history": history}


def predicted(logits: torch.Tensor, indices: list[int], labels: list[int], temperature: float = 1.0) -> list[tuple]:
    """(index, true, predicted, confidence, probability of the true class) of each image, the probabilities
    calibrated by `temperature` (vit.trust)."""
    probs = (logits[indices].float() / temperature).softmax(1)
    conf, pred = probs.max(1)
    return [(i, labels[i], p, c, float(probs[k, labels[i]]))
            for k, (i, p, c) in enumerate(zip(indices, pred.tolist(), conf.tolist()))]


def delivered(logits: torch.Tensor, feats: dict | None, dataset: Dataset, labels: list[int], split: Holdout,
              bank: list[int], best: dict, history: list[dict], stopped_early: bool, seed: int, run_dir,
              write: bool, quick: bool = False, crossed=None) -> dict:
    """metrics.json of the delivered model, from every image's logits and features (rows by dataset index; the
    validation and test images', and the training images' in `bank`). The temperature is fitted on the images that
    chose nothing (split.estimate; also on `crossed`, the cross-validated (logits, labels) of a quick model's
    training images), the "none of these" threshold on every validation and test image (none was trained on);
    both are saved with the run (vit.trust), and every probability reported is calibrated. Written when `write`
    (the main process)."""
    import torch
    from vit import runs, trust
    y, est, classes = torch.tensor(labels), split.estimate, dataset.classes
    held = split.select + est  # (none trained on: all set the threshold; only `est` the temperature)
    fitted, report = trust.fit(trust.take(feats, bank), y[bank], logits[held], trust.take(feats, held), y[held],
                               len(classes), seed, crossed=crossed, chose=len(split.select))
    if write:
        trust.save(run_dir, fitted, report)
    t = fitted.temperature
    metrics = final_metrics(predicted(logits, dataset.val, labels, t), dataset, classes, best, history, stopped_early)
    if dataset.test:  # the test split, reported apart
        held_out = final_metrics(predicted(logits, dataset.test, labels, t), dataset, classes, best, history,
                                 stopped_early)
        metrics["test"] = {k: held_out[k] for k in ("per_class", "confusion_matrix", "balanced_acc", "macro_f1")}
        metrics["test"].update(acc=held_out["val_acc"], images=len(dataset.test))
    if quick:
        metrics["quick"] = True
    metrics["accuracy_estimate"] = accuracy_estimate(predicted(logits, est, labels, t), split, quick)
    metrics["selection"] = None if quick else selection(best, history, split)  # (quick: the penalty, in config.json)
    metrics["calibration"] = report["calibration"]
    metrics["ood"] = report["ood"] or {"says": report["ood_says"]}
    if write:
        runs.write_json(Path(run_dir) / runs.METRICS, metrics)
    return metrics


def loss_acc(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    from torch import nn
    if not len(y):
        return float("nan"), 0.0
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
