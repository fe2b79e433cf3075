"""The Train tab's handlers: the form read into a TrainConfig (what will run, before Start), starting runs and
quick models, the live view, results, what the features say and the label review, comparison and actions."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from vit import data, hub, jobs, runs
from vit import models
from vit.models import DEFAULT_MODEL
from vit.train import ConfigError, TrainConfig, recipe, zero_means_off
from vit.ui.common import (MAX_MISTAKES, MAX_PAIRS, MAX_SUSPECTS, MISTAKES_LABEL, MODEL_CHOICES, NO_DATA, RUN_COLUMNS,
                           RUN_START, _duration, _epoch_text, _features_summary, _live_choice, _model_label,
                           _model_text, _run_choices, _run_image, _run_picker, _seen_run, _show,
                           refused)


SETTINGS = ("model", "scratch", "epochs", "batch_size", "lr")  # then ADVANCED: the Train form, in order


ADVANCED = ("img_size", "weight_decay", "label_smoothing", "warmup_epochs", "early_stopping", "randaugment", "mixup",
            "cutmix", "ema_decay", "val_fraction", "seed", "progressive")


def start_training(manager: jobs.JobManager, dataset: dict | None, model_name: str, scratch: bool,
                   epochs: float, batch_size: float, lr: float, owner: str | None, run_name: str | None = None,
                   quick: bool = False, **advanced):
    """Queue a run on the checked dataset (`quick`: the quick model); returns a message and the run picker
    (on the new run, unless the view is on a run that is training: it stays there)."""
    if not dataset:
        raise refused(NO_DATA.replace("**", ""))  # a toast shows text, not markdown
    if dataset.get("problem"):
        raise refused(f"The dataset {dataset['name']} cannot be trained on: {dataset['problem']} Fix it and upload "
                       "it again in the Data tab.", duration=None)
    config = planned_config(model_name, scratch, epochs, batch_size, lr, _facts(dataset), quick=quick, **advanced)
    try:
        if config.weights:  # "run:<id>": the weights of one of the visitor's own runs
            run_dir = manager.own_run(config.weights[len(RUN_START):], owner or None, "start from")
            if not (run_dir / runs.WEIGHTS).is_file():
                raise jobs.JobError(f"The run {run_dir.name} has no saved model yet: wait for it to finish.")
            config.model = runs.read_config(run_dir).get(runs.CONFIG_KEY, {}).get("model", config.model)
            config.weights = str(run_dir)
        if dataset.get("classes") or dataset.get("edits"):  # built class by class, or reviewed, in the app
            source = dataset.get("classes") or dataset["path"]
            with data.load_dataset(source, val_fraction=config.val_fraction, seed=config.seed,
                                   edits=dataset.get("edits")) as ds:
                run_id = manager.submit(ds, config, owner=owner or None, source_name=dataset["name"], name=run_name)
        else:
            run_id = manager.submit(dataset["path"], config, owner=owner or None, source_name=dataset["name"],
                                    name=run_name)
    except (jobs.JobError, data.DataError) as e:
        raise refused(str(e), duration=None)
    state = manager.progress(run_id, owner)
    rows = manager.list(owner or None)
    training = next((r["id"] for r in rows if r["state"] == "running" and r["id"] != run_id), None)
    return (f"Run **{state['name']}** ({run_id}) is {state['state']}: {state['message']}",
            _run_picker(rows, _live_choice(rows, training, new=run_id)))


def planned_config(model_name: str, scratch: bool, epochs, batch_size, lr, facts: dict | None = None,
                   quick: bool = False, **advanced) -> TrainConfig:
    """The TrainConfig the form describes, exactly as it will run: what the form leaves empty is chosen by
    vit.train.recipe (from the dataset's `facts` when training from scratch); gr.Error names a wrong setting. A
    model "run:<id>" starts from one of the visitor's runs: weights "run:<id>", which start_training
    resolves (and checks is theirs)."""
    try:
        start = (model_name or "").strip() if str(model_name or "").startswith(RUN_START) else None
        name = DEFAULT_MODEL if start else models.check_web_model_name((model_name or DEFAULT_MODEL).strip())
        typed = {k: _typed(v) for k, v in dict(advanced, epochs=epochs, batch_size=batch_size, lr=lr).items()}
        given = {k: v for k, v in typed.items() if v is not None}
        if given.get("img_size") == 0:  # 0: the recipe's (as older forms said)
            given.pop("img_size")
        given = zero_means_off(given)
        if "progressive" in given:
            given["progressive"] = given["progressive"] == "on"
        config = TrainConfig(model=name, pretrained=not scratch, weights=start, quick=bool(quick), **given).check()
        config = recipe.choose(config, recipe.DataFacts.from_dict(facts), given=given)
    except (models.ModelError, ConfigError) as e:
        raise refused(str(e), duration=None)
    return config


def describe_config(config: TrainConfig) -> str:
    """What will run: the model as built, its start, the image size and the schedule in a line, then each
    choice the recipe made for the data (an empty field in the form), and why."""
    entry = models.catalog_entry(config.model)
    arch = config.model.split(".")[0]
    if config.weights:
        model = f"the model of your run {Path(config.weights).name.removeprefix(RUN_START)}"
    elif config.pretrained:
        model = f"{entry.title if entry else config.model}, pretrained weights"
    else:
        shape = [f"{config.model_args['embed_dim']} wide" if "embed_dim" in config.model_args else None,
                 f"{config.model_args['depth']} blocks" if "depth" in config.model_args else None,
                 f"patch {config.patch_size}" if config.patch_size else None]
        model = f"{arch} from scratch (random weights{', ' + ', '.join(p for p in shape if p) if any(shape) else ''})"
    size = f"{config.img_size} px images" if config.img_size else "the model's own image size"
    grow = ", growing from smaller images" if config.progressive else ""
    line = f"{model}; {size}{grow}; {config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}."
    if config.quick:
        line = (f"a quick model from {model}: its head fitted on the frozen features of your images (seconds; "
                "the other settings do not apply).")
    elif config.lp_ft:
        line += " LP-FT: the head is first fitted on the frozen features, then the whole model fine-tuned from it."
    if not config.recipe:
        return line
    return line + "\n\nChosen for your data (fill in a field to set it yourself):\n" + "".join(
        f"\n- {note}" for note in config.recipe)


def run_plan(dataset: dict | None, model_name, scratch, epochs, batch_size, lr, *more) -> str:
    """The 'will run' line under the settings, updated as they or the dataset change (an error says what
    to fix)."""
    try:
        config = planned_config(model_name, scratch, epochs, batch_size, lr, _facts(dataset),
                                **dict(zip(ADVANCED, more)))
    except gr.Error as e:
        return f"**Cannot start:** {e.message}"
    return f"**Will train:** {describe_config(config)}"


def _auto_field(label: str) -> gr.Textbox:
    """A number the recipe chooses when it is left empty: a textbox, since Gradio's Number shows 0 for none."""
    return gr.Textbox("", label=label, placeholder="auto", max_lines=1, max_length=24, min_width=120)


def _typed(value):
    """A form value as typed: None when empty or 'auto', a number when it reads as one, else the text (which
    TrainConfig.check refuses, naming the field)."""
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in ("", "auto"):
            return None
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    return value


def _facts(dataset: dict | None) -> dict | None:
    return dataset.get("facts") if isinstance(dataset, dict) and not dataset.get("problem") else None


def list_runs(manager: jobs.JobManager, selected: str | None, owner: str | None):
    """The runs table and the run picker. A choice that is still a run is left alone (the value is not sent
    back: a poll sent before a click on Start would otherwise undo the move to the new run)."""
    rows = manager.list(owner or None)
    table = pd.DataFrame([[r["name"], r["state"], _model_text(r), _epoch_text(r),
                           "" if r["best_val_acc"] is None else f"{r['best_val_acc']:.1%}", r["message"], r["id"]]
                          for r in rows], columns=RUN_COLUMNS)
    if selected in {r["id"] for r in rows}:
        return table, gr.update(choices=_run_choices(rows))
    return table, _run_picker(rows, _live_choice(rows, selected))


def show_run(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """Progress of one run: a summary line and its loss and accuracy curves."""
    empty = pd.DataFrame(columns=["epoch", "value", "curve"])
    if not run_id:
        return "Start a run or pick one to see its progress.", empty, empty
    try:
        p = manager.progress(run_id, owner or None)
    except jobs.JobError as e:
        return str(e), empty, empty
    lines = [f"**{p['id']}**: {p['state']}. {p['message']}"]
    if p["state"] == "running" and p["steps_per_epoch"]:
        epochs, steps = p["epochs"] or 1, p["steps_per_epoch"]
        done = ((p["epoch"] or 0) * steps + (p["step"] or 0)) / (epochs * steps)
        lines.append(f"<progress value='{done:.3f}' max='1' style='width:100%'></progress> {done:.0%}")
        lines.append(f"Epoch {min((p['epoch'] or 0) + 1, epochs)}/{epochs}, step {p['step'] or 0}/{steps}"
                     + (f", about {_duration(p['eta_s'])} left" if p.get("eta_s") else ""))
    if p["history"] and "quick model" in (p.get("recipe") or ""):
        last = p["history"][-1]
        lines.append(f"Quick model: the head alone, fitted in {last['epoch_time']:.1f} s: train accuracy "
                     f"{last['train_acc']:.1%}, validation accuracy {last['val_acc']:.1%}.")
    elif p["history"]:
        last = p["history"][-1]
        lines.append(f"Last epoch: train loss {last['train_loss']:.3f}, val acc {last['val_acc']:.1%}, "
                     f"lr {last['lr']:.2e}, {last['images_per_s']:.0f} images/s")
    if p["cancel_requested"] and p["state"] == "running":
        lines.append("Cancel requested: it stops after the current step.")
    if p["state"] in ("failed", "interrupted") and not p["message"]:
        lines.append(f"```\n{manager.log_tail(run_id)}\n```")
    losses, accs = [], []
    for row in p["history"]:
        losses += [(row["epoch"], row["train_loss"], "train"), (row["epoch"], row["val_loss"], "validation")]
        accs += [(row["epoch"], row["train_acc"], "train"), (row["epoch"], row["val_acc"], "validation")]
    return ("\n\n".join(lines), pd.DataFrame(losses, columns=["epoch", "value", "curve"]),
            pd.DataFrame(accs, columns=["epoch", "value", "curve"]))


def curves_shown(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """The loss and accuracy curves are hidden for a quick model: one fit, nothing to draw."""
    try:
        quick = bool(run_id) and "quick model" in (manager.progress(run_id, owner or None).get("recipe") or "")
    except jobs.JobError:
        quick = False
    return gr.Row(visible=not quick)


def run_results(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """A finished run's per-class table, confusion matrix and misclassified validation images."""
    empty = pd.DataFrame(columns=["class", "precision", "recall", "F1", "images"])
    nothing = (empty, None, gr.Gallery(value=[], label=MISTAKES_LABEL))
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
    return table, picture, gr.Gallery(value=wrong, label=f"Misclassified validation images, true -> predicted "
                                                         f"({shown})")


def run_features(manager: jobs.JobManager, run_id: str | None, dataset: dict | None, owner: str | None):
    """What a run's frozen features say about its data (diagnostics.json): a summary, the learning curve,
    near-duplicate pairs side by side, and the likely label errors not yet reviewed in the visitor's
    dataset, with the picker to review them."""
    curve = pd.DataFrame(columns=["images", "accuracy"])  # training images, validation accuracy
    empty = ("", curve, [], [], gr.Dropdown(choices=[], value=None), gr.Dropdown(choices=[], value=None),
             gr.Column(visible=False))
    run_dir = _seen_run(manager, run_id, owner)
    found = runs.read_json(run_dir / runs.DIAGNOSTICS, None) if run_dir else None
    if not isinstance(found, dict):
        if run_dir and runs.read_json(run_dir / runs.METRICS, {}).get("per_class"):
            return ("*What the features say about the data (near-duplicates, likely label errors, a learning "
                    "curve) is shown for a Quick model, or a fine-tune with LP-FT.*", *empty[1:])
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
        pic = _run_image(run_dir, e["name"])
        if pic is not None:
            gallery.append((pic, f"{e['label']} -> {e['suggested']}? ({e['p_suggested']:.0%}) {e['name']}"))
    names = [e["name"] for e in errors[:MAX_SUSPECTS]]
    return ("\n".join(lines), table, side_by_side, gallery,
            gr.Dropdown(choices=names, value=names[0] if names else None),
            review_choices(manager, run_id, names[0] if names else None, owner), gr.Column(visible=True))


def review_choices(manager: jobs.JobManager, run_id: str | None, name: str | None, owner: str | None):
    """What can be done with a likely label error: relabel as the class suggested (first), keep, relabel
    as another class, or drop it."""
    suspect, classes = _suspect(manager, run_id, name, owner)
    if suspect is None:
        return gr.Dropdown(choices=[], value=None)
    choices = [(f"Relabel as {suspect['suggested']} (suggested)", suspect["suggested"]),
               (f"Keep it as {suspect['label']}", "keep"), ("Drop it from the dataset", "drop")]
    choices += [(f"Relabel as {c}", c) for c in classes if c not in (suspect["label"], suspect["suggested"])]
    return gr.Dropdown(choices=choices, value=suspect["suggested"])


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
    a, b = _run_image(run_dir, pair["a"], 128), _run_image(run_dir, pair["b"], 128)
    if a is None or b is None:
        return None, ""
    both = Image.new("RGB", (a.width + b.width + 8, max(a.height, b.height)), (128, 128, 128))
    both.paste(a, (0, 0))
    both.paste(b, (a.width + 8, 0))
    splits = pair.get("splits", ["", ""])
    return both, (f"{pair['a']} ({splits[0]}) and {pair['b']} ({splits[1]}): similarity {pair['similarity']:.3f}"
                  + (" - across train and validation" if pair.get("leak") else ""))


def _start_choices(rows: list[dict]) -> list[tuple[str, str]]:
    """The Model picker: the catalog, then the visitor's finished runs to start from."""
    return MODEL_CHOICES + [(f"Start from your run: {_model_label(r)}", f"{RUN_START}{r['id']}")
                            for r in rows if r["has_model"] and r["state"] == "completed"]


CONFIRM_DELETE = ("(run, who) => (run && confirm('Delete this run with its model and results? This cannot be "
                  "undone.')) ? [run, who] : [null, who]")


COMPARE_COLUMNS = ["best", "run", "model", "epochs", "batch", "lr", "image size", "val acc", "test acc", "time",
                   "id"]


def compare_runs(manager: jobs.JobManager, owner: str | None) -> pd.DataFrame:
    """The visitor's finished runs side by side: model, settings, accuracy and training time, best first."""
    rows = []
    for r in _finished(manager, owner):
        run_dir = manager.root / r["id"]
        config = runs.read_json(run_dir / jobs.JOB, {}).get("config", {})
        metrics = runs.read_json(run_dir / runs.METRICS, {})
        took = (r["finished_at"] or 0) - (r["created_at"] or 0)
        test = metrics.get("test", {}).get("acc")
        rows.append(["", r["name"], _model_text(r), r["epoch"] or "", config.get("batch_size", ""),
                     f"{config['lr']:g}" if config.get("lr") else "", config.get("img_size") or "model's",
                     f"{r['best_val_acc']:.1%}", "" if test is None else f"{test:.1%}",
                     _duration(took) if took > 0 else "", r["id"]])
    rows.sort(key=lambda row: -float(row[7].rstrip("%")))
    if rows:
        rows[0][0] = "★"
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def best_run(manager: jobs.JobManager, owner: str | None) -> str | None:
    """The visitor's finished run with the best validation accuracy (the newest among equals)."""
    done = _finished(manager, owner)
    return max(done, key=lambda r: (r["best_val_acc"], r["created_at"] or 0))["id"] if done else None


def _finished(manager: jobs.JobManager, owner: str | None) -> list[dict]:
    return [r for r in manager.list(owner or None)
            if r["state"] == "completed" and r["has_model"] and r["best_val_acc"] is not None]


def run_action(manager: jobs.JobManager, action: str, run_id: str | None, owner: str | None) -> str:
    """Cancel, resume or delete the selected run; the message says what happened."""
    if not run_id and action == "delete":
        return "Nothing was deleted."
    if not run_id:
        raise refused("Pick a run first.")
    try:
        return getattr(manager, action)(run_id, owner=owner or None)
    except jobs.JobError as e:
        raise refused(str(e))
