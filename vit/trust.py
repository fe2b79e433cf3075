"""Answers you can trust: a temperature that calibrates the probabilities, and an out-of-distribution score that
says "none of these". Both are fitted when a run ends on images it was not trained on ("held-out": the
temperature on those that chose nothing, metrics.holdout; the threshold on every validation and test image),
saved with the run and read wherever a probability is shown (vit.predict: the app, the CLI, the batch CSV).

    trust, report = fit(train_features, train_labels, held_logits, held_features, held_labels, classes)
    save(run_dir, trust, report)         # ood.safetensors, and config.json's vit_studio.calibration and .ood
    trust = load(folder, classes, dim)   # Trust() (temperature 1, no check) where a model has none
    probs = trust.probabilities(logits); score = trust.score(features, logits); unsure = score > trust.threshold()

- Temperature scaling (Guo et al., 2017): one number dividing the logits, fitted by likelihood on the held-out
  logits. The expected calibration error is reported before and after; "after" is measured out of fold (each
  image's temperature fitted on the others), so it is not flattered by the fit.
- The out-of-distribution score, chosen by measurement (bench/trust_bench.py) against the distance to the K-th
  nearest training image (Sun et al., 2022) and max-softmax: the Mahalanobis distance (Lee et al., 2018; a shared
  covariance, Ledoit-Wolf shrinkage) of an image's features (the pre-logits the classifier reads) to the nearest
  class mean of the training images', plus that of its first block's tokens, averaged, to their mean (colour,
  texture: what sets a photo or a drawing apart from scans), each in units of its spread over the held-out
  images. Higher is less like the training images. The threshold accepts ACCEPT of the validation and test
  images (none trained on); their scores are saved, so another acceptance (the app's slider, `predict --accept`)
  is read from them.

Stock timm ignores ood.safetensors and the calibration (config.json's own keys are untouched). Knows nothing of
runs' other files or the UI.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vit import runs
from vit.runs import OOD as OOD_FILE

if TYPE_CHECKING:  # (torch is imported where it is used: the web page reads ACCEPT without it)
    import torch

FORMAT = "vit-studio-ood/1"
ACCEPT = 0.95             # the share of validation and test images (of the training classes) the threshold accepts
MIN_CALIBRATION = 20      # held-out images below which the temperature stays 1 (too few to fit one)
MIN_OOD = 10              # held-out images below which there is no threshold
BANK_MAX = 2000           # training images kept for the nearest-neighbour score (a seeded, stratified sample)
K = 5                     # the K-th nearest training image (fewer when there are fewer)
ECE_BINS = 15             # equal-width confidence bins of the expected calibration error
DIAGRAM_BINS = 10         # ... and of the reliability diagram
PRIOR = 1.0               # a weak Gaussian prior on log T: a few error-free images cannot drive T to 0
METHODS = ("mahalanobis", "knn", "msp")
METHOD = "mahalanobis"
MAX_FILE_BYTES = 64 * 1024 ** 2   # an ood.safetensors larger than this (from the Hub, say) is not read
WORDS = {"knn": "distance to the nearest training images' features",
         "mahalanobis": "Mahalanobis distance of the features to the nearest class mean of the training images",
         "msp": "1 - the highest calibrated probability"}


@dataclass
class Trust:
    """What a model's answers are read with: the temperature, and (when it has one) the out-of-distribution
    check. `note` says why there is no check, where there is none."""
    temperature: float = 1.0
    method: str | None = None
    tensors: dict = field(default_factory=dict)   # mahalanobis: means, precision (early_*, scale); knn: bank
    heldout: torch.Tensor | None = None           # held-out in-distribution scores, sorted
    accept: float = ACCEPT
    note: str = ""

    @property
    def checks(self) -> bool:
        return self.method is not None and self.heldout is not None and len(self.heldout) > 0

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.float() / self.temperature).softmax(-1)

    def score(self, features: dict | None, logits: torch.Tensor) -> torch.Tensor | None:
        """Each image's out-of-distribution score (higher: less like the training images); None without a check."""
        if not self.checks:
            return None
        return ood_scores(self.method, self.tensors, features, self.probabilities(logits))

    def stranger_than(self, score: float) -> float | None:
        """The share of the held-out images of the training classes that look more like them than an image of
        this score does."""
        if not self.checks:
            return None
        return float((self.heldout < score).double().mean())

    def threshold(self, accept: float | None = None) -> float | None:
        """The score above which an image is "not sure": the `accept` quantile of the held-out scores."""
        import numpy as np
        if not self.checks:
            return None
        accept = self.accept if accept is None else min(max(float(accept), 0.0), 1.0)
        return float(np.quantile(self.heldout.double().numpy(), accept))


