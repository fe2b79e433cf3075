"""The selected run's results, under the runs in the Train tab: per class, the confusion matrix, the misclassified
validation images, what the frozen features say about the data, and the review of likely label errors (which
changes the visitor's dataset)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from vit import data, hub, jobs, runs
from vit.ui.common import MAX_MISTAKES, MAX_PAIRS, MAX_SUSPECTS, MISTAKES_LABEL
from vit.ui.dataset_view import _show
from vit.ui.page import PRIVATE, Page, outputs, refused
from vit.ui.runs_view import _features_summary, _run_image, _seen_run
from vit.ui.data_tab import keeping


RELIABILITY_LABEL = ("Reliability diagram: in each confidence bin, the share right; calibrated answers follow the "
                     "diagonal")
PAIR_SIDE, SUSPECT_SIDE = 320, 256  # pictures big enough to judge a pair or a label by


def layout() -> SimpleNamespace:
    """The results accordion: the run's report, then what its features say, with the review."""
    with gr.Accordion("Results of the selected run", open=True):
        per_class = gr.Dataframe(label="Per class (validation)", interactive=False)
        with gr.Row():
            confusion = gr.Image(label="Confusion matrix", show_label=False, type="pil", min_width=280)
            mistakes = gr.Gallery(label=MISTAKES_LABEL, columns=4, height="auto", min_width=280)
        reliability = gr.Image(label=RELIABILITY_LABEL, type="pil", visible=False, height=320)
        features = gr.Markdown()
        with gr.Column(visible=False) as features_box:  # shown for a run with diagnostics
            with gr.Row():
                curve = gr.LinePlot(x="images", y="accuracy", y_lim=[0, 1],
                                    title="Learning curve (the head alone, on part of the data)", min_width=280)
            pairs = gr.Gallery(label="Near-duplicates, side by side", columns=1, height="auto",
                               object_fit="contain", preview=False)
            suspects = gr.Gallery(label="Likely label errors", columns=3, height="auto", object_fit="contain")
            with gr.Row():
                suspect = gr.Dropdown([], label="Review an image", scale=3)
                verdict = gr.Dropdown([], label="Action", scale=2)
                review_btn = gr.Button("Apply to my dataset", scale=1)
            review_msg = gr.Markdown()
    return SimpleNamespace(per_class=per_class, confusion=confusion, mistakes=mistakes, reliability=reliability,
                           features=features,
                           features_box=features_box, curve=curve, pairs=pairs, suspects=suspects, suspect=suspect,
                           verdict=verdict, review_btn=review_btn, review_msg=review_msg)


def wire(page: Page, tab: SimpleNamespace, selected: gr.Dropdown, run_key: gr.State, shown: list) -> None:
    """Drawn when the picked run changes, and once per change of its state (e.g. when it completes), not on
    every tick. A review changes the dataset: `shown` (the Data tab) is drawn again and kept."""
    picked = [selected, page.owner]
    results = outputs(Results, per_class=tab.per_class, confusion=tab.confusion, mistakes=tab.mistakes,
                      reliability=tab.reliability)
    diagnosed = outputs(Features, summary=tab.features, curve=tab.curve, pairs=tab.pairs, suspects=tab.suspects,
                        suspect=tab.suspect, verdict=tab.verdict, box=tab.features_box)
    features = page.bind(run_features)
    selected.change(page.bind(run_results), picked, results, api_name="run_results", show_progress="hidden")
    run_key.change(page.bind(run_results), picked, results, **PRIVATE)
    selected.change(features, [selected, page.dataset, page.owner], diagnosed, api_name="run_features",
                    show_progress="hidden")
    run_key.change(features, [selected, page.dataset, page.owner], diagnosed, **PRIVATE)
    tab.suspect.change(page.bind(review_choices), [selected, tab.suspect, page.owner], tab.verdict, **PRIVATE)
    tab.review_btn.click(page.bind(review_image), [page.dataset, selected, tab.suspect, tab.verdict, page.owner],
                         [*shown, tab.review_msg], api_name="review_image").then(**keeping(page)).then(
        features, [selected, page.dataset, page.owner], diagnosed, api_visibility="private")


