"""What the tabs share: the app's constants, refusals as toasts, pickers of runs, the Data tab's view of a dataset,
small formatting helpers."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import secrets
import sys
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import gradio as gr
import pandas as pd

from vit import data, jobs, runs
from vit.runs import RunKind, RunState
from vit import models, safety
from vit.models import CATALOG
from vit.safety import HostLimits
from vit.train import recipe
from vit.train.config import DEFAULTS, SETTINGS, in_form

if TYPE_CHECKING:
    from vit.predict import LoadedModel


TITLE = "ViT Studio"


INTRO = ("Fine-tune a Vision Transformer on your own images, see what it looks at, and share it. "
         "Start with your data: a .zip with one folder per class (cat/001.jpg, dog/001.jpg, ...).")


THEME = gr.themes.Soft()


CSS = ""


MODEL_CHOICES = [(f"{m.title} - {m.params_m:g}M params, {m.device}", m.name) for m in CATALOG]


RUN_COLUMNS = ["run", "state", "model", "epoch", "accuracy (95% interval)", "message", "id"]


_METHOD_TITLES = {"chefer": "Gradient-weighted attention (default)", "rollout": "Attention rollout",
                  "attention": "Raw attention (pick the layer and head)", "gradcam": "Grad-CAM"}
DEFAULT_METHOD = next(iter(_METHOD_TITLES))  # vit.explain's own list and default, without importing torch for the page


CLASS_SPECIFIC = ("chefer", "gradcam")  # the others do not depend on the class explained


MAX_CLASSES = 8


MAX_BATCH = 100  # images in one "classify all"


PREDICTED = "the predicted class"  # the first choice of "Explain class"


MAX_MISTAKES = 24  # misclassified validation images shown for a run


MISTAKES_LABEL = "Misclassified validation images (true -> predicted)"


SAMPLE_PER_CLASS = 500  # a from-scratch run learns them to >= 95% in under a minute on 2 cores (bench/scratch_bench.py)


SAMPLE_MAX = 1000


NO_DATA = "No dataset yet: upload one or use the sample data in the **Data** tab."


RUN_START = "run:"  # a Model choice that starts from one of the visitor's runs: "run:<id>"


MAX_SUSPECTS = 24  # likely label errors shown for a run


MAX_PAIRS = 12     # near-duplicate pairs shown


FORM = ("model", "scratch", *in_form("main"), *in_form("advanced"))  # the Train form's fields: its API names
# (start_training, quick_model), the settings remembered for a visit; all but "scratch" are TrainConfig's


DOWNLOADS = Path(tempfile.gettempdir()) / "vit-studio-downloads"  # zips and ONNX files being served


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


class _Recent:
    """A small thread-safe LRU of recent explanations (a heatmap is a few KB; the image is not kept)."""

    def __init__(self, size: int = 64):
        from collections import OrderedDict
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_explained = _Recent()


class OnePerVisitor:
    """At most one request of a kind per visitor at a time (their token, or their page's session on events that
    have no token): a second one is refused at once rather than queued behind the first, so no visitor holds a lane
    twice."""

    def __init__(self):
        self.busy, self.lock = set(), threading.Lock()

    @contextlib.contextmanager
    def holding(self, who: str | None, message: str):
        if not who:
            yield
            return
        with self.lock:
            if who in self.busy:
                raise refused(message)
            self.busy.add(who)
        try:
            yield
        finally:
            with self.lock:
                self.busy.discard(who)


ONE_BATCH_EACH = OnePerVisitor()   # batches of images to classify
ONE_CHECK_EACH = OnePerVisitor()   # dataset checks (an upload, the sample, classes built here)


def refused(message: str, **options) -> gr.Error:
    """A request the app turns down for the visitor's own reasons: a toast with the message, one line in the
    log, no traceback (tracebacks are for bugs)."""
    print(f"vit.ui: refused: {message.splitlines()[0][:300] if message else ''}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False, **options)


def _unopened_path(component: gr.Image):
    """A preprocess for gr.Image(type="filepath") that hands the handler the uploaded file's path without
    opening it: the app checks the header itself, with a clear message for a file that is not an image
    (Gradio's own open fails without one). Set on the instance: a subclass would make Gradio write a .pyi
    stub beside this module."""
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return gradio_preprocess(payload)
        return str(payload.path)

    return preprocess


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


def _model_picker(rows: list[dict], current: str | None, follow: str | None = None):
    """A picker of the runs with a saved model, by name, model and accuracy, newest first. It moves to
    `follow` (a run that has just finished), else keeps the current choice (or a typed hf-hub id), else
    takes the newest finished run."""
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


def _load(manager: jobs.JobManager, source: str | None, owner: str | None = None) -> LoadedModel:
    """The model of one of the visitor's runs, or of an hf-hub: id; never a folder named by the visitor."""
    from vit import predict  # torch and timm: with the first model, not with the page
    source = (source or "").strip()
    if not source:
        raise refused("Pick a model: train one in the Train tab, or type hf-hub:user/repo.")
    try:
        if source.startswith("hf-hub:"):
            where = models.check_web_model_name(source)
        elif ":" in source or "/" in source or "\\" in source:
            raise refused(f"{source[:80]!r} is not one of your runs or an hf-hub:user/repo id.", duration=None)
        else:
            where = manager.own_run(source, owner or None, "use")
        return predict.load_model(where, max_params_m=HostLimits.from_env().max_model_params_m)
    except (predict.PredictError, models.ModelError, jobs.JobError, ValueError) as e:
        raise refused(str(e), duration=None)


def _csv(rows: list[list], header: list[str]) -> str:
    """rows as a CSV file to download (in a fresh downloads folder, swept like the others)."""
    import csv
    path = _download_folder() / "predictions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[spreadsheet_safe(cell) for cell in row] for row in rows])
    return str(path)


def spreadsheet_safe(cell):
    """A text cell a spreadsheet will show, not run: one that begins like a formula (= + - @, a tab or a carriage
    return: a file named '=1+2.png') gets a leading apostrophe (OWASP's advice for CSV injection). Numbers stay
    numbers."""
    if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + cell
    return cell


def _placeholder() -> str:
    path = Path(tempfile.gettempdir()) / "vit-studio-unreadable.png"
    if not path.is_file():
        from PIL import Image
        Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    return str(path)


def csv_rows(path: Path):
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


class Shown(NamedTuple):
    """What a checked dataset fills (the Data tab's report, counts and grid, the page's dataset, the Train tab's
    line about it): check_dataset, sample_dataset, check_classes, restore_session and a review return it."""
    report: Any
    counts: Any
    grid: Any
    dataset: Any
    data_line: Any


def outputs(contract: type, **components) -> list:
    """The components that an event returning `contract` (a NamedTuple of updates) fills, in its fields' order:
    a handler names each update, and no order can slip."""
    if set(components) != set(contract._fields):
        raise ValueError(f"{contract.__name__} fills {contract._fields}, not {tuple(components)}")
    return [components[f] for f in contract._fields]


def _show(ds: data.Dataset, path: str | None, name: str, classes: dict | None = None,
          edits: dict | None = None) -> Shown:
    r = ds.report
    rows = [{"class": c, "split": split, "images": n}
            for split, per in r.split_counts.items() for c, n in per.items()]
    df = pd.DataFrame(rows, columns=["class", "split", "images"])
    if r.ok:
        state = {"path": path, "name": name, "classes": classes, "facts": recipe.DataFacts.of(ds).to_dict(),
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
                 "hundred photos learns colours and textures, not objects. Tried on about 400 photos of two insect "
                 "species, it delivered 74% (chance: 50%), where pretrained weights fine-tuned usually reach 90% or "
                 "more. Fine-tune pretrained weights when you can (online, or with them in the local cache).")
    else:
        text += ("\n\n**From scratch suits images like these** (small or grey, like shapes, digits or scans): 98% on "
                 "the sample shapes, 98.6% on digit glyphs, in minutes on a CPU.")
    return text


_offline_seen: list = []  # (when, offline) of the last look, for a minute


def _offline_now() -> bool:
    """Whether pretrained weights cannot be downloaded now (looked up at most once a minute)."""
    if _offline_seen and time.monotonic() - _offline_seen[0][0] < 60:
        return _offline_seen[0][1]
    offline = not models.hub_reachable()
    _offline_seen[:] = [(time.monotonic(), offline)]
    return offline


PRIVATE = dict(api_visibility="private", show_progress="hidden")  # an event of the page's own, not of the API


@dataclass
class Page:
    """What the tabs' events share: the job manager (made on first use), the host's limits, the visitor's
    token (kept by the browser), their checked dataset, and the clock the run views poll on."""

    app: gr.Blocks
    manager: Callable[[], jobs.JobManager]
    limits: HostLimits
    owner: gr.BrowserState
    dataset: gr.State
    timer: gr.Timer

    def bind(self, fn: Callable, *first) -> Callable:
        """`fn(manager, *first, ...)` as an event handler of the rest. Its names and defaults stay: the API page
        shows them, and a client may leave out those with a default."""
        get = self.manager
        check = typed_inputs(fn, skip=1 + len(first))

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            check(args, kwargs)
            return fn(get(), *first, *args, **kwargs)

        handler.__name__ = f"_{fn.__name__}"  # Gradio names an event by its function: the public names stay free
        signature = inspect.signature(fn)
        handler.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1 + len(first):])
        return handler


