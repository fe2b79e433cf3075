"""The final report of a run: confusion matrix, per-class precision/recall/F1, the misclassified images."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vit.data import Dataset


def final_metrics(predictions, dataset: Dataset, classes: list[str], best: dict, history: list[dict],
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


def predicted(logits: torch.Tensor, indices: list[int], labels: list[int]) -> list[tuple]:
    """(index, true, predicted, confidence) of each image, as evaluate(keep=True) gives."""
    conf, pred = logits[indices].softmax(1).max(1)
    return [(i, labels[i], p, c) for i, p, c in zip(indices, pred.tolist(), conf.tolist())]


def loss_acc(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if not len(y):
        return float("nan"), 0.0
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
