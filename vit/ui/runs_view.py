"""Runs as the tabs show them: pickers, the model and accuracy in words, a run's images, what its features say."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from vit import data, jobs, runs, safety
from vit.runs import RunKind, RunState


def _features_summary(found: dict, reviewed: set) -> list[str]:
    """A run's diagnostics in three lines: the learning curve's verdict, near-duplicates, likely label errors
    (those not yet reviewed); a list the features cannot judge says so, and why."""
    points = found.get("learning_curve", {}).get("points", [])
    pairs_ = found.get("near_duplicates", [])
    judged = found.get("judged") or {}
    leaks = sum(bool(p.get("leak")) for p in pairs_)
    doubted = found.get("suspects", 0) - len(reviewed & {e["name"] for e in found.get("label_errors", [])})
    pairs_judged, labels_judged = judged.get("near_duplicates") or {}, judged.get("labels") or {}
    if pairs_judged.get("ok", True):
        at = f" (similarity {pairs_judged['threshold']:.3f} or more, where {pairs_judged['copies']} resized, " \
             "re-encoded and cropped copies of your own images are found)" if pairs_judged.get("copies") else ""
        pairs_line = (f"- **Near-duplicates:** {data.count(len(pairs_), 'pair')} of images that look the same to "
                      f"the model{at}" + (f", {leaks} across train and validation or test (validation accuracy is "
                                          "flattered: remove one of each)" if leaks else "") + ".")
    else:
        pairs_line = f"- **Near-duplicates:** not listed: {pairs_judged.get('why', '')}."
    if labels_judged.get("ok", True):
        labels_line = (f"- **Likely label errors:** {data.count(max(doubted, 0), 'image')} that a head fitted "
                       "without them finds confidently more like another class (confident learning, cleanlab).")
    else:
        labels_line = f"- **Likely label errors:** not listed: {labels_judged.get('why', '')}."
    return [f"- **Would more images help?** {found.get('learning_curve', {}).get('verdict', '')} "
            + ", ".join(f"{p['images']} images: {p['val_acc']:.0%}" for p in points) + ".", pairs_line, labels_line]


def _seen_run(manager: jobs.JobManager, run_id: str | None, owner: str | None) -> Path | None:
    """The visitor's run `run_id`, to look at; None when there is no id or it is not theirs (a view shows
    nothing rather than confirm another visitor's run)."""
    if not run_id:
        return None
    try:
        return manager.own_run(run_id, owner or None, "see")
    except jobs.JobError:
        return None


def _run_image(run_dir: Path, name: str, side: int = 160):
    """A copy of one image of the run's own data, `side` pixels on its longer side (a small image is enlarged by
    a whole factor, pixels kept sharp); None when it cannot be read."""
    from PIL import Image
    try:
        path = safety.safe_join(run_dir / jobs.DATA_DIR, *str(name).split("/"))
        img, _, _ = data.read_rgb(path, draft_side=side, max_side=640)
    except (ValueError, data.DataError):
        return None
    img.thumbnail((side, side))
    factor = side // max(img.size)
    if factor >= 2:
        img = img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    return img


def _live_choice(rows: list[dict], current: str | None, new: str | None = None) -> str | None:
    """The run the live view shows: it stays on a run that is training; else a new run just started, the
    current choice, a training run, and last the newest."""
    ids = [r["id"] for r in rows]
    running = [r["id"] for r in rows if r["state"] == RunState.RUNNING]
    if current in running:
        return current
    if new in ids:
        return new
    if current in ids:
        return current
    return running[0] if running else (ids[0] if ids else None)


def _run_picker(rows: list[dict], value: str | None):
    """The Train tab's run picker: runs by name and state, their id as the value."""
    return gr.Dropdown(choices=_run_choices(rows), value=value)


def _run_choices(rows: list[dict]) -> list[tuple[str, str]]:
    return [(f"{r['name']} ({r['state']})", r["id"]) for r in rows]


def _model_picker(rows: list[dict], current: str | None, follow: str | None = None, shown: bool = True):
    """A picker of the runs with a saved model, by name, model and accuracy, newest first. It moves to
    `follow` (a run that has just finished), else keeps the current choice (or a typed hf-hub id), else
    takes the newest finished run. `shown`: the page shows `current` already (a poll), so a kept choice is not
    sent back; else (a page load restoring the visitor's last pick) it is."""
    done = [r for r in rows if r["has_model"]]
    ids = [r["id"] for r in done]
    finished = [r["id"] for r in done if r["state"] == RunState.COMPLETED]
    if follow in ids:
        value = follow
    elif current and (current in ids or current.startswith("hf-hub:")):
        value = current
    else:
        value = finished[0] if finished else (ids[0] if ids else None)
    choices = [(_model_label(r), r["id"]) for r in done]
    if value and value.startswith("hf-hub:"):
        choices.append((value, value))
    if shown and value == current and follow not in ids:  # kept: not sent back, or a poll in flight while the
        return gr.update(choices=choices)                 # visitor picks another model would put the old one back
    return gr.Dropdown(choices=choices, value=value)


def _model_text(r: dict) -> str:
    """The model as built ('ViT 96 wide, 6 blocks, patch 4, 32 px, 0.68M parameters, from scratch'), or, before
    it is built, the name asked for and how it starts."""
    if r.get("arch"):
        return r["arch"] + (", quick model" if r.get("kind") == RunKind.QUICK else "")
    model = (r["model"] or "").split(".")[0]
    return f"{model} ({r['recipe']})" if r.get("recipe") else model


ESTIMATE_SHORT = {"test": "test", "holdout": "held out", "unselected": "val, unselected"}  # (the runs table)


def _accuracy_text(r: dict, short: bool = False) -> str:
    """A finished run's accuracy estimate with its interval and images ('84.0% (77-89%, 150 test images)'), or
    while it trains the best validation accuracy so far (chosen on those images, and said so)."""
    e = r.get("estimate") or {}
    if e.get("value") is not None:
        if short:
            return f"{e['value']:.0%} ({e['low']:.0%}-{e['high']:.0%})"
        return f"{e['value']:.1%} ({e['low']:.0%}-{e['high']:.0%}, {e['images']} {ESTIMATE_SHORT.get(e['from'], '')})"
    if r.get("best_val_acc") is not None and r["state"] != RunState.COMPLETED:
        return f"best val so far {r['best_val_acc']:.1%}"
    return ""


def _model_label(r: dict) -> str:
    """'pets.zip · 14:05 · ViT 96 wide, 6 blocks, ... from scratch · 84% (77-89%)': the name, the model as built,
    the accuracy estimate, so that runs with the same name are told apart."""
    acc = _accuracy_text(r, short=True)
    state = "" if r["state"] == RunState.COMPLETED else f" ({r['state']})"
    return f"{r['name']} · {_model_text(r)}{' · ' + acc if acc else ''}{state}"


def _state_key(manager: jobs.JobManager, run_id: str | None) -> str:
    try:
        return f"{run_id}:{runs.read_status(runs.run_path(manager.root, run_id)).get('state')}" if run_id else ""
    except ValueError:
        return ""


def _epoch_text(r: dict) -> str:
    if r["epochs"] is None:
        return ""
    done = r["epoch"] or 0
    return f"{done}/{r['epochs']}" if r["state"] != RunState.QUEUED else f"0/{r['epochs']}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