def typed_inputs(fn: Callable, skip: int = 0) -> Callable[[tuple, dict], None]:
    """A check of the values an event hands `fn` (after its first `skip` parameters) against its annotations: text
    where it says str, a finite number where it says float or int, a bool where it says bool (None where allowed).
    A client of the API can send anything (an owner of 123, a model of ["a"], NaN); this refuses it in words
    before any of it is used."""
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())[skip:]

    def check(args: tuple, kwargs: dict) -> None:
        values = [*zip(params, args), *((signature.parameters[k], v) for k, v in kwargs.items()
                                        if k in signature.parameters)]
        for param, value in values:
            wants = {w.strip() for w in str(param.annotation).split("|")}
            if value is None or param.kind is param.VAR_POSITIONAL:
                continue
            title = param.name.replace("_", " ")
            if "str" in wants and isinstance(value, str):
                continue
            if wants & {"float", "int"} and not isinstance(value, bool) and isinstance(value, (int, float)):
                if not math.isfinite(value):
                    raise refused(f"The {title} must be a number (got {str(value)[:20]}).")
                continue
            if "bool" in wants and isinstance(value, bool):
                continue
            expected = ["text" if "str" in wants else "", "a number" if wants & {"float", "int"} else "",
                        "true or false" if "bool" in wants else ""]
            expected = " or ".join(e for e in expected if e)
            if expected:
                got = type(value).__name__ if "str" in wants else str(value)[:20]
                raise refused(f"The {title} must be {expected} (got {got}).")

    return check


