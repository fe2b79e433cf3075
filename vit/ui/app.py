"""The app: the four tabs composed. Each tab module lays out its components (layout) and connects their events
(wire); what crosses tabs is here: the dataset a check fills, the run pickers that follow a finished run."""
from __future__ import annotations

import functools
import threading
from types import SimpleNamespace

import gradio as gr

from vit import jobs, runs, sessions
from vit.runs import RunState
from vit.safety import HostLimits, session_secret
from vit.ui import classify_tab, data_tab, results, share_tab, train_tab
from vit.ui.common import INTRO, TITLE
from vit.ui.dataset_view import Shown
from vit.ui.files import sweep_temp_every
from vit.ui.page import PRIVATE, Page, _ensure_owner, _manager_getter, outputs, refused
from vit.ui.runs_view import _model_picker
from vit.ui.data_tab import data_features
from vit.ui.train_tab import _start_choices, _teacher_choices, best_run


def build_app(manager: jobs.JobManager | None = None) -> gr.Blocks:
    """The app. Without a manager it makes one for VIT_CHECKPOINTS (default checkpoints/) on first use."""
    limits = HostLimits.from_env()
    root = manager.root if manager else runs.default_root()
    sweep_temp_every(limits.temp_max_age_s)  # served downloads go after their age even when nothing else is asked
    # Gradio's own copies of uploads and outputs are removed once they are older than the limit.
    with gr.Blocks(title=TITLE, delete_cache=(max(60, limits.temp_max_age_s // 4), limits.temp_max_age_s)) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        page = Page(app, _manager_getter(manager), limits,
                    owner=gr.BrowserState("", storage_key="vit-studio-owner",  # survives closing the tab
                                              secret=session_secret(root)),       # and a restart
                    dataset=gr.State(None),  # {"path", "name", "summary", ...} of the checked dataset
                    timer=gr.Timer(2.0))     # the runs' views poll on it
        with gr.Tab("Data"):
            data = data_tab.layout()
        with gr.Tab("Train"):
            train = train_tab.layout()
            result = results.layout()
        with gr.Tab("Classify"):
            classify = classify_tab.layout()
        with gr.Tab("Share"):
            share = share_tab.layout()
        shown = outputs(Shown, report=data.report, counts=data.counts, grid=data.grid, dataset=page.dataset,
                        data_line=train.data_line)  # what a checked dataset fills
        welcome = app.load(_ensure_owner, page.owner, page.owner, api_visibility="private")
        data_tab.wire(page, data, shown)
        train_tab.wire(page, train, shown, welcome)
        results.wire(page, result, train.selected, train.run_key, shown)
        classify_tab.wire(page, classify)
        share_tab.wire(page, share)
        _wire_across(page, data, train, classify, share)
    _quiet_about_inputs(app)
    return app


def hold_events_until(app: gr.Blocks, ready: threading.Event, timeout_s: float = 300.0) -> None:
    """Every event of the app waits for `ready` (app.py sets it once torch and timm are imported, which the page
    starts without): an event that imported them in its own thread at the same time could meet the warm-up's
    imports half done (Python raises a deadlock error in one of the two threads)."""
    for block_fn in app.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = _after(ready, block_fn.fn, timeout_s)


def _after(ready: threading.Event, fn, timeout_s: float):
    @functools.wraps(fn)  # (Gradio reads the handler's signature through it: gr.Request and the API names stay)
    def waiting(*args, **kwargs):
        ready.wait(timeout_s)
        return fn(*args, **kwargs)
    return waiting


def _quiet_about_inputs(app: gr.Blocks) -> None:
    """Gradio's messages for a malformed request (too few values, a value its component cannot read) repeat the
    values sent, in the log and to the caller: a Hub token or a visitor's id among them. Here they say which value
    and why, never what it was."""
    def validate_inputs(block_fn, inputs: list) -> None:
        if len(inputs) < len(block_fn.inputs):
            raise ValueError(f"The event {block_fn.name or ''} received {len(inputs)} of its {len(block_fn.inputs)} "
                             "values; send one for each of its inputs (the API page lists them).")

    def format_processing_error(block_fn, index: int, block, value, is_input: bool, original_error: Exception) -> str:
        return (f"The event {block_fn.name or ''} could not {'read' if is_input else 'write'} its value {index} (a "
                f"{block.get_block_name()}, given a {type(value).__name__}): {type(original_error).__name__}.")

    app.validate_inputs = validate_inputs
    app._format_processing_error = format_processing_error


def _wire_across(page: Page, data: SimpleNamespace, train: SimpleNamespace, classify: SimpleNamespace,
                 share: SimpleNamespace) -> None:
    """Events between tabs: the Data tab's view of the picked run's features; the pickers of finished runs
    (Classify, Share, and the Model to start from), which follow a run as it finishes; the best run into both."""
    for event in (train.selected.change, train.run_key.change, page.dataset.change):
        event(page.bind(data_features), [train.selected, page.dataset, page.owner], data.features, **PRIVATE)
    pickers = [share.run, classify.model_source]
    train.use_best.click(page.bind(best_in_pickers), page.owner, pickers, api_visibility="private")
    finished_seen = gr.State(None)  # finished runs the pickers know of: a new one is followed
    for which, picker in (("share", share.run), ("classify", classify.model_source)):  # kept for a reload
        picker.input(page.bind(remember_model, which), [picker, page.owner], None, **PRIVATE)
    lists = page.bind(model_lists)
    looked = dict(inputs=[*pickers, finished_seen, page.owner],
                  outputs=[*pickers, finished_seen, train.fields["model"], train.fields["teacher"]])
    page.app.load(lists, **looked, api_visibility="private")
    page.timer.tick(lists, **looked, **PRIVATE)


def model_lists(manager: jobs.JobManager, for_share: str | None, for_classify: str | None, known: list | None,
                owner: str | None):
    """One listing of the visitor's runs for the Share and Classify pickers, the Model to start from and the Teacher;
    a run finished since the last look is picked in the first two."""
    rows = manager.list(owner or None)
    finished = [r["id"] for r in rows if r["state"] == RunState.COMPLETED]
    new = [i for i in finished if known is not None and i not in known]
    follow = new[0] if new else None
    if known is None:  # the page (re)loads: the models the visitor picked last
        picked = sessions.recall(manager.root, owner).get("models") or {}
        for_share = for_share or (picked.get("share") if isinstance(picked, dict) else None)
        for_classify = for_classify or (picked.get("classify") if isinstance(picked, dict) else None)
    starts = gr.update() if finished == known else gr.Dropdown(choices=_start_choices(rows))
    teachers = gr.update() if finished == known else gr.Dropdown(choices=_teacher_choices(rows))
    shown = known is not None  # (on a page load the pickers show nothing yet: the restored picks are sent)
    return (_model_picker(rows, for_share, follow, shown), _model_picker(rows, for_classify, follow, shown), finished,
            starts, teachers)


def remember_model(manager: jobs.JobManager, which: str, value: str | None, owner: str | None) -> None:
    """The model the visitor picked in Classify or Share, for a reload (an id or an hf-hub: name; what it
    names is checked again, as the visitor's, whenever it is used)."""
    picked = sessions.recall(manager.root, owner).get("models")
    picked = dict(picked) if isinstance(picked, dict) else {}
    picked[which] = str(value)[:200] if value else None
    sessions.remember(manager.root, owner, models=picked)


def best_in_pickers(manager: jobs.JobManager, owner: str | None):
    """The visitor's best finished run, picked in Classify and Share."""
    best = best_run(manager, owner)
    if best is None:
        raise refused("No finished run with a model yet.")
    sessions.remember(manager.root, owner, models={"share": best, "classify": best})
    return gr.Dropdown(value=best), gr.Dropdown(value=best)
