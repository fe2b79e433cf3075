"""The Data tab: its components (layout), their events (wire), and the handlers: an uploaded zip, classes built
one by one, the sample data, a returning visitor's dataset, and what a run's features say about it."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from vit import data, jobs, runs, samples
from vit import sessions
from vit.safety import HostLimits
from vit.ui.common import FORM, MAX_CLASSES, SAMPLE_MAX, SAMPLE_PER_CLASS
from vit.ui.dataset_view import Shown, _show
from vit.ui.files import _remove_upload
from vit.ui.page import ONE_CHECK_EACH, Page, named_signature, refused
from vit.ui.runs_view import _duration, _features_summary, _seen_run


def layout() -> SimpleNamespace:
    """The Data tab's components: an upload, the sample data, classes built one by one, and the report."""
    with gr.Row():
        upload = gr.File(label="Dataset (.zip of class folders)", file_types=[".zip"], type="filepath")
        with gr.Column():
            sample_count = gr.Slider(10, SAMPLE_MAX, value=SAMPLE_PER_CLASS, step=10,
                                     label="Images per class (sample data)")
            sample_btn = gr.Button("Use the sample dataset (generated shapes)")
    with gr.Accordion("Or take a dataset from the Hugging Face Hub (imagefolder or parquet)", open=False):
        with gr.Row():
            hub_id = gr.Textbox(label="Hub dataset", placeholder="hf-dataset:user/name (optionally @revision, :config)",
                                scale=3)
            hub_token = gr.Textbox(label="Token, for a private or gated dataset (used for this download only)",
                                   type="password", placeholder="hf_...", scale=2)
            hub_btn = gr.Button("Load from the Hub", scale=1)
    with gr.Accordion("Or build it class by class: name each class and drop its images", open=False):
        class_count = gr.State(2)
        class_rows, class_names, class_files = [], [], []
        for i in range(MAX_CLASSES):
            with gr.Row(visible=i < 2) as row:
                class_names.append(gr.Textbox(label=f"Class {i + 1}", placeholder="e.g. healthy", scale=1,
                                              min_width=160))
                class_files.append(gr.File(label=f"Images of class {i + 1}", file_count="multiple",
                                           file_types=["image"], type="filepath", scale=3, min_width=240))
            class_rows.append(row)
        with gr.Row():
            add_class = gr.Button("Add a class")
            remove_class = gr.Button("Remove the last class")
            check_classes_btn = gr.Button("Check these classes", variant="primary")
    report = gr.Markdown("Upload a dataset or use the sample data to see its health report.")
    features = gr.Markdown()  # what a run's frozen features say about this data
    counts = gr.BarPlot(x="class", y="images", color="split", title="Images per class")
    grid = gr.Gallery(label="Sample images per class", columns=6, height="auto")
    return SimpleNamespace(upload=upload, sample_count=sample_count, sample_btn=sample_btn, hub_id=hub_id,
                           hub_token=hub_token, hub_btn=hub_btn, class_count=class_count,
                           class_rows=class_rows, class_names=class_names, class_files=class_files,
                           add_class=add_class, remove_class=remove_class, check_classes_btn=check_classes_btn,
                           report=report, features=features, counts=counts, grid=grid)


def wire(page: Page, tab: SimpleNamespace, shown: list) -> None:
    """The Data tab's events. `shown`: what a checked dataset fills (the report, the dataset, the Train tab's
    line about it)."""
    # dataset checks share a lane of their own, beside classifications and the runs' views, a few at a time
    lane = dict(concurrency_id="dataset_check", concurrency_limit=page.limits.concurrency)
    tab.upload.upload(check_dataset, tab.upload, shown, api_name="check_dataset", **lane).then(**keeping(page))
    tab.sample_btn.click(sample_dataset, tab.sample_count, shown, api_name="sample_dataset", **lane
                         ).then(**keeping(page))
    tab.hub_btn.click(page.bind(check_hub_dataset), [tab.hub_id, tab.hub_token], shown, api_name="check_hub_dataset",
                      **lane).then(**keeping(page))
    slots = [tab.class_count, *tab.class_rows, *tab.class_names, *tab.class_files]
    tab.add_class.click(lambda n: _class_slots(n + 1), tab.class_count, slots, api_visibility="private")
    tab.remove_class.click(lambda n: _class_slots(n - 1), tab.class_count, slots, api_visibility="private")
    slots = dict(zip(CLASS_SLOTS, [*tab.class_names, *tab.class_files]))  # by name: class_1.., images_1..
    tab.check_classes_btn.click(check_classes, inputs_kwargs=slots, outputs=shown,
                                api_name="check_classes", **lane).then(**keeping(page))


def keeping(page: Page) -> dict:
    """The event that keeps the visitor's dataset for a reload or a return visit: `.then(**keeping(page))`."""
    return dict(fn=page.bind(remember_dataset), inputs=[page.dataset, page.owner], outputs=None,
                api_visibility="private")


