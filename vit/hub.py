"""Share a run: a model card, a push to the Hugging Face Hub, and an ONNX export.

    url = push_run("checkpoints/<run-id>", "alice/pets-vit", token=token)
    path, max_diff = export_onnx("checkpoints/<run-id>")

A pushed repo is a plain timm model (config.json with label_names and the data
config, model.safetensors), so `timm.create_model("hf-hub:alice/pets-vit",
pretrained=True)` loads it with no code of ours. The README is a model card
made with huggingface_hub's ModelCard: metadata, results per class, the
confusion matrix and learning curves (PNG files pushed with it), the training
settings, usage, and the limits of a model trained on little data.

The token is used for the one call it is given to. It is never stored, logged
or put in a message: every error is rewritten without it.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vit import runs
from vit.models import is_network_error

CARD = "README.md"
CONFUSION_PNG, CURVES_PNG = "confusion_matrix.png", "learning_curves.png"
TOKENS_URL = "https://huggingface.co/settings/tokens"


class HubError(ValueError):
    """A push or an export cannot be done; the message says why and what to do (and never holds a token)."""


def model_card(run_dir: str | os.PathLike, repo_id: str):
    """The run's model card (huggingface_hub.ModelCard), for the repo `repo_id`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run_dir = Path(run_dir)
    config, metrics = runs.read_config(run_dir), runs.read_json(run_dir / runs.METRICS, {})
    report = runs.read_json(run_dir / runs.DATA_REPORT, {})
    train = config.get(runs.CONFIG_KEY, {})
    labels = config.get("label_names") or []
    arch = config.get("architecture", "unknown")
    base = _base_model(train)
    acc = metrics.get("val_acc")
    n_val = sum(v.get("support", 0) for v in metrics.get("per_class", {}).values())
    dataset_name = report.get("source") and Path(str(report["source"])).name or "custom image folder"
    data = ModelCardData(
        library_name="timm", pipeline_tag="image-classification", license=None,
        tags=["image-classification", "timm", "vision-transformer", "vit-studio"], base_model=base,
        model_name=repo_id.split("/")[-1], metrics=["accuracy"] if acc is not None else None,
        eval_results=[EvalResult(task_type="image-classification", dataset_type="imagefolder",
                                 dataset_name=dataset_name, dataset_split="validation", metric_type="accuracy",
                                 metric_value=round(acc, 4))] if acc is not None else None)
    body = _card_body(repo_id, arch, base, labels, train, metrics, report, acc, n_val)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def check_token(token: str) -> str:
    """The token without surrounding spaces, or HubError when it cannot be one (the message never repeats
    it): a line break, a space or an invisible character inside is a paste gone wrong."""
    token = token.strip()
    if any(c.isspace() for c in token):
        raise HubError("The token has a space or a line break inside it. Paste it again as one line, from "
                       f"{TOKENS_URL}.")
    if not token.isascii() or not token.isprintable():
        raise HubError("The token has an invisible or non-ASCII character in it (e.g. a zero-width space from "
                       f"a copy). Paste it again from {TOKENS_URL}.")
    if not 8 <= len(token) <= 256:
        raise HubError(f"That is not a Hugging Face token (they look like hf_...). Copy one from {TOKENS_URL}.")
    return token


def card_preview(run_dir: str | os.PathLike, repo_id: str) -> str:
    """The model card's text as a push would write it, with its pictures inlined (data: URIs), so a page
    can show it before anything exists on the Hub."""
    import base64
    import io

    run_dir = Path(run_dir)
    text = model_card(run_dir, repo_id).text
    for name, picture in _card_pictures(run_dir).items():
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        text = text.replace(f"]({name})", f"](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")
    return text