# ---------------------------------------------------------------------------
# calibration

def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    import torch
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels, reduction="sum"))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that maximises the likelihood of the labels (a weak prior on log T keeps it finite when
    every image is right)."""
    from scipy.optimize import minimize_scalar
    labels = labels.long()
    if len(labels) == 0:
        return 1.0
    res = minimize_scalar(lambda u: nll(logits, labels, math.exp(u)) + 0.5 * (u / PRIOR) ** 2,
                          bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: the images' share in each confidence bin times the gap
    between the bin's accuracy and its mean confidence, summed."""
    rows = reliability(probs, labels, bins)
    n = max(sum(r["images"] for r in rows), 1)
    return float(sum(r["images"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["images"]))


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = DIAGRAM_BINS) -> list[dict]:
    """The reliability diagram's bins: [low, high), images, mean confidence, accuracy."""
    import torch
    conf, pred = probs.max(-1)
    right = (pred == labels.long()).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.clamp(torch.bucketize(conf.double(), edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        rows.append({"low": round(float(edges[b]), 4), "high": round(float(edges[b + 1]), 4), "images": n,
                     "confidence": float(conf.double()[m].mean()) if n else 0.0,
                     "accuracy": float(right[m].mean()) if n else 0.0})
    return rows


def calibrate(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0, folds: int = 5) -> dict:
    """The temperature fitted on all the held-out logits, and the calibration before and after it: the
    'after' probabilities out of fold (each fold's temperature fitted on the other folds)."""
    import torch
    labels = labels.long()
    n = len(labels)
    before = logits.float().softmax(-1)
    report = {"images": n, "ece_before": round(ece(before, labels), 4), "bins": ECE_BINS,
              "diagram_before": reliability(before, labels)}
    if n < MIN_CALIBRATION:
        return {**report, "temperature": 1.0, "ece_after": None, "diagram_after": None,
                "says": f"not calibrated: {n} images that chose nothing, under the {MIN_CALIBRATION} a temperature "
                        "needs"}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    after = torch.empty_like(before)
    for k in range(folds):
        held = order[k::folds]
        rest = torch.ones(n, dtype=torch.bool)
        rest[held] = False
        t = fit_temperature(logits[rest], labels[rest])
        after[held] = (logits[held].float() / t).softmax(-1)
    t = fit_temperature(logits, labels)
    return {**report, "temperature": round(t, 4), "ece_after": round(ece(after, labels), 4),
            "diagram_after": reliability(after, labels),
            "says": f"temperature {t:.2f} fitted on {n} images that chose nothing"}


# ---------------------------------------------------------------------------
# out of distribution

def fit_ood(method: str, train: dict, train_labels: torch.Tensor, classes: int, held: dict | None) -> dict:
    """What `method` needs from the training images' features (train: {"final", and "early" where read}), as
    tensors; the held-out images' set the scale of the two Mahalanobis distances."""
    import torch
    if method == "knn":
        return {"bank": _normalised(train["final"]).half()}
    if method == "msp":
        return {}
    if method != "mahalanobis":
        raise ValueError(f"unknown out-of-distribution method {method!r}; one of {', '.join(METHODS)}")
    y = train_labels.long()
    x = train["final"].double()
    means = torch.stack([x[y == c].mean(0) if (y == c).any() else x.mean(0) for c in range(classes)])
    tensors = {"means": means.float(), "precision": _precision(x - means[y])}
    if train.get("early") is not None and held is not None and held.get("early") is not None:
        early = train["early"].double()
        mean = early.mean(0, keepdim=True)
        tensors.update(early_mean=mean.float(), early_precision=_precision(early - mean))
        d_final = _nearest(held["final"], tensors["means"], tensors["precision"])
        d_early = _nearest(held["early"], tensors["early_mean"], tensors["early_precision"])
        tensors["scale"] = torch.tensor([d_final.mean(), d_final.std().clamp_min(1e-6), d_early.mean(),
                                         d_early.std().clamp_min(1e-6)]).float()
    return tensors


def ood_scores(method: str, tensors: dict, features: dict | None, probs: torch.Tensor) -> torch.Tensor:
    """Each image's score under `method` (higher: less like the training images). mahalanobis: the distance of
    the features to the nearest class mean, plus (where the run has it) that of the first block's tokens to
    their mean, each in units of its spread over the held-out images."""
    if method == "msp":
        return 1.0 - probs.max(-1).values.double()
    if features is None:
        raise ValueError("this score needs the features")
    if method == "knn":
        bank = tensors["bank"].float()
        sims = _normalised(features["final"]) @ bank.T
        k = min(K, bank.shape[0])
        return (1.0 - sims.topk(k, dim=-1).values[:, -1]).double()
    d_final = _nearest(features["final"], tensors["means"], tensors["precision"])
    if "scale" not in tensors:
        return d_final
    if features.get("early") is None:
        raise ValueError("this score needs the first block's tokens")
    s = tensors["scale"].double()
    d_early = _nearest(features["early"], tensors["early_mean"], tensors["early_precision"])
    return (d_final - s[0]) / s[1] + (d_early - s[2]) / s[3]


def _precision(centred: torch.Tensor) -> torch.Tensor:
    """The inverse of the covariance, shrunk towards a scaled identity (Ledoit-Wolf: a few hundred images in
    hundreds of dimensions)."""
    import torch
    from sklearn.covariance import LedoitWolf
    return torch.from_numpy(LedoitWolf(assume_centered=True).fit(centred.numpy()).precision_).float()


def _nearest(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """The squared Mahalanobis distance of each row of x to the nearest of `means`."""
    import torch
    diff = x.float()[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", diff, precision, diff).min(-1).values.double()


def put(features: dict | None, rows: dict | None, indices: list[int], n: int) -> dict | None:
    """Features of n images by dataset index (per kind), with `rows` put at `indices`; None where the model's
    classifier input cannot be read."""
    import torch
    if rows is None:
        return None
    features = {k: torch.zeros(n, v.shape[1]) for k, v in rows.items()} if features is None else features
    for k in features:
        features[k][indices] = rows[k]
    return features


def take(features: dict | None, indices) -> dict | None:
    """The rows `indices` of each kind of features."""
    return None if features is None else {k: v[indices] for k, v in features.items()}


def bank_sample(labels: list[int], indices: list[int], seed: int = 0, cap: int = BANK_MAX) -> list[int]:
    """At most `cap` of the training images, drawn at random (seeded; each class in proportion, on average): those
    the score is fitted on. (`labels`: theirs, for a caller's reference.)"""
    import numpy as np
    if len(indices) <= cap:
        return list(indices)
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(len(indices), cap, replace=False).tolist())
    return [i for k, i in enumerate(indices) if k in keep]


def fit(train_features: dict | None, train_labels: torch.Tensor, held_logits: torch.Tensor,
        held_features: dict | None, held_labels: torch.Tensor, classes: int, seed: int = 0,
        method: str = METHOD, crossed: tuple[torch.Tensor, torch.Tensor] | None = None,
        chose: int = 0) -> tuple[Trust, dict]:
    """The temperature and the out-of-distribution check from a run's final outputs: the training images'
    features (a bank_sample of them; {"final", "early"}: Seen.features) and the held-out images' logits and
    features. The first `chose` held-out images chose something (the epoch): they set the threshold with the
    others (none was trained on), not the temperature. `crossed`: more (logits, labels) that chose nothing,
    cross-validated (the quick model's training images), for the temperature alone. Returns the Trust and what
    it says (for config.json, metrics.json, the pages and the card)."""
    import torch
    fit_logits, fit_labels = held_logits[chose:], held_labels[chose:]
    if crossed is not None and len(crossed[1]):
        calibration = calibrate(torch.cat([fit_logits.float(), crossed[0].float()]),
                                torch.cat([fit_labels.long(), crossed[1].long()]), seed)
        calibration["says"] += f" ({len(fit_labels)} held out, {len(crossed[1])} cross-validated training images)"
    else:
        calibration = calibrate(fit_logits, fit_labels, seed)
    trust = Trust(temperature=calibration["temperature"])
    if (train_features is None or held_features is None) and method != "msp":
        method = "msp"  # (a model whose classifier's input cannot be read)
    n = len(held_labels)
    if n < MIN_OOD or (method != "msp" and not len(train_labels)):
        trust.note = (f"no 'none of these' check: {n} validation images, under the {MIN_OOD} a threshold needs"
                      if n < MIN_OOD else "no 'none of these' check: no training images to compare with")
        return trust, {"calibration": calibration, "ood": None, "ood_says": trust.note}
    trust.method = method
    trust.tensors = fit_ood(method, train_features, train_labels, classes, held_features)
    trust.heldout = ood_scores(method, trust.tensors, held_features, trust.probabilities(held_logits)).sort().values
    words = WORDS[method] + (", plus that of the first block's tokens to their mean" if "scale" in trust.tensors
                             else "")
    ood = {"method": method, "accept": ACCEPT, "threshold": round(trust.threshold(), 6), "images": n,
           "compared_with": 0 if method == "msp" else len(train_labels), "file": OOD_FILE,
           "says": f"{words}; the threshold accepts {ACCEPT:.0%} of your {n} validation and test images"}
    return trust, {"calibration": calibration, "ood": ood}


# ---------------------------------------------------------------------------
# the files

def save(run_dir: str | Path, trust: Trust, report: dict) -> None:
    """ood.safetensors (when there is a check) and config.json's vit_studio.calibration / .ood, atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    target = run_dir / OOD_FILE
    if trust.checks:
        tensors = {**{k: v.contiguous() for k, v in trust.tensors.items()}, "heldout": trust.heldout.float()}
        meta = {"format": FORMAT, "method": trust.method, "accept": str(trust.accept)}
        with runs.atomic(target) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    else:
        target.unlink(missing_ok=True)
    config = runs.read_config(run_dir)
    record = config.setdefault(runs.CONFIG_KEY, {})
    calibration = report["calibration"]
    record["calibration"] = {k: calibration[k] for k in ("temperature", "ece_before", "ece_after", "images", "says")}
    record["ood"] = report.get("ood")
    runs.write_json(run_dir / runs.CONFIG, config)


def load(folder: str | Path, classes: int, dim: int | None, early_dim: int | None = None) -> Trust:
    """A model folder's Trust, every value checked (a file from the Hub is hostile until read): the temperature
    from config.json, the check from ood.safetensors (`dim`: the classifier's input size, `early_dim`: the first
    block's width). What cannot be used is left out, and `note` says why."""
    from safetensors import SafetensorError
    folder = Path(folder)
    record = runs.read_config(folder).get(runs.CONFIG_KEY)
    calibration = record.get("calibration") if isinstance(record, dict) else None
    t = calibration.get("temperature") if isinstance(calibration, dict) else None
    trust = Trust(temperature=float(t) if isinstance(t, (int, float)) and not isinstance(t, bool)
                  and math.isfinite(t) and 0.01 <= t <= 100 else 1.0)
    path = folder / OOD_FILE
    if not path.is_file():
        trust.note = "this model has no 'none of these' check (ood.safetensors): it was trained without one"
        return trust
    try:
        trust.method, trust.tensors, trust.heldout, trust.accept = _read_check(path, classes, dim, early_dim)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        trust.method, trust.tensors, trust.heldout = None, {}, None
        trust.note = f"the 'none of these' check is not used: {OOD_FILE} cannot be read ({str(e)[:160]})"
    return trust


def _read_check(path: Path, classes: int, dim: int | None, early_dim: int | None):
    import torch
    from safetensors import safe_open
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path.stat().st_size / 1e6:.0f} MB, over {MAX_FILE_BYTES / 1e6:.0f} MB")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("method") not in METHODS:
            raise ValueError(f"not a {FORMAT} file, or an unknown method")
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    method, accept = meta["method"], float(meta.get("accept", ACCEPT))
    heldout = tensors.pop("heldout")
    need = {"knn": {"bank": (None, dim)}, "mahalanobis": {"means": (classes, dim), "precision": (dim, dim)},
            "msp": {}}[method]
    if method == "mahalanobis" and "scale" in tensors:
        need = {**need, "early_mean": (1, early_dim), "early_precision": (early_dim, early_dim), "scale": (4,)}
    for name, shape in need.items():
        t = tensors.get(name)
        if t is None or t.dim() != len(shape) or any(s is not None and s != got for s, got in zip(shape, t.shape)):
            raise ValueError(f"{name} is missing or of the wrong shape for this model")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} is not finite")
    if "early_mean" in need and tensors["early_precision"].shape[0] != tensors["early_mean"].shape[1]:
        raise ValueError("early_mean and early_precision do not match")
    if heldout.dim() != 1 or not len(heldout) or not torch.isfinite(heldout).all() or not 0 < accept <= 1:
        raise ValueError("the held-out scores are missing or not finite")
    return method, {k: tensors[k] for k in need}, heldout.sort().values.double(), accept


class Seen:
    """What watching() recorded, forward after forward: the features (what the classifier read), the first
    block's tokens averaged ("early": low-level statistics), and the logits."""

    def __init__(self):
        self.final: list = []
        self.early: list = []
        self.logits: list = []

    def read(self, features, logits) -> None:  # (a forward hook: returning something would replace the output)
        self.final.append(features.detach().float().cpu())
        self.logits.append(logits.detach().float().cpu())

    def features(self, first: int | None = None) -> dict | None:
        """{"final", "early" (where read)} of every image seen (the `first` ones only, when given); None where
        the classifier's input could not be read."""
        import torch
        if not self.final:
            return None
        out = {"final": torch.cat(self.final)[:first]}
        if len(self.early) == len(self.final):
            out["early"] = torch.cat(self.early)[:first]
        return out


@contextlib.contextmanager
def watching(model: torch.nn.Module):
    """Record what the model's classifier reads and gives, and its first block's tokens, while the block runs it
    (a Seen). Its features are None where the model has no single linear classifier."""
    from vit.data.features import FeatureError, classifier
    seen, handles = Seen(), []
    try:
        head = classifier(model)
    except FeatureError:
        head = None
    if head is not None:
        handles.append(head.register_forward_hook(lambda m, inputs, out: seen.read(inputs[0], out)))
        blocks = getattr(model, "blocks", None)
        if blocks is not None and len(blocks):
            handles.append(blocks[0].register_forward_hook(lambda m, inputs, out: _early(seen, out)))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _early(seen: Seen, out) -> None:
    """A block's output tokens [batch, tokens, dim] (or a stage's [batch, dim, h, w]), averaged per image."""
    if hasattr(out, "dim") and out.dim() == 3:
        seen.early.append(out.detach().float().mean(1).cpu())
    elif hasattr(out, "dim") and out.dim() == 4:
        seen.early.append(out.detach().float().mean((2, 3)).cpu())


def collect(model: torch.nn.Module, batches, device, autocast) -> tuple[torch.Tensor, dict | None]:
    """The logits and the features (Seen.features) of every image of `batches` (a DataLoader of (x, y)), in
    order, on the CPU, in eval mode."""
    import torch
    was_training = model.training
    model.eval()
    logits = []
    try:
        with torch.no_grad(), watching(model) as seen:
            for x, _ in batches:
                with autocast():
                    logits.append(model(x.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), seen.features()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    import torch
    return torch.nn.functional.normalize(x.float(), dim=-1)