def run_results(manager: jobs.JobManager, run_id: str | None, owner: str | None) -> Results:
    """A finished run's per-class table, confusion matrix, misclassified validation images and reliability
    diagram (hidden where the run has none)."""
    empty = pd.DataFrame(columns=["class", "precision", "recall", "F1", "images"])
    nothing = Results(empty, None, gr.Gallery(value=[], label=MISTAKES_LABEL), gr.Image(value=None, visible=False))
    run_dir = _seen_run(manager, run_id, owner)
    if run_dir is None:
        return nothing
    metrics = runs.read_json(run_dir / runs.METRICS, {})
    if not metrics.get("per_class"):
        return nothing
    table = pd.DataFrame([[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                          for c, v in metrics["per_class"].items()], columns=list(empty.columns))
    picture = hub.confusion_image(metrics["confusion_matrix"], metrics.get("classes", []))
    wrong = []  # pictures, not paths: the run folder need not be one Gradio may serve (e.g. /data on a Space)
    misclassified = sorted(metrics.get("misclassified", []), key=lambda m: -m.get("confidence", 0))
    for m in misclassified[:MAX_MISTAKES]:
        img = _run_image(run_dir, m["name"])
        if img is not None:
            wrong.append((img, f"{m['true']} -> {m['predicted']} ({m['confidence']:.0%})"))
    shown = (f"all {len(misclassified)}" if len(misclassified) <= MAX_MISTAKES
             else f"the {MAX_MISTAKES} most confident of {len(misclassified)}")
    calibration = metrics.get("calibration") or {}
    diagram = hub.reliability_image(calibration) if calibration.get("diagram_after") else None
    label = f"Misclassified validation images, true -> predicted ({shown})"
    return Results(per_class=table, confusion=picture, mistakes=gr.Gallery(value=wrong, label=label),
                   reliability=gr.Image(value=diagram, visible=diagram is not None))


class Results(NamedTuple):
    """What run_results fills: the per-class table, the confusion matrix, the misclassified images, the reliability
    diagram."""
    per_class: Any
    confusion: Any
    mistakes: Any
    reliability: Any


class Features(NamedTuple):
    """What run_features fills: the summary, the learning curve, the near-duplicate pairs, the likely label errors,
    the picker of one to review and its actions, and the box they are in."""
    summary: Any
    curve: Any
    pairs: Any
    suspects: Any
    suspect: Any
    verdict: Any
    box: Any


def run_features(manager: jobs.JobManager, run_id: str | None, dataset: dict | None, owner: str | None) -> Features:
    """What a run's frozen features say about its data (diagnostics.json): a summary, the learning curve,
    near-duplicate pairs side by side, and the likely label errors not yet reviewed in the visitor's
    dataset, with the picker to review them."""
    curve = pd.DataFrame(columns=["images", "accuracy"])  # training images, validation accuracy
    empty = Features(summary="", curve=curve, pairs=[], suspects=[], suspect=gr.Dropdown(choices=[], value=None),
                     verdict=gr.Dropdown(choices=[], value=None), box=gr.Column(visible=False))
    run_dir = _seen_run(manager, run_id, owner)
    found = runs.read_json(run_dir / runs.DIAGNOSTICS, None) if run_dir else None
    if not isinstance(found, dict):
        if run_dir and runs.read_json(run_dir / runs.METRICS, {}).get("per_class"):
            return empty._replace(summary="*What the features say about the data (near-duplicates, likely label "
                                          "errors, a learning curve) is shown for a Quick model, or a fine-tune with "
                                          "LP-FT.*")
        return empty
    reviewed = set((dataset or {}).get("edits") or {})
    errors = [e for e in found.get("label_errors", []) if e["name"] not in reviewed]
    points = found.get("learning_curve", {}).get("points", [])
    pairs_ = found.get("near_duplicates", [])
    lines = ["### What the features say about the data", *_features_summary(found, reviewed)]
    if errors:
        lines[-1] = lines[-1][:-1] + (", the most doubtful first (review them below: relabel, keep or drop; the "
                                      "changes go to your dataset in the Data tab).")
    table = pd.DataFrame([(p["images"], p["val_acc"]) for p in points], columns=list(curve.columns))
    side_by_side = [(pic, caption) for pic, caption in (_pair_picture(run_dir, p) for p in pairs_[:MAX_PAIRS])
                    if pic is not None]
    gallery = []
    for e in errors[:MAX_SUSPECTS]:
        pic = _run_image(run_dir, e["name"], SUSPECT_SIDE)
        if pic is not None:
            gallery.append((pic, f"{e['label']} -> {e['suggested']}? ({e['p_suggested']:.0%}) {e['name']}"))
    names = [e["name"] for e in errors[:MAX_SUSPECTS]]
    return Features(summary="\n".join(lines), curve=table,
                    pairs=gr.Gallery(value=side_by_side, visible=bool(side_by_side)),
                    suspects=gr.Gallery(value=gallery, visible=bool(gallery)),
                    suspect=gr.Dropdown(choices=names, value=names[0] if names else None),
                    verdict=review_choices(manager, run_id, names[0] if names else None, owner),
                    box=gr.Column(visible=True))


def review_choices(manager: jobs.JobManager, run_id: str | None, name: str | None, owner: str | None):
    """What can be done with a likely label error: keep it (the default), relabel as the class suggested,
    drop it, or relabel as another class."""
    suspect, classes = _suspect(manager, run_id, name, owner)
    if suspect is None:
        return gr.Dropdown(choices=[], value=None)
    choices = [(f"Keep it as {suspect['label']}", "keep"),
               (f"Relabel as {suspect['suggested']} (the head's guess)", suspect["suggested"]),
               ("Drop it from the dataset", "drop")]
    choices += [(f"Relabel as {c}", c) for c in classes if c not in (suspect["label"], suspect["suggested"])]
    return gr.Dropdown(choices=choices, value="keep")  # a change to the data is a choice, never a default


def review_image(manager: jobs.JobManager, dataset: dict | None, run_id: str | None, name: str | None,
                 action: str | None, owner: str | None):
    """Apply a review of a likely label error to the visitor's dataset (relabel, keep or drop), and show
    the Data tab again with its report. Only images the run flagged, and classes the run has, are taken."""
    if not dataset or dataset.get("problem") or not (dataset.get("path") or dataset.get("classes")):
        raise refused("Load the dataset in the Data tab first: the review changes it.")
    suspect, classes = _suspect(manager, run_id, name, owner)
    if suspect is None:
        raise refused("Pick one of the run's likely label errors to review.")
    if action not in ("keep", "drop", *classes):
        raise refused("Pick what to do with it: relabel, keep or drop.")
    edits = dict(dataset.get("edits") or {})
    edits[name] = suspect["label"] if action == "keep" else None if action == "drop" else action
    source = dataset.get("classes") or dataset["path"]
    try:
        with data.load_dataset(source, edits=edits) as ds:
            if name not in {it.name for it in ds.items} | {s.name for s in ds.report.skipped}:
                raise refused(f"{name} is not in your dataset {dataset['name']}: this run was trained on other "
                              "data. Load that dataset in the Data tab to review it.")
            shown = _show(ds, dataset.get("path"), dataset["name"], classes=dataset.get("classes"), edits=edits)
    except data.DataError as e:
        raise refused(str(e), duration=None)
    done = {"keep": f"kept as {suspect['label']}", "drop": "dropped from the dataset"}.get(action,
                                                                                       f"relabelled as {action}")
    return (*shown, f"**{name}**: {done}. The Data tab's report shows the change; train again (a Quick model "
                    "takes seconds) to see its effect.")


def _suspect(manager: jobs.JobManager, run_id: str | None, name: str | None,
             owner: str | None) -> tuple[dict | None, list[str]]:
    """One of the visitor's run's likely label errors, by image name, and the run's classes; (None, []) when
    the run is not theirs or did not flag that image."""
    run_dir = _seen_run(manager, run_id, owner) if name else None
    found = runs.read_json(run_dir / runs.DIAGNOSTICS, {}) if run_dir else {}
    suspect = next((e for e in found.get("label_errors", []) if e.get("name") == name), None) \
        if isinstance(found, dict) else None
    if suspect is None:
        return None, []
    return suspect, runs.read_json(run_dir / runs.METRICS, {}).get("classes", [])


def _pair_picture(run_dir: Path, pair: dict):
    """Two near-duplicates side by side, and a caption with their names, splits and similarity."""
    from PIL import Image
    a, b = _run_image(run_dir, pair["a"], PAIR_SIDE), _run_image(run_dir, pair["b"], PAIR_SIDE)
    if a is None or b is None:
        return None, ""
    both = Image.new("RGB", (a.width + b.width + 8, max(a.height, b.height)), (128, 128, 128))
    both.paste(a, (0, 0))
    both.paste(b, (a.width + 8, 0))
    splits = pair.get("splits", ["", ""])
    return both, (f"{pair['a']} ({splits[0]}) and {pair['b']} ({splits[1]}): similarity {pair['similarity']:.3f}"
                  + (" - across train and validation" if pair.get("leak") else ""))