def write_card(run_dir: str | os.PathLike, dest: str | os.PathLike, repo_id: str) -> list[Path]:
    """README.md and its images into `dest`; returns the files written."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = [dest / CARD]
    model_card(run_dir, repo_id).save(dest / CARD)
    for name, picture in _card_pictures(run_dir).items():
        picture.save(dest / name)
        written.append(dest / name)
    return written


def _card_pictures(run_dir: Path) -> dict[str, Image.Image]:
    """The pictures the card shows, by file name: the confusion matrix and the learning curves."""
    metrics = runs.read_json(run_dir / runs.METRICS, {})
    labels = runs.read_config(run_dir).get("label_names") or []
    pictures = {}
    if metrics.get("confusion_matrix"):
        pictures[CONFUSION_PNG] = confusion_image(metrics["confusion_matrix"], labels)
    history = metrics.get("history") or runs.read_metrics_log(run_dir)
    if history:
        pictures[CURVES_PNG] = curves_image(history)
    return pictures


def push_run(run_dir: str | os.PathLike, repo_id: str, token: str | None, *, private: bool = False,
             include_resume: bool = False, endpoint: str | None = None) -> str:
    """Create (or update) the model repo `repo_id` with the run's model and card; return its URL.

    `repo_id` may be a bare name: it then goes under the token's user.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id

    run_dir = Path(run_dir)
    if not (run_dir / runs.WEIGHTS).is_file() or not (run_dir / runs.CONFIG).is_file():
        raise HubError(f"{run_dir.name} has no trained model to push (model.safetensors and config.json); "
                       "wait until it has finished at least one epoch.")
    if not token or not token.strip():
        raise HubError(f"No Hugging Face token. Create one with write access at {TOKENS_URL} and paste it, "
                       "set HF_TOKEN for the command line, or on a Space sign in with the button.")
    token = check_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(token, repo_id):
        who = api.whoami(token=token)
        user = who.get("name")
        role = (who.get("auth", {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubError(f"This token can only read. Create a token with write access at {TOKENS_URL}.")
        repo_id = repo_id.strip().strip("/")
        if "/" not in repo_id:
            repo_id = f"{user}/{repo_id}"
        try:
            validate_repo_id(repo_id)
        except Exception as e:
            raise HubError(f"{repo_id!r} is not a valid repo name: {e}") from None
        owner = repo_id.split("/")[0]
        allowed = {user, *(o.get("name") for o in who.get("orgs", []) or [])}
        if owner not in allowed:
            raise HubError(f"{repo_id} would belong to '{owner}', but this token is {user}'s. Push to "
                           f"{user}/{repo_id.split('/')[1]} instead, or use a token of {owner}.")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory(prefix="vit-push-") as tmp:  # exactly what the repo gets
            write_card(run_dir, tmp, repo_id)
            runs.write_json(Path(tmp) / runs.CONFIG, runs.public_config(run_dir))  # no local paths
            for name in (runs.WEIGHTS, runs.METRICS) + ((runs.RESUME,) if include_resume else ()):
                if (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, Path(tmp) / name)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                              commit_message=f"Upload {run_dir.name} (ViT Studio)")
    return str(url)


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                check_images: int = 4) -> tuple[Path, float]:
    """Write model.onnx (dynamic batch, weights embedded: one file to hand on) for the run; return its path
    and the largest logit difference from PyTorch on `check_images` random inputs (batch 1 and a batch of
    all of them), run from the file's bytes alone."""
    import torch

    from vit.predict import PredictError, load_model
    try:
        loaded = load_model(run_dir)
    except PredictError as e:
        raise HubError(str(e)) from None
    out = Path(out) if out else Path(run_dir) / "model.onnx"
    model = loaded.model
    shape = tuple(loaded.data_config["input_size"])
    example = torch.randn(2, *shape)
    try:
        import onnxruntime as ort
        torch.onnx.export(model, (example,), str(out), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
                          external_data=False)  # one self-contained file: the weights inside
    except ImportError as e:
        raise HubError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages ({e}); "
                       "they are in requirements.txt.") from None
    except Exception as e:
        raise HubError(f"ONNX export of {loaded.name} failed: {type(e).__name__}: {e}") from None
    # checked from its bytes alone: a file that needed anything beside it would fail here
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(max(1, check_images), *shape, generator=generator)
    with torch.inference_mode():
        reference = model(x).float().numpy()
    diffs = [np.abs(session.run(None, {"pixel_values": x[:1].numpy()})[0] - reference[:1]).max(),
             np.abs(session.run(None, {"pixel_values": x.numpy()})[0] - reference).max()]
    return out, float(max(diffs))


