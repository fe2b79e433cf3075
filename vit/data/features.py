"""Frozen features: what a model's backbone makes of each image, computed once and cached on disk, and what
they say about the data (near-duplicates, train/validation leakage, likely label errors, a learning curve).

    x = extract(model, dcfg, images, shas, cache_dir=root / ".features")   # (images, features)
    report = diagnose(x, labels, names, splits, classes, C=1.0)

The cache is keyed by the model as built (its weights and layers, the classifier left out, since a new
head does not change the features), the preprocessing and the view, then by each image's sha256; so a
second run on the same images and model, or a quick model after a fine-tune's LP-FT start, computes
nothing again. Knows nothing of runs or the UI.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vit import probe

CACHE_MAX_BYTES = 512 * 1024 ** 2   # the whole feature cache; the least recently used files go first
BATCH = 64
NEAR_DUPLICATE = 0.95               # cosine similarity of near-duplicates, when no copies calibrate it
COPY_RECALL = 0.9                   # the share of known copies found at the calibrated similarity
COPY_MARGIN = 0.5                   # ... and the share that stand out from the originals' neighbours by the margin
COPY_SAMPLES = 24                   # images copied to calibrate on
JUDGE_FLOOR = 0.90                  # the probe's cross-validated accuracy from which it may doubt labels
MAX_PAIRS = 100
MAX_SUSPECTS = 100                  # likely label errors kept in the report (the count says how many in all)
CURVE = (0.25, 0.5, 0.75, 1.0)
PIPELINE = "eval-crop-2"            # how images reach the model (vit.data.pixels): part of the cache's key


class FeatureError(ValueError):
    """The model cannot give frozen features; the message says why and what to do."""


def classifier(model: nn.Module) -> nn.Linear:
    """The model's final linear layer (the head a probe replaces); FeatureError for a model without one."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear) or not hasattr(model, "forward_head"):
        raise FeatureError(f"{type(model).__name__} has no single linear classifier head, so a head cannot be "
                           "fitted on its frozen features. Use a ViT from the catalog, or full training.")
    return head