def remember_dataset(manager: jobs.JobManager, dataset: dict | None, owner: str | None) -> None:
    sessions.remember(manager.root, owner, dataset=dataset)


def check_dataset(path: str | None, request: gr.Request = None):
    """Validate an uploaded zip and show its health report, class counts and sample images (one check at a time
    per page)."""
    if not path or not isinstance(path, str):
        raise refused("No file received. Upload a .zip with one folder per class.")
    with ONE_CHECK_EACH.holding(getattr(request, "session_hash", None), CHECKING):
        return _check_dataset(path)


CHECKING = "Your last dataset is still being checked; wait for its report."
HUB_KEPT = 8  # Hub datasets kept downloaded for Start (the oldest removed first: load it again to train on it)


def check_hub_dataset(manager: jobs.JobManager, spec: str | None, typed_token: str | None = None,
                      request: gr.Request = None, oauth_token: gr.OAuthToken | None = None):
    """Download a Hub dataset (hf-dataset:user/name[@revision][:config]) with every cap of an upload, and show its
    health report. The token typed in, else the signed-in visitor's; on a shared app never the host's own."""
    from vit.ui.page import visitor_token
    spec = (spec or "").strip()
    if not spec:
        raise refused("Name a Hub dataset: hf-dataset:user/name (a public one needs no token).")
    if not data.is_hub_source(spec):
        spec = data.HUB_PREFIX + spec  # (user/name typed alone)
    token = visitor_token(typed_token, oauth_token) or (None if manager.single_user else False)
    with ONE_CHECK_EACH.holding(getattr(request, "session_hash", None), CHECKING):
        root = Path(tempfile.gettempdir()) / "vit-studio-hub"
        root.mkdir(parents=True, exist_ok=True)
        _forget_hub_datasets(root)
        folder = Path(tempfile.mkdtemp(prefix="d-", dir=root))
        try:
            limits = data.Limits(max_total_bytes=HostLimits.from_env().max_upload_mb * 1024 ** 2)  # as an upload
            with data.load_dataset(spec, limits=limits, token=token, hub_folder=folder / "data") as ds:
                shown = _show(ds, str(folder / "data"), spec)  # (kept: Start trains on this folder)
        except data.DataError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise refused(str(e) if not token else str(e).replace(token, "hf_***"), duration=None)
    if shown.dataset.get("problem"):
        shutil.rmtree(folder, ignore_errors=True)
    return shown