# ---------------------------------------------------------------------------
# card pictures, drawn with Pillow


def confusion_image(confusion: list[list[int]], labels: list[str], cell: int = 56) -> Image.Image:
    """The confusion matrix: rows true, columns predicted, shaded by each row's share."""
    m = np.asarray(confusion, dtype=float)
    n = len(m)
    labels = [_short(lb) for lb in (labels or [str(i) for i in range(n)])]
    font = _font(13)
    margin_l, margin_t = 110, 100
    img = Image.new("RGB", (max(margin_l + n * cell + 20, 470), margin_t + n * cell + 40), "white")
    d = ImageDraw.Draw(img)
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    for i in range(n):
        for j in range(n):
            x0, y0 = margin_l + j * cell, margin_t + i * cell
            v = share[i, j]
            colour = (int(255 - 200 * v), int(255 - 140 * v), 255) if i == j else (255, int(255 - 160 * v),
                                                                                  int(255 - 160 * v))
            d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=colour)
            d.text((x0 + cell / 2, y0 + cell / 2), str(int(m[i, j])), fill="black", font=font, anchor="mm")
    for k, lb in enumerate(labels):
        d.text((margin_l - 8, margin_t + k * cell + cell / 2), lb, fill="black", font=font, anchor="rm")
        d.text((margin_l + k * cell + cell / 2, margin_t - 8), lb, fill="black", font=font, anchor="md")
    d.text((10, 15), "Confusion matrix (validation images)", fill="black", font=font)
    d.text((10, 35), "rows: true class, columns: predicted class", fill="#444", font=font)
    return img


def curves_image(history: list[dict], width: int = 420, height: int = 260) -> Image.Image:
    """Loss and accuracy per epoch, train and validation, side by side."""
    img = Image.new("RGB", (2 * width, height), "white")
    epochs = [r["epoch"] for r in history]
    panels = [("Loss", [("train", [r["train_loss"] for r in history]), ("validation", [r["val_loss"] for r in history])]),
              ("Accuracy", [("train", [r["train_acc"] for r in history]), ("validation", [r["val_acc"] for r in history])])]
    for k, (title, series) in enumerate(panels):
        _plot(ImageDraw.Draw(img), (k * width, 0, width, height), title, epochs, series)
    return img


