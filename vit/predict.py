"""Load a trained model and classify images.

    loaded = load_model("checkpoints/<run-id>")       # or a timm-format folder, or "hf-hub:user/repo"
    loaded.classify(["cat.jpg"], topk=3)             # [[("cat", 0.93), ("dog", 0.05), ("fox", 0.02)]]
    loaded.answers([read_image("cat.jpg")])[0]       # Answer(probs, ood_score, threshold): .unsure, .top()

Every probability is calibrated by the run's temperature, and an image unlike the training images is "unsure"
where the model carries the check (vit.trust: config.json's vit_studio.calibration, ood.safetensors).

A model is a timm-format folder: config.json (architecture, label_names,
pretrained_cfg) and model.safetensors. Only safetensors weights are read: a
pickle file (.bin, .pt, .pth) could run code, so it is refused with a message.
Loaded models are kept in a small cache, keyed by folder and its files'
timestamps, so repeated requests do not reload and a retrained run is reloaded.
Images are read as data.py reads them (EXIF orientation, palette, alpha,
16-bit, CMYK, HEIC; a pixel cap against decompression bombs).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from vit import runs
from vit.data import DataError, Limits, reduced, to_rgb
from vit import trust as trust_file
from vit.data.features import FeatureError, classifier
from vit.data.pixels import READ_MAX_SIDE, EvalPixels, read_for_model
from vit.models import (ModelError, check_hub_id, count_parameters, data_config, hub_failure, hub_parameters,
                        weights_cached)
from vit.trust import Trust, watching

CACHE_SIZE = 4
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class PredictError(ValueError):
    """A model or an image cannot be used; the message says why and what to do."""


ImageInput = str | os.PathLike | bytes | Image.Image


@dataclass
class Answer:
    """One image's answer: the calibrated probabilities, and how unlike the training images it is."""
    probs: torch.Tensor             # one per class, calibrated (vit.trust)
    ood_score: float | None         # higher: less like the training images; None: the model has no such check
    threshold: float | None         # the score above which the answer is "not sure"

    @property
    def unsure(self) -> bool | None:
        return None if self.threshold is None or self.ood_score is None else self.ood_score > self.threshold

    def top(self, labels: list[str], k: int = 5) -> list[tuple[str, float]]:
        k = max(1, min(int(k), len(labels)))
        values, indices = self.probs.topk(k)
        return [(labels[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    labels: list[str]
    data_config: dict
    folder: Path
    source: str
    trust: Trust = field(default_factory=Trust)   # the temperature and the "none of these" check (vit.trust)

    def __post_init__(self):
        self.transform = EvalPixels(self.data_config)  # as validation saw its images
        # explain() hooks the modules of the model it runs on, so each request borrows a replica of its
        # own: the modules are copied, the weights are shared (no extra memory for them).
        # Replicas are copied from a template that never runs: a model in use carries the hooks of the
        # request using it, and a copy of those would report into that request.
        self._template = _replica(self.model)
        self._replicas: list[torch.nn.Module] = [self.model]
        self._free: list[torch.nn.Module] = [self.model]
        self._replicas_lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self):
        """A replica of the model for this thread alone (made on first need, kept for reuse)."""
        with self._replicas_lock:
            replica = self._free.pop() if self._free else None
            if replica is None:
                replica = _replica(self._template)
                self._replicas.append(replica)
        try:
            yield replica
        finally:
            with self._replicas_lock:
                self._free.append(replica)

    @property
    def name(self) -> str:
        return self.model.pretrained_cfg.get("architecture") or type(self.model).__name__

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image -> [1, 3, H, W] as the model was validated on (timm's eval transform)."""
        return self.transform(image).unsqueeze(0)

    def input_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The region (left, top, right, bottom) of an image of `size` (w, h) that preprocess keeps."""
        return input_box(size, self.data_config)

    @torch.inference_mode()
    def answers(self, images: list[Image.Image], accept: float | None = None) -> list[Answer]:
        """Each RGB image's answer: calibrated probabilities and its out-of-distribution score, judged at the
        threshold that accepts `accept` of the held-out images of the training classes (None: the run's)."""
        x = torch.cat([self.preprocess(im) for im in images])
        with self.borrow() as model, watching(model) as seen:
            logits = model(x).float()
        return self.judge(logits, seen.features(), accept)

    def judge(self, logits: torch.Tensor, features: dict | None, accept: float | None = None) -> list[Answer]:
        """Answers from a forward's logits and features (what the classifier read: vit.trust.watching)."""
        probs = self.trust.probabilities(logits)
        scores = self.trust.score(features, logits) if features is not None or self.trust.method == "msp" else None
        threshold = self.trust.threshold(accept) if scores is not None else None
        return [Answer(p, None if scores is None else float(scores[k]), threshold) for k, p in enumerate(probs)]

    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """The calibrated probabilities of each RGB image: [images, classes]."""
        return torch.stack([a.probs for a in self.answers(images)])

    def classify(self, images: ImageInput | list[ImageInput], topk: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (label, calibrated probability) for each image, most likely first."""
        batch = images if isinstance(images, list) else [images]
        if not batch:
            return []
        return [a.top(self.labels, topk) for a in self.answers([read_image(im) for im in batch])]


def load_model(source: str | os.PathLike, device: str = "cpu", *, max_params_m: float | None = None
               ) -> LoadedModel:
    """A model from a run directory, a timm-format folder, `local-dir:PATH` or `hf-hub:user/repo` (cached).

    `max_params_m` refuses (PredictError) a model of more parameters, in millions, before any of it is
    built: its size is read from config.json on the meta device and from the safetensors header. A model
    already in the cache is measured as it is (no file is read again on this path of every request)."""
    folder = _resolve(str(source), max_params_m)
    key = (str(folder.resolve()), *(_mtime(folder / name) for name in (runs.WEIGHTS, runs.CONFIG, runs.OOD)), device)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if cached is not None:
        if max_params_m:
            _refuse_over(count_parameters(cached.model), max_params_m)
        return cached
    if max_params_m:
        check_size(folder, max_params_m)
    loaded = _load_folder(folder, str(source), device)
    with _lock:
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


@contextlib.contextmanager
def compute_share(threads: int):
    """Run the block with this thread's share of `threads` CPU threads: all of them when it is the only
    computation under way, an equal part when others run at once (each on its own model replica)."""
    global _active
    with _lock:
        _active += 1
        share = max(1, threads // _active)
    set_threads(share)
    try:
        yield share
    finally:
        with _lock:
            _active -= 1


def set_threads(n: int) -> None:
    """CPU threads for the calling thread's inference. torch keeps this per thread, so a web handler
    calls it itself (with JobManager.web_threads() while a run trains on the CPU)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(max(1, int(n)))


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def check_size(folder: Path, max_params_m: float) -> int:
    """The parameter count of the model in `folder`, or PredictError when it is over max_params_m million.
    Nothing is allocated: the architecture is built on the meta device, the weights file's header is read."""
    import timm
    from safetensors import safe_open
    config = _read_config(folder)
    counts = []
    try:
        with safe_open(str(folder / runs.WEIGHTS), framework="pt") as f:
            counts.append(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    except Exception as e:
        raise PredictError(f"{folder.name}/model.safetensors is not a readable safetensors file ({e}).") from None
    try:
        with torch.device("meta"):
            kwargs = {**(config.get("model_args") or {}), "pretrained": False}
            if config.get("num_classes") is not None:
                kwargs["num_classes"] = config["num_classes"]
            shape = timm.create_model(str(config.get("architecture", "")), **kwargs)
        counts.append(sum(p.numel() for p in shape.parameters()))
    except Exception as e:
        raise PredictError(f"The model in {folder.name} cannot be built: {type(e).__name__}: {e}") from None
    n = max(counts)
    _refuse_over(n, max_params_m)
    return n


def _refuse_over(n: int, max_params_m: float) -> None:
    if n > max_params_m * 1e6:
        raise PredictError(f"This model has {n / 1e6:.0f}M parameters, over this app's limit of {max_params_m:g}M "
                           "for models it serves (VIT_MAX_MODEL_PARAMS_M; it keeps memory bounded for every "
                           "visitor). Use it with timm on your own machine, or raise the limit where you host the app.")


def read_image(image: ImageInput, limits: Limits | None = None) -> Image.Image:
    """Any supported image input -> 8-bit RGB as validation read its images (vit.data.pixels.read_for_model: no
    side longer than READ_MAX_SIDE), or a PredictError saying what is wrong. A file's size is checked from its
    header before it is decoded."""
    limits = limits or Limits()
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > limits.max_pixels:
            raise PredictError(f"The image has too many pixels ({w}x{h}; cap {limits.max_pixels:,}).")
        return reduced(to_rgb(image), READ_MAX_SIDE)
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise PredictError("The image is empty (0 bytes). Choose an image file (JPEG, PNG, WebP, ...).")
        source = io.BytesIO(image)
        name = "the image"
    else:
        path = Path(image)
        if not path.is_file():
            raise PredictError(f"{path} does not exist or is not a file.")
        if path.stat().st_size == 0:
            raise PredictError(f"{path.name} is empty (0 bytes). Choose an image file (JPEG, PNG, WebP, ...).")
        source, name = path, path.name
    try:
        return read_for_model(source, limits)
    except DataError as e:
        raise PredictError(f"{name}: {e}") from None


def input_box(size: tuple[int, int], dcfg: dict) -> tuple[float, float, float, float]:
    """The part of an image of size (w, h) that timm's eval transform for `dcfg` keeps, in its pixels."""
    w, h = size
    th, tw = dcfg["input_size"][-2:]
    crop_pct = dcfg.get("crop_pct") or 0.875
    mode = dcfg.get("crop_mode") or "center"
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    if mode == "squash":
        sx, sy = sw / w, sh / h
    elif mode == "center":
        sx = sy = max(sh / h, sw / w) if sh != sw else sh / min(w, h)
    else:  # "border": the whole image, padded
        return (0.0, 0.0, float(w), float(h))
    cw, ch = min(tw / sx, w), min(th / sy, h)
    left, top = (w - cw) / 2, (h - ch) / 2
    return (left, top, left + cw, top + ch)


# ---------------------------------------------------------------------------
# helpers

_cache: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
_hub_folders: dict[str, Path] = {}
_lock = threading.Lock()
_active = 0  # computations under way in compute_share


def _resolve(source: str, max_params_m: float | None = None) -> Path:
    """The local timm-format folder for a source, downloading config and safetensors for hf-hub ids (of at most
    max_params_m million parameters by their safetensors header, read first)."""
    if source.startswith("hf-hub:"):
        return _download(source[len("hf-hub:"):], max_params_m)
    if source.startswith("local-dir:"):
        source = source[len("local-dir:"):]
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise PredictError(f"{path.name} is a pickle file, which can run code when loaded; only safetensors "
                               "weights are read. Convert it (safetensors.torch.save_file) or use a run directory.")
        raise PredictError(f"{path.name} is a file; give the folder that holds config.json and model.safetensors "
                           "(a run directory under checkpoints/, or a model downloaded from the Hub).")
    if not path.is_dir():
        raise PredictError(f"No model at {source}: give a run directory, a folder with config.json and "
                           "model.safetensors, or hf-hub:user/repo.")
    if not (path / runs.CONFIG).is_file():
        raise PredictError(f"{path.name} has no config.json, so the architecture and labels are unknown. Give a run "
                           "directory or a timm-format model folder.")
    if not (path / runs.WEIGHTS).is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            raise PredictError(f"{path.name} holds {', '.join(pickles)} but no model.safetensors. Pickle weights can "
                               "run "
                               "code when loaded and are refused; save the weights as safetensors.")
        state = runs.read_status(path).get("state")
        hint = (" The run has not finished an epoch yet." if state in runs.ACTIVE_STATES else
                f" The run is {state} and saved no model." if state else "")
        raise PredictError(f"{path.name} has no model.safetensors.{hint}")
    return path


def _download(repo_id: str, max_params_m: float | None = None) -> Path:
    """config.json, model.safetensors and (when there is one) the "none of these" check of a Hub repo, fetched
    once per process; with a cap, the weights' size is read from their safetensors header before any download."""
    if repo_id in _hub_folders and (_hub_folders[repo_id] / runs.WEIGHTS).is_file():
        return _hub_folders[repo_id]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    try:
        check_hub_id(repo_id)
        if max_params_m and not weights_cached(f"hf-hub:{repo_id}"):  # (a cached one is measured from its files)
            _refuse_over(hub_parameters(repo_id), max_params_m)
    except ModelError as e:
        raise PredictError(str(e)) from None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[runs.CONFIG, runs.WEIGHTS, runs.OOD]))
    except (HfHubHTTPError, OSError, ValueError) as e:  # (huggingface_hub's errors derive from these)
        raise PredictError(hub_failure(e, f"hf-hub:{repo_id}")) from None
    if not (folder / runs.WEIGHTS).is_file():
        raise PredictError(f"hf-hub:{repo_id} has no model.safetensors; pickle weights are refused.")
    _hub_folders[repo_id] = folder
    return folder


def _mtime(path: Path) -> int | None:
    """A file's modification time (None when absent): a changed one reloads the model."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _replica(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model's modules that shares its weights and buffers."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo=shared)


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / runs.CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictError(f"{folder.name}/config.json cannot be read as JSON ({e}).") from None
    if not isinstance(config, dict):
        raise PredictError(f"{folder.name}/config.json is not a JSON object.")
    return config


def _load_folder(folder: Path, source: str, device: str) -> LoadedModel:
    import timm
    config = _read_config(folder)
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        why = str(e).replace(str(folder), folder.name)
        raise PredictError(f"The model in {folder.name} cannot be built: {type(e).__name__}: {why}") from None
    n = model.num_classes
    labels = list(config.get("label_names") or model.pretrained_cfg.get("label_names") or [])
    if len(labels) != n:
        labels = [f"class {i}" for i in range(n)]
    model.eval().to(device)
    try:
        dcfg = data_config(model)
    except ModelError as e:
        raise PredictError(str(e)) from None
    try:
        dim = classifier(model).in_features
    except FeatureError:
        dim = None
    early_dim = getattr(model, "embed_dim", None)
    return LoadedModel(model, labels, dcfg, folder, source, trust_file.load(folder, n, dim, early_dim))


@dataclass
class Explained:
    """One image classified and explained from one forward pass (classify_and_explain)."""
    image: Image.Image                   # the image as read (RGB)
    answer: Answer                       # calibrated probabilities and the "not sure" check
    explanation: object                  # vit.explain.Explanation: the heatmap, its target, per-head maps, notes
    target: int | None                   # the class asked for (None: the predicted one)


def classify_and_explain(loaded: LoadedModel, image: ImageInput, method: str, target: str | None = None, *,
                         layer: int = -1, head: int | None = None, accept: float | None = None,
                         head_fusion: str = "mean", discard_ratio: float = 0.0, threads: int | None = None,
                         cache=None) -> Explained:
    """Read `image`, draw the model's heatmap with `method` (for the class `target`; None: the predicted one) and
    judge its answer from the same pass: what the app's Classify tab and `python -m vit predict --explain` show.
    `threads`: the share of the CPU to use (the web app's); `cache` (get/put), keyed by the weights, the image file
    and the map asked for, keeps maps already made (a new opacity or threshold is drawn from one)."""
    from vit import explain
    if target is not None and target not in loaded.labels:
        raise PredictError(f"{str(target)[:80]!r} is not a class of this model ({', '.join(loaded.labels)}).")
    t = loaded.labels.index(target) if target is not None else None
    rgb = read_image(image)
    key = None
    if cache is not None and isinstance(image, (str, os.PathLike)):
        weights = loaded.folder / runs.WEIGHTS
        key = (str(weights), _mtime(weights), str(image), method, t, layer, head, head_fusion, discard_ratio)
    done = cache.get(key) if key else None
    if done is None:
        share = compute_share(threads) if threads else contextlib.nullcontext()
        with share, loaded.borrow() as model, trust_file.watching(model) as seen:
            e = explain.explain(model, loaded.preprocess(rgb), method, t, layer=layer, head=head,
                                head_fusion=head_fusion, discard_ratio=discard_ratio)
        logits = seen.logits[0][:1] if seen.logits else torch.as_tensor(e.probs).clamp_min(1e-30).log()[None]
        done = (e, seen.features(1), logits)  # (a model with two heads, e.g. distilled: log-probabilities)
        if key:
            cache.put(key, done)
    e, features, logits = done
    (answer,) = loaded.judge(logits, features, accept)
    return Explained(image=rgb, answer=answer, explanation=e, target=t)