def _forget_hub_datasets(root: Path) -> None:
    made = sorted((p for p in root.glob("d-*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in made[HUB_KEPT - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _check_dataset(path: str):
    try:
        with data.load_dataset(path) as ds:
            shown = _show(ds, path, Path(path).name)
    except data.DataError as e:
        _remove_upload(path)
        raise refused(str(e), duration=None)
    if shown.dataset.get("problem"):  # cannot be trained on: nothing will use the upload again
        _remove_upload(path)
    return shown


def check_classes(request: gr.Request = None, **slots):
    """Validate classes built one by one and show the report: `slots` are CLASS_SLOTS by name, class_1 to
    class_8 (a name) and images_1 to images_8 (its uploaded images). Empty slots are ignored; a removed slot is
    emptied by the UI. Uploads that will not be used (a refused check) are removed at once."""
    names = [slots.get(slot) for slot in CLASS_SLOTS[:MAX_CLASSES]]
    files = [slots.get(slot) for slot in CLASS_SLOTS[MAX_CLASSES:]]
    uploaded = [p for paths in files if isinstance(paths, list) for p in paths if isinstance(p, str)]
    with ONE_CHECK_EACH.holding(getattr(request, "session_hash", None), CHECKING):
        try:
            shown = _check_classes(names, files)
        except gr.Error:
            for path in uploaded:
                _remove_upload(path)
            raise
    if shown.dataset.get("problem"):
        for path in uploaded:
            _remove_upload(path)
    return shown


CLASS_SLOTS = (*(f"class_{i + 1}" for i in range(MAX_CLASSES)), *(f"images_{i + 1}" for i in range(MAX_CLASSES)))
check_classes.__signature__ = named_signature(check_classes, {
    slot: "str | None" if slot.startswith("class") else "list | None" for slot in CLASS_SLOTS})


def _check_classes(names: tuple, files: tuple):
    mapping: dict[str, list[str]] = {}
    for i, (name, paths) in enumerate(zip(names, files)):
        if name is not None and not isinstance(name, str) or paths is not None and not (
                isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
            raise refused(f"Class {i + 1}: a name is text and its images a list of uploaded files.")
        if not (name or "").strip() and not paths:
            continue
        if not (name or "").strip():
            raise refused(f"Class {i + 1} has images but no name. Type a name for it.")
        mapping[name.strip()] = mapping.get(name.strip(), []) + list(paths or [])
    if not mapping:
        raise refused("Name at least two classes and drop images into each.")
    try:
        with data.load_dataset(mapping) as ds:
            return _show(ds, None, f"{len(mapping)} classes built here", classes=mapping)
    except data.DataError as e:
        raise refused(str(e), duration=None)


def sample_dataset(per_class: float = SAMPLE_PER_CLASS):
    """Generate the built-in shapes dataset (kept for training) and show its report."""
    n = int(per_class) if isinstance(per_class, (int, float)) and per_class == per_class else 0
    if not 2 <= n <= SAMPLE_MAX:
        raise refused(f"The sample data has from 2 to {SAMPLE_MAX} images per class (got {str(per_class)[:20]}).")
    folder = sample_folder(n)
    with data.load_dataset(folder) as ds:
        shown = _show(ds, str(folder), f"sample shapes ({n} per class)")
    if shown.dataset.get("path"):
        shown.dataset["sample"] = n  # (made again at Start if its folder has been removed since)
    return shown


def sample_folder(n: int) -> Path:
    """The folder of the sample shapes at n per class, made when it is not there (the same images every time)."""
    root = Path(tempfile.gettempdir()) / "vit-studio-samples"
    folder = root / f"shapes-{n}"
    if not (folder / "circle").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _forget_samples(root, keep={folder.name, f"shapes-{SAMPLE_PER_CLASS}"})
        tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root))
        samples.make_shapes_dataset(tmp / "d", n, fmt="jpg")
        try:
            os.replace(tmp / "d", folder)  # atomic: a concurrent request sees all of it or none
        except OSError:
            pass  # another request made it first
        shutil.rmtree(tmp, ignore_errors=True)
    os.utime(folder)  # (used now: the sizes used least recently are removed first)
    return folder


SAMPLES_KEPT = 3  # sample sizes kept made: the default, and the sizes asked for most recently


def _forget_samples(root: Path, keep: set[str]) -> None:
    """Remove the sample sizes used least recently, so that asking for every size cannot fill the disk (a removed
    size is made again when asked for; a run already has its own copy of its data)."""
    made = sorted((p for p in root.glob("shapes-*") if p.is_dir() and p.name not in keep),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in made[max(0, SAMPLES_KEPT - len(keep)):]:
        shutil.rmtree(old, ignore_errors=True)


def restore_session(manager: jobs.JobManager, owner: str | None):
    """What the visitor had on their last visit: the dataset (checked again, with its report) and the
    Train settings, as updates for the Data tab's outputs and the Train form (unchanged where none)."""
    record = sessions.recall(manager.root, owner)
    saved = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    form = [gr.update(value=saved[k]) if k in saved else gr.update() for k in FORM]
    ds = record.get("dataset")
    if not isinstance(ds, dict) or not ds.get("name"):
        return (*Shown._make([gr.update()] * len(Shown._fields)), *form)
    if ds.get("problem"):
        line = f"The dataset **{ds['name']}** cannot be trained on: {ds['problem']} Fix it and upload it again."
        return (*Shown(report=line, counts=gr.update(), grid=gr.update(), dataset=ds, data_line=line), *form)
    try:
        source = ds.get("classes") or ds.get("path")
        if not source or (isinstance(source, str) and not Path(source).exists()):
            raise data.DataError("gone")
        edits = ds.get("edits") if isinstance(ds.get("edits"), dict) else None
        with data.load_dataset(source, edits=edits) as loaded:
            shown = _show(loaded, ds.get("path"), ds["name"], classes=ds.get("classes"), edits=edits)
    except data.DataError:
        gone = (f"Your dataset from last time, **{ds['name']}**, is no longer on the server (uploads are kept for "
                f"{_duration(HostLimits.from_env().temp_max_age_s)}). Upload it again.")
        shown = Shown(report=gone, counts=pd.DataFrame(columns=["class", "split", "images"]), grid=[], dataset=None,
                      data_line=gone)
    return (*shown, *form)


def _class_slots(n: int):
    """Show n class slots; the hidden ones are emptied, so they never count."""
    n = max(2, min(MAX_CLASSES, int(n)))
    keep = [gr.update() if i < n else "" for i in range(MAX_CLASSES)]
    return ([n] + [gr.Row(visible=i < n) for i in range(MAX_CLASSES)] + keep
            + [gr.update() if i < n else None for i in range(MAX_CLASSES)])


def data_features(manager: jobs.JobManager, run_id: str | None, dataset: dict | None, owner: str | None) -> str:
    """For the Data tab, under the health report: what the selected run's features say, when that run was
    trained on the dataset shown there."""
    run_dir = _seen_run(manager, run_id, owner) if dataset else None
    found = runs.read_json(run_dir / runs.DIAGNOSTICS, None) if run_dir else None
    run = manager.summary(run_dir.name, owner or None) if isinstance(found, dict) else {}
    if not run or run.get("source") != dataset.get("name"):
        return ""
    name = run["name"]
    return "\n".join([f"### What the features say about this data (run {name})",
                      *_features_summary(found, set(dataset.get("edits") or {})),
                      "", "*The pairs and the images to review are in the Train tab, under that run's results.*"])