def _plot(d: ImageDraw.ImageDraw, box, title: str, xs: list, series: list[tuple[str, list[float]]]) -> None:
    x0, y0, w, h = box
    font = _font(12)
    left, top, right, bottom = x0 + 50, y0 + 32, x0 + w - 15, y0 + h - 40
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)
    d.rectangle([left, top, right, bottom], outline="#888")
    d.text((left, y0 + 8), title, fill="black", font=font)
    for t in range(5):
        v = lo + (hi - lo) * t / 4
        y = bottom - (bottom - top) * t / 4
        d.line([left - 4, y, left, y], fill="#888")
        d.text((left - 6, y), f"{v:.2f}", fill="#444", font=font, anchor="rm")
    d.text(((left + right) / 2, bottom + 22), "epoch", fill="#444", font=font, anchor="mm")
    for x in sorted({x_lo, max(xs), *xs[::max(1, len(xs) // 5)]}):
        px = left + (right - left) * (x - x_lo) / (x_hi - x_lo)
        d.line([px, bottom, px, bottom + 4], fill="#888")
        d.text((px, bottom + 6), str(x), fill="#444", font=font, anchor="mt")
    for k, ((name, vs), colour) in enumerate(zip(series, ("#1f77b4", "#ff7f0e"))):
        lx = right - 170 + 90 * k  # legend, above the plot
        d.line([lx, y0 + 15, lx + 14, y0 + 15], fill=colour, width=3)
        d.text((lx + 18, y0 + 15), name, fill=colour, font=font, anchor="lm")
        pts = [(left + (right - left) * (x - x_lo) / (x_hi - x_lo), bottom - (bottom - top) * (v - lo) / (hi - lo))
               for x, v in zip(xs, vs) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow: fixed size
        return ImageFont.load_default()


def _short(label: str, n: int = 14) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


# ---------------------------------------------------------------------------
# card text


def _card_body(repo_id, arch, base, labels, train, metrics, report, acc, n_val) -> str:
    name = repo_id.split("/")[-1]
    lines = [f"# {name}", ""]
    start = (f"fine-tuned from [{base}](https://huggingface.co/{base})" if base else
             "trained from scratch (random initialisation)" if not train.get("pretrained", True) else
             f"fine-tuned from `{train.get('weights') or train.get('model')}`")
    total = report.get("total")
    lines += [f"A `{arch}` Vision Transformer {start} to classify images into {len(labels)} classes: "
              + ", ".join(f"`{lb}`" for lb in labels) + ". Trained with ViT Studio"
              + (f" on {total} images." if total else "."), ""]
    lines += ["## Results", ""]
    if acc is not None:
        lo, hi = _wilson(acc, n_val)
        lines += [f"Validation accuracy **{acc:.1%}** on {n_val} images (95% interval {lo:.1%} to {hi:.1%}), "
                  f"best at epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}"
                  + (" (stopped early)." if metrics.get("stopped_early") else "."), ""]
        test = metrics.get("test")
        if test:
            lo_t, hi_t = _wilson(test["acc"], test["images"])
            lines += [f"Test accuracy **{test['acc']:.1%}** on {test['images']} held-out test images (95% interval "
                      f"{lo_t:.1%} to {hi_t:.1%}); they played no part in training or in choosing the epoch.", ""]
        lines += ["| class | precision | recall | F1 | validation images |", "|---|---|---|---|---|"]
        for c, v in metrics.get("per_class", {}).items():
            lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
        lines += ["", f"![Confusion matrix]({CONFUSION_PNG})", "", f"![Learning curves]({CURVES_PNG})", ""]
    else:
        lines += ["No final metrics were recorded for this run.", ""]
    lines += ["## Use it with timm", "", "```python", "import timm, torch", "from PIL import Image", "",
              f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
              'labels = model.pretrained_cfg["label_names"]',
              "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
              "with torch.no_grad():",
              '    probs = model(transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)[0]',
              "print(labels[probs.argmax()], float(probs.max()))", "```", "",
              "The preprocessing (input size, resize and crop, mean and std) comes from the model's own "
              "`pretrained_cfg`, as it was during validation.", "",
              "## Use it with ViT Studio", "", "```bash",
              f"python -m vit predict --model hf-hub:{repo_id} --image photo.jpg --explain chefer --out heatmap.png",
              "```", "", f"or type `hf-hub:{repo_id}` in the app's Classify tab to see attention heatmaps.", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    probe = train.get("probe_head") or train.get("lp_ft_head") or {}
    if train.get("quick"):
        lines.append(f"| method | quick model: only the head fitted (logistic regression, C = {probe.get('C')}) on "
                     "the frozen features of the starting weights |")
    elif train.get("lp_ft"):
        lines.append("| method | LP-FT: the head fitted on the frozen features first"
                     + (f" ({probe['val_acc']:.1%} on validation)" if probe.get("val_acc") is not None else "")
                     + ", then the whole model fine-tuned from it |")
    quick_keys = ("model", "pretrained", "img_size_used", "patch_size", "model_args", "seed")
    for key, label in (("model", "model"), ("pretrained", "pretrained weights"), ("img_size_used", "image size"),
                       ("patch_size", "patch size"), ("model_args", "model arguments"),
                       ("progressive", "progressive resizing"), ("epochs", "epochs (max)"),
                       ("batch_size", "batch size"), ("lr", "learning rate (head)"),
                       ("weight_decay", "weight decay"), ("layer_decay_used", "layer-wise lr decay"),
                       ("label_smoothing", "label smoothing"), ("crop_scale_min", "random crop scale (min)"),
                       ("randaugment", "RandAugment"), ("mixup", "mixup"), ("cutmix", "cutmix"),
                       ("ema_decay", "EMA decay"), ("seed", "seed")):
        if train.get(key) not in (None, {}, "") and (key in quick_keys or not train.get("quick")):
            lines.append(f"| {label} | `{train[key]}` |")
    if train.get("recipe"):
        lines += ["", "Chosen by ViT Studio's recipe (for the data, where training from scratch):", ""]
        lines += [f"- {note}" for note in train["recipe"]]
    split = report.get("split_counts", {})
    if split:
        lines += ["", "Images per split: " + ", ".join(f"{s} {sum(v.values())}" for s, v in split.items() if v) + "."]
    lines += ["", "## Intended use and limitations", "",
              (f"- Trained on {total} images. A model trained on this little data" if total else
               "- A model trained on little data") + " knows only what its images show: expect it to fail on other "
              "cameras, lighting, backgrounds or populations, and on classes it was not trained on (it always "
              "answers with one of its classes).",
              f"- The validation set has {n_val} images, so the accuracy above is a coarse estimate (see the "
              "interval). Test it on your own held-out data before relying on it.",
              "- Heatmaps show what the model used, not what is right: check them for shortcuts (backgrounds, "
              "watermarks, borders).",
              "- Not for medical, safety-critical or legal decisions without a proper validation study."]
    warnings = report.get("warnings") or []
    if report.get("leakage"):
        warnings = warnings + [f"{len(report['leakage'])} identical images were found in both training and "
                               "validation; validation accuracy may be optimistic."]
    if warnings:
        lines += ["", "Warnings from the dataset health report at training time:", ""]
        lines += [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _base_model(train: dict) -> str | None:
    model = str(train.get("model") or "")
    if not train.get("pretrained", True) or train.get("weights"):
        return None
    if model.startswith("hf-hub:"):
        return model[len("hf-hub:"):]
    if model and not model.startswith("local-dir:") and re.fullmatch(r"[\w.\-]+", model):
        return f"timm/{model}"
    return None


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if not n:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class _hub_errors:
    """Turn huggingface_hub and network errors into HubError messages without the token."""

    def __init__(self, token: str, repo_id: str):
        self.token, self.repo_id = token, repo_id

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, HubError):
            if isinstance(error, HubError):
                error.args = (self._scrub(str(error)),)
            return False
        from huggingface_hub.errors import HfHubHTTPError
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, HfHubHTTPError) and status == 401:
            message = f"The Hugging Face Hub rejected the token (invalid or revoked). Create a new one at {TOKENS_URL}."
        elif isinstance(error, HfHubHTTPError) and status == 403:
            message = (f"The token may not write to {self.repo_id}: it is read-only, fine-grained without write "
                       "access to it, or the repo belongs to someone else.")
        elif isinstance(error, HfHubHTTPError):
            message = f"The Hugging Face Hub answered {status}: {self._scrub(str(error)).splitlines()[0]}"
        elif "offline mode is enabled" in str(error):
            message = "Offline mode is on (HF_HUB_OFFLINE is set): unset it to push to the Hub."
        elif is_network_error(error):
            message = (f"Cannot reach the Hugging Face Hub ({type(error).__name__}). "
                       "Check the internet connection and try again; the run is unchanged.")
        else:
            return False
        raise HubError(message) from None

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "hf_***") if self.token else text

