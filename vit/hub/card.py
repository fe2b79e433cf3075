"""The model card of a run: huggingface_hub's ModelCard, filled from card_template.md (a Jinja template: the
text lives there, the numbers are put together here), with the confusion matrix and learning curves."""
from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image

from vit import runs
from vit.hub.plots import confusion_image, curves_image, reliability_image
from vit.data.pixels import describe
from vit.models import built_text
from vit.train.config import SETTINGS
from vit.train.metrics import IMBALANCED, SOURCE_WORDS

CARD = "README.md"
CONFUSION_PNG, CURVES_PNG, RELIABILITY_PNG = "confusion_matrix.png", "learning_curves.png", "reliability.png"
TEMPLATE = Path(__file__).with_name("card_template.md")


def model_card(run_dir: str | os.PathLike, repo_id: str, *, space_id: str | None = None,
               dataset_id: str | None = None):
    """The run's model card (huggingface_hub.ModelCard), for the repo `repo_id`; linking to its demo Space and its
    dataset repo when they were pushed with it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run_dir = Path(run_dir)
    config, metrics = runs.read_config(run_dir), runs.read_json(run_dir / runs.METRICS, {})
    report = runs.read_json(run_dir / runs.DATA_REPORT, {})
    train = config.get(runs.CONFIG_KEY, {})
    base = _base_model(train)
    estimate = metrics.get("accuracy_estimate") or {}
    acc = estimate.get("value")
    dataset_name = report.get("source") and Path(str(report["source"])).name or "custom image folder"
    data = ModelCardData(
        library_name="timm", pipeline_tag="image-classification", license=None,
        tags=["image-classification", "timm", "vision-transformer", "vit-studio"], base_model=base,
        model_name=repo_id.split("/")[-1], datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy"] if acc is not None else None,
        eval_results=[EvalResult(task_type="image-classification", dataset_type="imagefolder",
                                 dataset_name=dataset_name,
                                 dataset_split="test" if estimate.get("from") == "test" else "validation",
                                 metric_type="accuracy", metric_value=round(acc, 4))] if acc is not None else None)
    return ModelCard.from_template(data, template_path=TEMPLATE,
                                   **_context(repo_id, config, base, train, metrics, report),
                                   space_id=space_id, dataset_id=dataset_id,
                                   content_sha256=report.get("content_sha256"))


def _context(repo_id: str, config: dict, base: str | None, train: dict, metrics: dict, report: dict) -> dict:
    """What the template shows, ready to print."""
    labels = config.get("label_names") or []
    estimate = metrics.get("accuracy_estimate") or {}
    chosen = metrics.get("selection")
    n_val = sum(v.get("support", 0) for v in metrics.get("per_class", {}).values())
    start = (f"fine-tuned from [{base}](https://huggingface.co/{base})" if base else
             "trained from scratch (random initialisation)" if not train.get("pretrained", True) else
             f"fine-tuned from `{train.get('weights') or train.get('model')}`")
    split = report.get("split_counts", {})
    warnings = list(report.get("warnings") or [])
    if report.get("leakage"):
        warnings.append(f"{len(report['leakage'])} identical images were found in both training and validation; "
                        "validation accuracy may be optimistic.")
    return {
        "name": repo_id.split("/")[-1], "repo_id": repo_id, "arch": config.get("architecture", "unknown"),
        "shape": built_text(train.get("built"), weights=False),
        "start": start, "n_classes": len(labels), "class_list": ", ".join(f"`{lb}`" for lb in labels),
        "total": report.get("total"), "n_val": n_val,
        "results": bool(metrics.get("per_class")),
        "estimate": estimate.get("value") is not None and {
            "acc": f"{estimate['value']:.1%}", "interval": f"{estimate['low']:.1%} to {estimate['high']:.1%}",
            "images": estimate["images"], "kind": SOURCE_WORDS.get(estimate.get("from"), "images"),
            "says": estimate.get("says", ""), "balanced": _percent(estimate.get("balanced")),
            "macro_f1": None if estimate.get("macro_f1") is None else f"{estimate['macro_f1']:.3f}"},
        "imbalance": (f"{metrics['imbalance']:.1f}" if (metrics.get("imbalance") or 0) >= IMBALANCED else None),
        "calibration": _calibration(train.get("calibration")), "ood": train.get("ood"),
        "temperature": _temperature(train.get("calibration")), "reliability_png": RELIABILITY_PNG,
        "chosen": chosen and {"acc": f"{chosen['val_acc']:.1%}", "epoch": chosen["epoch"],
                              "epochs": chosen["epochs"], "images": chosen["images"]},
        "val_acc": None if metrics.get("val_acc") is None else f"{metrics['val_acc']:.1%}",
        "stopped_early": metrics.get("stopped_early"),
        "per_class": [{"name": c, "precision": f"{v['precision']:.3f}", "recall": f"{v['recall']:.3f}",
                       "f1": f"{v['f1']:.3f}", "support": v["support"]}
                      for c, v in metrics.get("per_class", {}).items()],
        "preprocessing": _preprocessing(config),
        "confusion_png": CONFUSION_PNG, "curves_png": CURVES_PNG, "method": _method(train),
        "settings": _settings(train),
        "recipe": train.get("recipe") or [],
        "splits": ", ".join(f"{s} {sum(v.values())}" for s, v in split.items() if v) if split else "",
        "warnings": warnings}


def _percent(value) -> str | None:
    return None if value is None else f"{value:.1%}"


def _temperature(calibration: dict | None) -> float:
    t = (calibration or {}).get("temperature")
    return round(float(t), 4) if isinstance(t, (int, float)) and not isinstance(t, bool) else 1.0


def _calibration(calibration: dict | None) -> dict | None:
    """The calibration in words: temperature, images, and the error before and after."""
    if not calibration or calibration.get("ece_after") is None:
        return None
    return {"t": f"{calibration['temperature']:.2f}", "images": calibration["images"],
            "before": f"{calibration['ece_before']:.3f}", "after": f"{calibration['ece_after']:.3f}"}


def _settings(train: dict) -> list[tuple[str, object]]:
    """The training table: the model as built (with what its weights are) in place of the name asked for and the
    pretrained flag, then the settings that applied."""
    rows = []
    for name, s in SETTINGS.items():  # each setting with a card label (vit.train.config), as it was used
        key = f"{name}_used" if f"{name}_used" in train else name
        if s.card and train.get(key) not in (None, {}, "") and (s.quick or not train.get("quick")):
            rows.append((s.card, train[key]))
    if train.get("built"):
        asked = ("model", "pretrained weights")  # (the name and flag asked for, where built says what was made)
        rows = [("model", built_text(train["built"]))] + [r for r in rows if r[0] not in asked]
    return rows


def _preprocessing(config: dict) -> str:
    cfg = config.get("pretrained_cfg") or {}
    try:
        return describe(cfg)
    except (KeyError, TypeError, ValueError):
        return "as its pretrained_cfg says"


def _method(train: dict) -> str | None:
    """How the model was trained, when not plain fine-tuning: a quick model, or LP-FT; and its teacher."""
    probe = train.get("probe_head") or train.get("lp_ft_head") or {}
    if train.get("quick"):
        return (f"quick model: only the head fitted (logistic regression, C = {probe.get('C')}) on the frozen "
                "features of the starting weights")
    said = []
    if train.get("lp_ft"):
        said.append("LP-FT: the head fitted on the frozen features first"
                    + (f" ({probe['val_acc']:.1%} on validation)" if probe.get("val_acc") is not None else "")
                    + ", then the whole model fine-tuned from it")
    teacher = train.get("teacher_info")
    if isinstance(teacher, dict):
        acc = teacher.get("val_acc")
        measured = (f", {acc:.1%} on the {teacher.get('images')} held-out images of the accuracy above"
                    if acc is not None else "")
        said.append(f"distilled (DeiT, {teacher.get('mode')}) from the teacher `{teacher.get('source')}` "
                    f"({teacher.get('model')}{measured})")
    return "; ".join(said) or None


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


def write_card(run_dir: str | os.PathLike, dest: str | os.PathLike, repo_id: str, *, space_id: str | None = None,
               dataset_id: str | None = None) -> list[Path]:
    """README.md and its images into `dest`; returns the files written."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = [dest / CARD]
    model_card(run_dir, repo_id, space_id=space_id, dataset_id=dataset_id).save(dest / CARD)
    for name, picture in _card_pictures(run_dir).items():
        picture.save(dest / name)
        written.append(dest / name)
    return written


def _card_pictures(run_dir: Path) -> dict[str, Image.Image]:
    """The pictures the card shows, by file name: the confusion matrix, the learning curves and the reliability
    diagram."""
    metrics = runs.read_json(run_dir / runs.METRICS, {})
    labels = runs.read_config(run_dir).get("label_names") or []
    pictures = {}
    if metrics.get("confusion_matrix"):
        pictures[CONFUSION_PNG] = confusion_image(metrics["confusion_matrix"], labels)
    if (metrics.get("calibration") or {}).get("diagram_after"):
        pictures[RELIABILITY_PNG] = reliability_image(metrics["calibration"])
    history = metrics.get("history") or runs.read_metrics_log(run_dir)
    if history:
        pictures[CURVES_PNG] = curves_image(history)
    return pictures


def _base_model(train: dict) -> str | None:
    model = str(train.get("model") or "")
    if not train.get("pretrained", True) or train.get("weights"):
        return None
    if model.startswith("hf-hub:"):
        return model[len("hf-hub:"):]
    if model and not model.startswith("local-dir:") and re.fullmatch(r"[\w.\-]+", model):
        return f"timm/{model}"
    return None