def fingerprint(model: nn.Module, dcfg: dict, view: str = "") -> str:
    """What the features depend on: the weights and layers as built (the classifier left out), the
    preprocessing and the view."""
    head = classifier(model)
    skip = {p.data_ptr() for p in head.parameters()}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([type(model).__name__, str(getattr(model, "global_pool", "")), view,
                         {k: v for k, v in sorted(dcfg.items())}], default=str).encode())
    for name, child in model.named_children():
        if child is not head:
            h.update(f"{name}:{child!r}".encode())
    for name, t in model.state_dict().items():
        if t.data_ptr() in skip:
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def extract(model: nn.Module, dcfg: dict, images: Callable[[int], "object"], shas: list[str], *,
            cache_dir: Path | None = None, device: torch.device | str = "cpu", flip: bool = False,
            progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """The frozen features (the pre-logits the classifier sees) of each image: `images(k)` gives the k-th
    as a PIL image already resized and cropped for the model (vit.data.pixels: EvalPixels.crop of
    read_for_model), `shas[k]` its sha256. Cached ones are read, the rest computed in eval mode and added to
    the cache. `flip`: of the mirror image. None when `should_stop` asked to stop."""
    from vit.data.pixels import EvalPixels
    classifier(model)
    transform = EvalPixels(dcfg).tensor
    key = fingerprint(model, dcfg, PIPELINE + ("-hflip" if flip else ""))
    known = _read(cache_dir, key)
    todo = [k for k, s in enumerate(shas) if s not in known]
    firsts = list({shas[k]: k for k in reversed(todo)}.values())  # one computation per distinct image
    was_training = model.training
    model.eval()
    new: dict[str, torch.Tensor] = {}
    try:
        for start in range(0, len(firsts), BATCH):
            if should_stop is not None and should_stop():
                return None
            chunk = firsts[start:start + BATCH]
            pictures = [images(k) for k in chunk]
            if flip:
                pictures = [p.transpose(0) for p in pictures]  # PIL's FLIP_LEFT_RIGHT
            x = torch.stack([transform(p) for p in pictures]).to(device)
            out = model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()
            new.update({shas[k]: row for k, row in zip(chunk, out)})
            if progress is not None:
                progress(min(start + BATCH, len(firsts)), len(firsts))
    finally:
        model.train(was_training)
    if new and cache_dir is not None:
        _write(cache_dir, key, {**known, **new})
    every = {**known, **new}
    return torch.stack([every[s] for s in shas]) if shas else torch.zeros(0, classifier(model).in_features)


def diagnose(x: torch.Tensor, labels: list[int], names: list[str], splits: list[str], classes: list[str],
             C: float = 1.0, seed: int = 0, copies: torch.Tensor | None = None,
             copied: list[int] | None = None) -> dict:
    """What the features say about a dataset: near-duplicate pairs (with those that cross from train into
    validation or test), likely label errors by confident learning on a cross-validated probe, and a learning
    curve. Each list is given only where the features can judge: label errors when the probe's cross-validated
    accuracy reaches JUDGE_FLOOR, near-duplicates by a rule calibrated on known copies of the dataset's own
    images (`copies`: their similarities to the originals `copied`, copy_similarities; copy_rule), only when
    copies stand out from distinct images. `judged` says why a list is withheld."""
    y = torch.tensor(labels, dtype=torch.long)
    train = torch.tensor([s == "train" for s in splits])
    val = torch.tensor([s == "val" for s in splits])
    labels_judged = {"ok": False, "cv_acc": None, "floor": JUDGE_FLOOR,
                     "why": "a single class: no other label to suggest"}
    suspects = []
    if len(torch.unique(y)) >= 2:
        probs = probe.cross_val_proba(x, y, len(classes), C, folds=5, seed=seed)
        cv_acc = int((probs.argmax(1) == y).sum()) / len(y)  # (exact: 54 of 60 is 90%, not a float below it)
        ok = cv_acc >= JUDGE_FLOOR
        labels_judged = {"ok": ok, "cv_acc": round(cv_acc, 4), "floor": JUDGE_FLOOR, "why": "" if ok else (
            f"the features are too weak to judge labels yet: a head fitted on them gets {cv_acc:.0%} of the images "
            f"right when it has not seen them (cross-validated), under the {JUDGE_FLOOR:.0%} from which its doubts "
            "mean more than its own mistakes")}
        suspects = label_issues(probs, y, names, classes) if ok else []
    neighbours = _neighbours(x, 2) if len(x) > 2 else None  # (one pass over the pairs serves both)
    nearest = neighbours[0][:, 0] if neighbours is not None else None
    pairs_judged = copy_rule(x, copies, copied, nearest=nearest)
    pairs = near_duplicates(x, names, splits, pairs_judged, neighbours) if pairs_judged["ok"] else []
    return {"near_duplicates": pairs,
            "label_errors": suspects[:MAX_SUSPECTS], "suspects": len(suspects),
            "judged": {"labels": labels_judged, "near_duplicates": pairs_judged},
            "learning_curve": learning_curve(x[train], y[train], x[val], y[val], len(classes), C, seed),
            "images": len(names), "C": C}


def copy_rule(x: torch.Tensor, copies: torch.Tensor | None, copied: list[int] | None = None,
              nearest: torch.Tensor | None = None) -> dict:
    """When a pair counts as a near-duplicate, calibrated on known copies of the dataset's own images (`copies`:
    the similarities of the copies of each image `copied` to it, copy_similarities; resized, re-encoded, cropped):
    - `threshold`: the similarity at which COPY_RECALL of the copies are found;
    - `margin`: by how much a copy stands out from the original's nearest other image in the dataset, for
      COPY_MARGIN of them (the median: the harsher copies, a half-size image or a crop, stand out less than the
      copies people make). A pair must beat each image's next most similar image by that much: distinct
      look-alikes in a crowd of similar images do not, copies do.
    `ok` is False (no pair shown, `why` says so) when more than 1 - COPY_RECALL of the copies do not stand out at
    all: the features cannot tell a copy from a distinct image. Without copies: NEAR_DUPLICATE and no margin.
    `nearest`: nearest_similarity(x), when the caller has it."""
    if copies is None or not len(copies):
        return {"ok": True, "threshold": NEAR_DUPLICATE, "margin": 0.0, "copies": 0, "why": ""}
    copies = copies.float()
    threshold = float(torch.quantile(copies, 1 - COPY_RECALL))
    margin, ok = 0.0, True
    if copied:
        nearest = nearest_similarity(x) if nearest is None else nearest
        ahead = copies - nearest[torch.tensor(copied)].repeat_interleave(len(copies) // len(copied))
        margin = float(torch.quantile(ahead, 1 - COPY_MARGIN))
        ok = float(torch.quantile(ahead, 1 - COPY_RECALL)) > 0  # (most copies must stand out at all)
    why = "" if ok else (
        f"the features are too weak to find near-duplicates yet: copies of your images (resized, re-encoded, "
        f"cropped) are found at a similarity of {threshold:.3f}, but they are no closer to their originals than "
        "the originals' nearest other images are, so a similar pair is no sign of a copy")
    return {"ok": ok, "threshold": round(threshold, 6), "margin": round(margin, 6), "copies": len(copies),
            "why": why}


def nearest_similarity(x: torch.Tensor) -> torch.Tensor:
    """Each image's cosine similarity to its most similar other image."""
    return _neighbours(x, 1)[0][:, 0] if len(x) > 1 else torch.zeros(0)


def _neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's k most similar other images: (similarities, indices), [n, k] each, most similar first."""
    n = len(x)
    z = nn.functional.normalize(x.float(), dim=1)
    values, indices = torch.empty(n, k), torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, 1024):  # blocks: memory stays (1024 x n)
        sim = z[start:start + 1024] @ z.T
        rows = torch.arange(start, min(start + 1024, n))
        sim[rows - start, rows] = -1.0
        top = sim.topk(k, dim=1)
        values[rows], indices[rows] = top.values, top.indices
    return values, indices


def near_duplicates(x: torch.Tensor, names: list[str], splits: list[str], rule: dict | None = None,
                    neighbours: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """Pairs of images at least `rule["threshold"]` similar (cosine of their features) that also beat each
    image's next most similar image by `rule["margin"]` (copy_rule), most similar first; `leak` when one is in
    train and the other in validation or test. `neighbours`: _neighbours(x, 2), when the caller has it."""
    rule = rule or {"threshold": NEAR_DUPLICATE, "margin": 0.0}
    n = len(x)
    if n < 3:
        return []
    values, indices = neighbours if neighbours is not None else _neighbours(x, 2)
    pairs = []
    for i in range(n):
        j, s_ij = int(indices[i, 0]), float(values[i, 0])
        if i >= j and int(indices[j, 0]) == i:
            continue  # (a mutual pair, taken from its first image)
        if s_ij < rule["threshold"]:
            continue
        other_i = float(values[i, 1])
        other_j = float(values[j, 1]) if int(indices[j, 0]) == i else float(values[j, 0])
        if s_ij - max(other_i, other_j) >= rule["margin"]:
            a, b = min(i, j), max(i, j)
            pairs.append((s_ij, a, b))
    found = sorted(set(pairs), reverse=True)[:MAX_PAIRS]
    return [{"a": names[i], "b": names[j], "similarity": round(s, 4), "splits": [splits[i], splits[j]],
             "leak": "train" in (splits[i], splits[j]) and splits[i] != splits[j]} for s, i, j in found]


def label_issues(probs: torch.Tensor, y: torch.Tensor, names: list[str], classes: list[str]) -> list[dict]:
    """Likely label errors by confident learning (cleanlab's find_label_issues: per-class thresholds, pruned by
    the estimated noise rates) on out-of-fold probabilities, the least confident in their label first."""
    from cleanlab.filter import find_label_issues
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (cleanlab warns about tiny classes; they are judged all the same)
        found = find_label_issues(labels=y.numpy(), pred_probs=probs.double().numpy(), filter_by="prune_by_noise_rate",
                                  return_indices_ranked_by="self_confidence", n_jobs=1)
    given = probs[torch.arange(len(y)), y]
    other = probs.clone()
    other[torch.arange(len(y)), y] = -1.0
    best_p, best = other.max(1)
    return [{"name": names[i], "label": classes[y[i]], "suggested": classes[best[i]],
             "p_suggested": round(float(best_p[i]), 4), "p_label": round(float(given[i]), 4)}
            for i in (int(k) for k in found)]


@torch.no_grad()
def copy_similarities(model: nn.Module, dcfg: dict, originals: list, device: torch.device | str = "cpu"
                      ) -> torch.Tensor:
    """The cosine similarity of each image's features to those of its known copies: shrunk to half and enlarged
    back, re-encoded as a JPEG of quality 60, cropped to 90% of each side. `originals`: images as read for the
    model (vit.data.pixels.read_for_model); they go through the same crop and transform."""
    import io
    from PIL import Image
    from vit.data.pixels import EvalPixels
    pixels = EvalPixels(dcfg)

    def reencoded(img):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=60)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def cropped(img):
        w, h = img.size
        return img.crop((w // 20, h // 20, w - w // 20, h - h // 20))

    def resized(img):
        w, h = img.size
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR).resize((w, h), Image.BILINEAR)

    was_training = model.training
    model.eval()
    try:
        sims = []
        for start in range(0, len(originals), BATCH // 4):
            chunk = originals[start:start + BATCH // 4]
            views = [v for img in chunk for v in (img, resized(img), reencoded(img), cropped(img))]
            x = torch.stack([pixels(v) for v in views]).to(device)
            f = nn.functional.normalize(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu(),
                                        dim=1).view(len(chunk), 4, -1)
            sims.append((f[:, 1:] * f[:, :1]).sum(-1).flatten())
    finally:
        model.train(was_training)
    return torch.cat(sims) if sims else torch.zeros(0)


def label_error_ranking(x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float, seed: int = 0) -> list[int]:
    """Every image, most suspect first (the probability of its label under a head fitted without it)."""
    probs = probe.cross_val_proba(x, y, n_classes, C, folds=5, seed=seed)
    return torch.argsort(probs[torch.arange(len(y)), y]).tolist()


def learning_curve(x_train, y_train, x_val, y_val, n_classes: int, C: float, seed: int = 0) -> dict:
    """Validation accuracy of the probe on 25/50/75/100% of the training images, and what it means."""
    if not len(x_val) or len(torch.unique(y_train)) < 2:
        return {"points": [], "verdict": "No validation images, so no learning curve."}
    points = []
    for fraction in CURVE:
        idx = probe.subset(y_train, fraction, seed)
        head = probe.fit(x_train[idx], y_train[idx], n_classes, C)
        acc = float((head.logits(x_val).argmax(1) == y_val).float().mean())
        points.append({"fraction": fraction, "images": len(idx), "val_acc": round(acc, 4)})
    gain = points[-1]["val_acc"] - points[-2]["val_acc"]
    if points[-1]["val_acc"] >= 0.99:
        verdict = "The probe is already near perfect: more images of the same kind would change little."
    elif gain >= 0.02:
        verdict = (f"Still rising ({gain:+.1%} from 75% to all of the images): more images would likely help, "
                   "most in the classes the probe confuses.")
    else:
        verdict = (f"Flat at the end ({gain:+.1%} from 75% to all): more of the same images would help little; "
                   "fine-tuning the whole model, cleaner labels or more varied images would help more.")
    return {"points": points, "verdict": verdict}


def _path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.safetensors"


def _read(cache_dir: Path | None, key: str) -> dict[str, torch.Tensor]:
    if cache_dir is None or not _path(cache_dir, key).is_file():
        return {}
    from safetensors.torch import load_file
    try:
        stored = load_file(_path(cache_dir, key))
        os.utime(_path(cache_dir, key))  # recently used: trimmed last
    except Exception:  # a damaged cache file is only a cache miss
        return {}
    return {bytes(s.tolist()).hex(): row for s, row in zip(stored["sha"], stored["x"])}


def _write(cache_dir: Path, key: str, rows: dict[str, torch.Tensor]) -> None:
    """Store atomically, then trim the cache to CACHE_MAX_BYTES (oldest first). A cache that cannot be
    written (a full or read-only disk) only costs the next run the same computation."""
    from safetensors.torch import save_file
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        sha = torch.tensor([list(bytes.fromhex(s)) for s in rows], dtype=torch.uint8)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        save_file({"sha": sha, "x": torch.stack(list(rows.values())).contiguous()}, tmp)
        os.replace(tmp, _path(cache_dir, key))
        files = sorted(cache_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for p in files:
            total += p.stat().st_size
            if total > CACHE_MAX_BYTES and p != _path(cache_dir, key):
                p.unlink(missing_ok=True)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
