"""A linear probe: multinomial logistic regression with an L2 penalty, fitted on frozen features.

    head = fit_head(x_train, y_train, x_val, y_val, n_classes)   # the penalty chosen on validation
    model.get_classifier().weight.data[:] = head.weight           # a timm model with the fitted head

It is the quick model (the whole training), the start of LP-FT (fine-tuning from a fitted head instead of
a random one, Kumar et al., ICLR 2022), and the judge of the data diagnostics (cross-validated, so no image
is judged by a head fitted on it). Full-batch L-BFGS on standardised features, as scikit-learn's
LogisticRegression(solver="lbfgs") does; the standardisation is folded back into the weights, so the head
applies to the raw features. Pure torch: knows nothing of runs, data or the UI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

# Inverse penalty strengths tried, in scikit-learn's sense (C = 1 / (penalty * images)); weak to strong.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MAX_ITER = 300


@dataclass
class Head:
    weight: torch.Tensor          # (classes, features), applies to the raw features
    bias: torch.Tensor            # (classes,)
    C: float                      # the penalty chosen (scikit-learn's C)
    val_acc: float | None = None  # on the validation features, when there were any
    val_loss: float | None = None
    grid: list = field(default_factory=list)  # [(C, val_acc, val_loss)] as tried

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight.T + self.bias


def fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float = 1.0, max_iter: int = MAX_ITER) -> Head:
    """Fit one multinomial logistic regression (mean cross-entropy + ||W||^2 / (2 C n)) by L-BFGS."""
    x, y = x.float(), y.long()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    penalty = 1.0 / (C * max(len(y), 1))
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * penalty * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return Head(weight=w / std, bias=b - (w * (mean / std)).sum(1), C=C)  # (x - m) / s @ w.T + b, folded


def fit_head(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor | None, y_val: torch.Tensor | None,
             n_classes: int, grid: tuple = C_GRID, folds: int = 5, seed: int = 0) -> Head:
    """The head fitted on the training features with the penalty that does best on validation (accuracy,
    then loss); without validation images the penalty is chosen by k-fold cross-validation on the
    training features. The head returned is fitted on the training features only."""
    tried = []
    for C in grid:
        if x_val is not None and len(x_val):
            head = fit(x_train, y_train, n_classes, C)
            acc, loss = _score(head.logits(x_val), y_val)
        else:
            probs = cross_val_proba(x_train, y_train, n_classes, C, folds, seed)
            acc = float((probs.argmax(1) == y_train).float().mean())
            loss = float(F.nll_loss(probs.clamp_min(1e-12).log(), y_train))
        tried.append((C, acc, loss))
    C, acc, loss = max(tried, key=lambda t: (round(t[1], 9), -t[2]))
    head = fit(x_train, y_train, n_classes, C)
    has_val = x_val is not None and len(x_val) > 0
    head.val_acc, head.val_loss = (acc, loss) if has_val else (None, None)
    head.grid = tried
    return head


def cross_val_proba(x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float, folds: int = 5,
                    seed: int = 0) -> torch.Tensor:
    """Out-of-fold class probabilities: each image is scored by a head fitted on the other folds
    (stratified). An image of a class too small to split is scored by a head fitted on all the others."""
    y = y.long()
    fold_of = stratified_folds(y, folds, seed)
    probs = torch.zeros(len(y), n_classes)
    for k in range(max(fold_of.tolist(), default=-1) + 1):
        held = fold_of == k
        if not held.any() or held.all():
            continue
        head = fit(x[~held], y[~held], n_classes, C)
        probs[held] = head.logits(x[held]).softmax(1)
    return probs


def stratified_folds(y: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """A fold number for each label, each class dealt round the folds in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.zeros(len(y), dtype=torch.long)
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        fold_of[idx] = torch.arange(len(idx)) % max(1, min(folds, len(idx)))
    return fold_of


def subset(y: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a stratified `fraction` of the labels (at least one per class)."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.append(idx[:max(1, math.ceil(fraction * len(idx)))])
    return torch.cat(picked).sort().values


def _score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    y = y.long()
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))