def form_signature(fn: Callable) -> inspect.Signature:
    """`fn`'s signature with its **form replaced by a keyword-only parameter for each of FORM's fields, typed from
    its Setting: the names an event passes them by (`inputs_kwargs`), the API shows and typed_inputs checks."""
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for name in FORM:
        s, default = SETTINGS.get(name), DEFAULTS.get(name)
        if name == "scratch" or isinstance(default, bool) and not s.auto:
            kind = "bool"
        elif s.kind:  # a number; an "auto" one is text in the form (empty: auto), a number or text from a client
            kind = "float | str" if s.auto else "float"
        else:  # the model, a choice, auto/on/off
            kind = "str"
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=f"{kind} | None"))
    return signature.replace(parameters=params)


def _manager_getter(manager: jobs.JobManager | None):
    made: list[jobs.JobManager] = [manager] if manager else []

    def get() -> jobs.JobManager:
        if not made:
            made.append(jobs.JobManager())
        return made[0]

    return get


def _ensure_owner(owner: str | None) -> str:
    return owner or secrets.token_urlsafe(16)


def _whole_number(value, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value != int(value):
        raise ValueError(f"{name} must be a whole number (got {str(value)[:20]}).")
    if abs(value) > 10_000:
        raise ValueError(f"{name} {value:g} does not exist.")
    return int(value)


def _download_folder() -> Path:
    """A fresh folder for one file to serve; folders older than the temp age limit are removed first."""
    sweep_temp(HostLimits.from_env().temp_max_age_s)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=DOWNLOADS))


def sweep_temp(max_age_s: float, now: float | None = None) -> int:
    """Remove the downloads the app served (zips, ONNX files, CSVs, and the empty folders of failed ones) made longer
    ago than max_age_s; return how many went. Gradio's own copies of uploads and outputs are swept by Gradio
    (delete_cache)."""
    now = time.time() if now is None else now
    removed = 0
    for old in DOWNLOADS.iterdir() if DOWNLOADS.is_dir() else []:
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
                removed += 1
        except OSError:
            pass
    return removed


_sweeping: list[threading.Thread] = []


def sweep_temp_every(max_age_s: float) -> None:
    """sweep_temp on a timer (a quarter of the age limit, at least a minute), in one thread per process: a file
    served once goes after its age limit even if nobody downloads anything again."""
    if _sweeping:
        return
    every = max(60.0, max_age_s / 4)

    def forever():
        while True:
            sweep_temp(HostLimits.from_env().temp_max_age_s)
            time.sleep(every)

    _sweeping.append(threading.Thread(target=forever, name="vit-temp-sweep", daemon=True))
    _sweeping[0].start()


def _remove_upload(path: str | None) -> None:
    """Delete an uploaded file that will not be used (Gradio keeps uploads in its cache otherwise)."""
    try:
        if path and Path(path).is_file():
            Path(path).unlink()
    except OSError:
        pass


def launch_options() -> dict:
    """launch() settings that keep a shared app bounded: the upload cap (Gradio refuses larger files,
    naming the cap) and the theme."""
    return {"theme": THEME, "css": CSS, "max_file_size": f"{HostLimits.from_env().max_upload_mb}mb"}


def _epoch_text(r: dict) -> str:
    if r["epochs"] is None:
        return ""
    done = r["epoch"] or 0
    return f"{done}/{r['epochs']}" if r["state"] != RunState.QUEUED else f"0/{r['epochs']}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
