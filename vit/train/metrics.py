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
from typing import TYPE_CHECKING

import numpy as np

from vit.data import Dataset

if TYPE_CHECKING:  # (torch is imported where it is used: the web page reads the wording here without it)
    import torch

HOLDOUT_MIN = 40   # validation images from which half is held out for the estimate (when there is no test split)
Z95 = 1.959964     # the normal quantile of a two-sided 95% interval


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
    return {"value": correct / len(scored) if scored else None, "low": round(low, 4), "high": round(high, 4),
            "images": len(scored), "correct": correct, "from": split.source, "says": split.describe(quick)}


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
    return {"classes": classes, "val_acc": float(np.trace(confusion) / total) if total else 0.0,
            "best_epoch": best["epoch"], "epochs_run": len(history), "stopped_early": stopped_early,
            "best_val_loss": best["val_loss"], "per_class": per_class, "confusion_matrix": confusion.tolist(),
            "misclassified": misclassified, "predictions": results, "history": history}


def predicted(logits: torch.Tensor, indices: list[int], labels: list[int]) -> list[tuple]:
    """(index, true, predicted, confidence, probability of the true class) of each image, as evaluate(keep=True)
    gives."""
    probs = logits[indices].softmax(1)
    conf, pred = probs.max(1)
    return [(i, labels[i], p, c, float(probs[k, labels[i]]))
            for k, (i, p, c) in enumerate(zip(indices, pred.tolist(), conf.tolist()))]


def loss_acc(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    from torch import nn
    if not len(y):
        return float("nan"), 0.0
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
