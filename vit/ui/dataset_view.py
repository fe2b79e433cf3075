"""The Data tab's view of a checked dataset (Shown: the report, counts, thumbnails, the dataset, its line) and
the expectations it sets."""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import pandas as pd

from vit import data, figures, models
from vit.train import recipe


class Shown(NamedTuple):
    """What a checked dataset fills (the Data tab's report, counts and grid, the page's dataset, the Train tab's
    line about it): check_dataset, sample_dataset, check_classes, restore_session and a review return it."""
    report: Any
    counts: Any
    grid: Any
    dataset: Any
    data_line: Any


def _show(ds: data.Dataset, path: str | None, name: str, classes: dict | None = None,
          edits: dict | None = None) -> Shown:
    r = ds.report
    rows = [{"class": c, "split": split, "images": n}
            for split, per in r.split_counts.items() for c, n in per.items()]
    df = pd.DataFrame(rows, columns=["class", "split", "images"])
    if r.ok:
        state = {"path": path, "name": name, "classes": classes, "facts": recipe.DataFacts.of(ds).to_dict(),
                 "labels": list(ds.classes),
                 **({"edits": edits} if edits else {})}
        line = (f"Dataset: **{name}**: {data.count(r.total, 'image')} in {data.count(len(ds.classes), 'class')} "
                f"({', '.join(ds.classes)}).")
    else:  # kept, so that Start can say why not
        problem = " ".join(r.errors)
        state = {"path": None, "name": name, "classes": None, "problem": problem}
        line = f"The dataset **{name}** cannot be trained on: {problem} Fix it and upload it again (Data tab)."
    hint = ("\n\n*Near-duplicates, likely label errors and whether more images would help: make a **Quick "
            "model** in the Train tab; its results read them from the model's features.*" if r.ok else "")
    if r.ok:
        hint += expectations(recipe.DataFacts.of(ds), _offline_now()) + other_class_hint(ds.classes)
    return Shown(report=r.to_markdown() + hint, counts=df, grid=data.thumbnails(ds), dataset=state, data_line=line)


OTHER_NAMES = {"other", "others", "none", "unknown", "background", "negative", "nothing", "misc", "rest"}


def other_class_hint(classes: list[str]) -> str:
    """The suggestion of an "other" class, for users who expect images of none of their classes."""
    if any(c.strip().lower().replace("_", " ") in OTHER_NAMES for c in classes):
        return ""
    return ("\n\n**Will the model see images of none of these classes?** It always answers with one of its classes; "
            "Classify says *Not sure* when an image does not look like your training images, but that check misses "
            "near misses (a wasp for a bee model). If you expect unrelated images, add a folder named **other** with "
            "examples of them: it becomes a class the model can answer.")


def expectations(facts: recipe.DataFacts, offline: bool) -> str:
    """Before training: what works offline, and what training from scratch can reach on images like these."""
    text = ""
    if offline:
        text += ("\n\n**Offline here:** pretrained weights cannot be downloaded from the Hugging Face Hub. What works: "
                 "training from scratch; a Quick model, LP-FT or a fine-tune started from one of your finished runs; "
                 "Classify, heatmaps, ONNX and the zip of your runs. What does not: the catalog's pretrained models, "
                 "unless their weights are already in this machine's Hugging Face cache.")
    photos = not facts.grayscale and facts.side >= 128  # (the sample shapes are 96 px)
    if photos:
        text += ("\n\n**From scratch, on photos like these, expect little:** a ViT from random weights on a few "
                 f"hundred photos learns colours and textures, not objects. {figures.SCRATCH_PHOTOS.text}. Fine-tune "
                 "pretrained weights when you can (online, or with them in the local cache).")
    else:
        text += ("\n\n**From scratch suits images like these** (small or grey, like shapes, digits or scans): "
                 f"{figures.SCRATCH_SMALL.text}.")
    return text


_offline_seen: list = []  # (when, offline) of the last look, for a minute


def _offline_now() -> bool:
    """Whether pretrained weights cannot be downloaded now (looked up at most once a minute)."""
    if _offline_seen and time.monotonic() - _offline_seen[0][0] < 60:
        return _offline_seen[0][1]
    offline = not models.hub_reachable()
    _offline_seen[:] = [(time.monotonic(), offline)]
    return offline
