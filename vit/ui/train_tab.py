"""The Train tab: its components (layout), their events (wire), and the handlers: the form read into a
TrainConfig (what will run, before Start), starting runs and quick models, the runs with their live view,
comparison and actions. The selected run's results are in results.py."""
from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from vit import data, env, jobs, runs, safety, sessions
from vit.runs import RunKind, RunState
from vit import models
from vit.models import DEFAULT_MODEL
from vit.safety import HostLimits
from vit.train import ConfigError, TrainConfig, TrainError, recipe, zero_means_off
from vit.train.config import DEFAULTS, SETTINGS, in_form
from vit.train.events import NO_VALIDATION, no_validation
from vit.train.metrics import IMBALANCED, SOURCE_WORDS
from vit.ui.common import FORM, HERE, HF_GPU, MODEL_CHOICES, NO_DATA, NO_TEACHER, RUN_COLUMNS, RUN_START, WHERE
from vit.ui.page import PRIVATE, Page, form_signature, outputs, refused, visitor_token
from vit.ui.runs_view import (_accuracy_text, _duration, _epoch_text, _live_choice, _model_label, _model_text,
                              _run_choices, _run_picker, _state_key)
from vit.ui.data_tab import restore_session, sample_folder


def layout() -> SimpleNamespace:
    """The Train tab's components above the results: notes, the form, Start, the runs and the live view."""
    if runs.storage_note():
        gr.Markdown(f"**Note:** {runs.storage_note()}")
    offline = not models.hub_reachable()
    if offline:
        gr.Markdown("**Offline:** pretrained weights cannot be downloaded from the Hugging Face Hub here, so *From "
                    "scratch* is on. Fine for the sample shapes; for real photos, fine-tuning pretrained weights is "
                    "far better (copy a Hugging Face cache here, or run online).")
    data_line = gr.Markdown(NO_DATA)
    fields = form(offline)
    place = where()
    with gr.Row():
        run_name = gr.Textbox("", label="Run name (optional)", placeholder="default: dataset · model · time",
                              max_length=80, scale=3)
    plan = gr.Markdown()
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", interactive=False, scale=2)
        quick_btn = gr.Button("Quick model (seconds)", interactive=False, scale=1)
    gr.Markdown("*Quick model*: only the head is fitted, on the frozen features of the starting weights (pretrained, "
                "or one of your runs picked as the Model). Its results also show what those features say about your "
                "data: near-duplicates, likely label errors, and whether more images would help.")
    quick_note = gr.Markdown()  # why Quick model is off, when it is
    start_msg = gr.Markdown()
    return SimpleNamespace(data_line=data_line, fields=fields, where=place, run_name=run_name, plan=plan,
                           start_btn=start_btn,
                           quick_btn=quick_btn, quick_note=quick_note, start_msg=start_msg, offline=offline,
                           **vars(_runs_view()))


def form(offline: bool) -> dict:
    """The settings, keyed by FORM's names: the model and From scratch, then each TrainConfig setting that has a
    place in the form (vit.train.config), made from its Setting. An empty "auto" field is chosen for the data (the
    "Will train" line says how); typed, it wins. The defaults shown are TrainConfig's."""
    with gr.Row():
        model = gr.Dropdown(MODEL_CHOICES, value=DEFAULT_MODEL, allow_custom_value=True,
                            label="Model (or type any timm name: a ViT, or a CNN to teach one)")
        scratch = gr.Checkbox(offline, label="From scratch (no download; settings chosen for your data)",
                              info="Pretrained weights come from the Hugging Face Hub. Offline, train from scratch: "
                                   "good for simple images (shapes, digits, scans), far weaker on photos.")
    fields = dict(model=model, scratch=scratch)
    with gr.Row():
        fields.update({name: _setting_field(name) for name in in_form("main")})
    with gr.Row():
        fields["teacher"] = gr.Dropdown(_teacher_choices([]), value=NO_TEACHER, label="Teacher (distillation)",
                                        info="One of your finished runs on the same classes, e.g. a CNN: the model "
                                             "learns from its answers as well as from the labels (DeiT). Pick a "
                                             "larger teacher to get a smaller model that is nearly as good.")
    with gr.Accordion("Advanced settings", open=False):
        advanced = in_form("advanced")
        for row in range(0, len(advanced), 4):
            with gr.Row():
                fields.update({name: _setting_field(name) for name in advanced[row:row + 4]})
    return fields


def where() -> dict:
    """Where the run trains, keyed by WHERE's names: this machine, or a Hugging Face GPU (a job, billed per minute to
    the visitor's account), on which GPU, with which token (on a Space, signing in gives it)."""
    from vit.jobs.hf import FALLBACK
    with gr.Row():
        train_on = gr.Radio([HERE, HF_GPU], value=HERE, label="Train on",
                            info="A Hugging Face GPU runs the training as a job, billed per minute to your Hugging "
                                 "Face account; the data goes to a private dataset repo of yours, and the model "
                                 "comes back here.")
        flavor = gr.Dropdown(_flavor_choices(FALLBACK), value="t4-small", label="GPU (price per hour)",
                             allow_custom_value=True,  # (the Hub's list may hold others: connect() checks)
                             visible=False)
        hf_token = gr.Textbox(label="Hugging Face token that can write repos and start jobs (for this run only, "
                                    "never stored)", type="password", placeholder="hf_...", visible=False)
        if safety.on_spaces() and env.read("OAUTH_CLIENT_ID"):  # hf_oauth: true, with the jobs scope
            gr.LoginButton("Sign in with Hugging Face")
    return dict(zip(WHERE, (train_on, flavor, hf_token)))


def show_where(train_on: str | None):
    """The GPU picker (the Hub's current list and prices, when it answers) and the token, shown for a Hugging Face
    GPU."""
    remote = train_on == HF_GPU
    listed = _flavors()[0] if remote else []
    return (gr.update(visible=remote, **({"choices": _flavor_choices(listed)} if listed else {})),
            gr.update(visible=remote))


def _flavors():
    """The GPUs jobs run on and where their prices come from (vit.jobs.hf.flavors), read from the Hub at most every
    10 minutes."""
    from huggingface_hub import constants
    from vit.jobs.hf import flavors
    now, hub = time.monotonic(), constants.ENDPOINT
    if _FLAVORS.get("hub") != hub or now - _FLAVORS.get("at", -1e9) > 600:
        _FLAVORS.update(hub=hub, at=now, listed=flavors())
    return _FLAVORS["listed"]


_FLAVORS: dict = {}


def _flavor_choices(listed) -> list[tuple[str, str]]:
    return [(f.label, f.name) for f in listed]


def _setting_field(name: str):
    """The form's field for a TrainConfig setting: an "auto" textbox for a number the recipe chooses, auto/on/off
    for such a bool, a choice of its values, a checkbox, or a number within its range."""
    s, default = SETTINGS[name], DEFAULTS[name]
    label = s.label or s.title
    if s.auto and s.kind:
        return _auto_field(label)
    if s.auto and isinstance(default, bool):
        return gr.Radio(["auto", "on", "off"], value="auto", label=label, info=_sentence(s.help))
    if s.choices:
        return gr.Radio(list(s.choices), value=default, label=label, info=_sentence(s.help))
    if isinstance(default, bool):
        return gr.Checkbox(default, label=label)
    return gr.Number(default or 0, label=label, minimum=0 if s.off_at_zero else s.lo, maximum=s.hi,
                     precision=0 if s.kind == "int" else None)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "." if text else ""


def _runs_view() -> SimpleNamespace:
    """The visitor's runs, the picked one's actions and live view, and the comparison."""
    # the name stays in view on a phone while the other columns scroll; long cells are cut
    runs_table = gr.Dataframe(headers=RUN_COLUMNS, label="Runs (newest first)", interactive=False, wrap=False,
                              max_chars=80, pinned_columns=1, elem_id="runs-table")
    with gr.Row():
        selected = gr.Dropdown([], label="Run", allow_custom_value=True, scale=3)
        cancel_btn = gr.Button("Cancel", scale=1)
        resume_btn = gr.Button("Resume", scale=1)
        distil_btn = gr.Button("Distil into a smaller model", scale=1)
        delete_btn = gr.Button("Delete", variant="stop", scale=1)
    run_msg = gr.Markdown()
    progress = gr.Markdown()
    with gr.Row() as curves:
        loss_plot = gr.LinePlot(x="epoch", y="value", color="curve", title="Loss", min_width=280)
        acc_plot = gr.LinePlot(x="epoch", y="value", color="curve", title="Accuracy", y_lim=[0, 1], min_width=280)
    with gr.Accordion("Compare finished runs", open=False):
        compare_table = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, wrap=True,
                                     label="Finished runs by dataset, best first (accuracy on images that chose "
                                           "nothing; click a column to sort)")
        use_best = gr.Button("Use the best run in Classify and Share")
    run_key = gr.State("")  # "<run id>:<state>" of the selected run: changes when its state does
    return SimpleNamespace(runs_table=runs_table, selected=selected, cancel_btn=cancel_btn, resume_btn=resume_btn,
                           distil_btn=distil_btn, delete_btn=delete_btn, run_msg=run_msg, progress=progress,
                           curves=curves, loss_plot=loss_plot, acc_plot=acc_plot, compare_table=compare_table,
                           use_best=use_best, run_key=run_key)


def wire(page: Page, tab: SimpleNamespace, shown: list, welcome) -> None:
    """The Train tab's events. `shown`: what a returning visitor's dataset fills (the Data tab); `welcome`: the
    page's load event, which made the visitor's token."""
    settings = [tab.fields[name] for name in FORM]
    gate = [page.dataset, tab.fields["model"], tab.fields["scratch"]]
    for event in (page.dataset.change, tab.fields["model"].change, tab.fields["scratch"].change):
        event(functools.partial(buttons, offline=tab.offline), gate, [tab.start_btn, tab.quick_btn, tab.quick_note],
              **PRIVATE)
    # a run to start from has trained weights: From scratch goes off with it (the form and the plan agree)
    tab.fields["model"].input(lambda m: gr.update(value=False) if str(m or "").startswith(RUN_START) else gr.update(),
                              tab.fields["model"], tab.fields["scratch"], **PRIVATE)
    page.timer.tick(page.bind(start_message_now), [tab.start_msg, page.owner], tab.start_msg, **PRIVATE)
    # the form goes by name (inputs_kwargs): the API's parameters are the settings' names, and no order can slip
    asked = dict(inputs=[page.dataset, page.owner, tab.run_name], inputs_kwargs={**tab.fields, **tab.where},
                 outputs=[tab.start_msg, tab.selected])
    tab.where["train_on"].change(show_where, tab.where["train_on"], [tab.where["flavor"], tab.where["hf_token"]],
                                 **PRIVATE)
    tab.start_btn.click(page.bind(start_from_form, False), **asked, api_name="start_training")
    tab.quick_btn.click(page.bind(start_from_form, True), **asked, api_name="quick_model")
    planned = dict(fn=page.bind(run_plan), inputs=[page.dataset, page.owner],
                   inputs_kwargs={**tab.fields, "train_on": tab.where["train_on"], "flavor": tab.where["flavor"]},
                   outputs=tab.plan)
    # what will actually run (and where, at what cost), before Start, as the dataset or a setting changes
    for field in [page.dataset, *settings, tab.where["train_on"], tab.where["flavor"]]:
        field.change(**planned, **PRIVATE)
    keep = dict(fn=page.bind(remember_settings), inputs=[page.owner], inputs_kwargs=tab.fields, outputs=None)
    for field in settings:  # remembered for the next visit
        field.input(**keep, **PRIVATE)
        if isinstance(field, gr.Textbox):  # a pasted or autofilled value sends no input event: leaving does
            field.blur(**keep, **PRIVATE)
    listing = [tab.runs_table, tab.selected]
    refresh = page.bind(list_runs)
    welcome.then(page.bind(restore_session), page.owner, [*shown, *settings], api_visibility="private").then(
        **planned, api_visibility="private").then(
        refresh, [tab.selected, page.owner], listing, api_visibility="private")
    _wire_runs(page, tab, refresh, welcome)


def _wire_runs(page: Page, tab: SimpleNamespace, refresh, welcome) -> None:
    """The runs table and picker (polled), the live view, the actions and the comparison."""
    listing, picked = [tab.runs_table, tab.selected], [tab.selected, page.owner]
    view = outputs(Progress, summary=tab.progress, loss=tab.loss_plot, accuracy=tab.acc_plot)
    page.timer.tick(refresh, picked, listing, api_name="list_runs", show_progress="hidden", concurrency_limit=None)
    live = outputs(LiveView, summary=tab.progress, loss=tab.loss_plot, accuracy=tab.acc_plot, key=tab.run_key)
    page.timer.tick(page.bind(live_view), picked, live, **PRIVATE)
    tab.selected.change(page.bind(show_run), picked, view, api_name="show_run", show_progress="hidden")
    for event in (tab.selected.change, tab.run_key.change):
        event(page.bind(curves_shown), picked, tab.curves, **PRIVATE)
    comparison = page.bind(compare_runs)
    tab.run_key.change(comparison, page.owner, tab.compare_table, **PRIVATE)
    welcome.then(comparison, page.owner, tab.compare_table, api_name="compare_runs")
    for btn, action in ((tab.cancel_btn, "cancel"), (tab.delete_btn, "delete")):
        # Delete asks first in the page; a declined confirmation sends no run, and nothing is deleted
        ask = CONFIRM_DELETE if action == "delete" else None
        btn.click(page.bind(run_action, action), picked, tab.run_msg, api_name=f"{action}_run", js=ask).then(
            refresh, picked, listing, api_visibility="private")
    tab.resume_btn.click(page.bind(resume_run), [*picked, tab.where["hf_token"]], tab.run_msg,
                         api_name="resume_run").then(refresh, picked, listing, api_visibility="private")
    tab.distil_btn.click(page.bind(distil_run), picked, [tab.run_msg, tab.selected], api_name="distil_run").then(
        refresh, picked, listing, api_visibility="private")
    page.app.load(refresh, picked, listing, api_visibility="private")


def distil_run(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """Queue a smaller model (vit.train.recipe.student) distilled from the visitor's finished run, on the run's own
    copy of its data with the same images held out; returns a message and the run picker on the new run."""
    if not run_id:
        raise refused("Pick a finished run first: it will be the teacher.")
    try:
        teacher = _finished_run(manager, f"{RUN_START}{run_id}", owner, "distil from")
        summary = manager.summary(run_id, owner or None)
        if summary["state"] != RunState.COMPLETED or summary.get("kind") == RunKind.QUICK:
            raise jobs.JobError("Only a finished, fully trained run can teach (a quick model only fitted a head).")
        if not (teacher / runs.DATA_DIR).is_dir():
            raise jobs.JobError(f"The run {run_id} was not trained in this app, so its data is not here. Distil it "
                                f"on the command line: python -m vit train --data DATA --teacher checkpoints/{run_id}")
        record = runs.read_config(teacher).get(runs.CONFIG_KEY, {})
        chosen = recipe.student(str(teacher), record, models.hub_reachable())
        with data.load_dataset(teacher / runs.DATA_DIR, val_fraction=chosen.config.val_fraction,
                               seed=chosen.config.seed) as ds:
            facts = recipe.DataFacts.of(ds)
            config = recipe.choose(chosen.config, facts, given=chosen.given)
            check_model_size(config, facts.to_dict(), HostLimits.from_env().max_model_params_m)
            new = manager.submit(ds, config, owner=owner or None, source_name=summary.get("source"),
                                 name=f"{summary['name']} (distilled)"[:80])
    except (jobs.JobError, data.DataError, TrainError, ConfigError) as e:
        raise refused(str(e), duration=None)
    rows = manager.list(owner or None)
    return (f"Run **{manager.summary(new, owner or None)['name']}** ({new}) is queued: a smaller model, "
            f"{chosen.why}, learning from the run {summary['name']}.", _run_picker(rows, new))


def buttons(dataset: dict | None, model: str | None, scratch: bool, offline: bool = False):
    """Start and Quick model, on or off, and why Quick model is off: it needs trained weights (one of the
    visitor's runs, or pretrained weights that can be downloaded or are cached here)."""
    ready = bool(dataset) and not dataset.get("problem")
    why = quick_unavailable(model, scratch, offline)
    note = f"*Quick model is off: {why}*" if why and ready else ""
    return gr.Button(interactive=ready), gr.Button(interactive=ready and not why), note


def quick_unavailable(model: str | None, scratch: bool, offline: bool) -> str:
    """Why a quick model cannot start with this Model and From scratch setting ("" when it can)."""
    model = str(model or "").strip()
    if model.startswith(RUN_START):
        return ""
    if scratch:
        return ("it fits a head on the features of trained weights, and random weights (From scratch) have none "
                "worth fitting. Pick one of your runs as the Model, or untick From scratch.")
    if offline and not models.weights_cached(model or DEFAULT_MODEL):
        return ("the pretrained weights cannot be downloaded here (offline) and are not in the local Hugging Face "
                "cache. Pick one of your finished runs as the Model: its features work offline.")
    return ""


def start_message_now(manager: jobs.JobManager, message: str | None, owner: str | None):
    """The start message, cleared once its run has ended (completed, failed, cancelled) or is deleted: the run's
    own view says what became of it."""
    found = re.search(r"\(([\w.-]+)\) is (queued|running)", message or "")
    if not found:
        return gr.update()
    try:
        state = manager.progress(found.group(1), owner or None)["state"]
    except jobs.JobError:
        return ""
    return gr.update() if state in runs.ACTIVE_STATES else ""


def start_from_form(manager: jobs.JobManager, quick: bool, dataset: dict | None, owner: str | None,
                    run_name: str | None = None, train_on: str | None = None, flavor: str | None = None,
                    hf_token: str | None = None, oauth_token: gr.OAuthToken | None = None, **form):
    """start_training with the Train form's fields by name (FORM's: the API's parameters of /start_training and
    /quick_model); a field left out is empty ("auto", or the setting's default). `train_on` a Hugging Face GPU:
    on `flavor`, with the token typed in, else the signed-in visitor's (neither is kept)."""
    form = _filled(form)
    remote = _remote(train_on, flavor, hf_token, oauth_token)
    return start_training(manager, dataset, form.pop("model"), owner=owner, run_name=run_name, quick=quick,
                          remote=remote, **form)


def _remote(train_on: str | None, flavor: str | None, typed: str | None, oauth_token) -> "jobs.Remote | None":
    """Where to train, from the Train tab: None here; a Hugging Face GPU with the visitor's token."""
    if train_on in (None, "", HERE):
        return None
    if train_on != HF_GPU:
        raise refused(f"Train on {HERE!r} or {HF_GPU!r}, not {str(train_on)[:40]!r}.")
    token = visitor_token(typed, oauth_token) or ""
    return jobs.Remote(str(flavor or "t4-small"), token)


def _filled(form: dict) -> dict:
    """The Train form's fields as sent, with those left out (or None) empty: "auto", or From scratch off."""
    return {**dict.fromkeys(FORM), "scratch": False, **{k: v for k, v in form.items() if v is not None}}


start_from_form.__signature__ = form_signature(start_from_form)


def remember_settings(manager: jobs.JobManager, owner: str | None, **form) -> None:
    """The Train form's values, for the visitor's next visit."""
    sessions.remember(manager.root, owner, settings={k: v for k, v in form.items() if k in FORM})


def live_view(manager: jobs.JobManager, run_id: str | None, owner: str | None) -> LiveView:
    """show_run, and a key that changes when the run's state does (results are drawn once per state)."""
    return LiveView(*show_run(manager, run_id, owner), key=_state_key(manager, run_id))


def start_training(manager: jobs.JobManager, dataset: dict | None, model_name: str, scratch: bool,
                   epochs: float, batch_size: float, lr: float, owner: str | None, run_name: str | None = None,
                   quick: bool = False, remote: "jobs.Remote | None" = None, **advanced):
    """Queue a run on the checked dataset (`quick`: the quick model; `remote`: on a Hugging Face GPU); returns a
    message and the run picker (on the new run, unless the view is on a run that is training: it stays there)."""
    if not dataset:
        raise refused(NO_DATA.replace("**", ""))  # a toast shows text, not markdown
    if dataset.get("problem"):
        raise refused(f"The dataset {dataset['name']} cannot be trained on: {dataset['problem']} Fix it and upload "
                       "it again in the Data tab.", duration=None)
    config = planned_config(model_name, scratch, epochs, batch_size, lr, _facts(dataset), quick=quick, **advanced)
    why = quick_unavailable(model_name, scratch, not models.hub_reachable()) if quick else ""
    if why:  # refused before a run is made: no failed run is left behind
        raise refused(f"Quick model is off: {why}", duration=None)
    try:
        if config.weights:  # "run:<id>": the weights of one of the visitor's own runs
            run_dir = _finished_run(manager, config.weights, owner, "start from")
            config.model = runs.read_config(run_dir).get(runs.CONFIG_KEY, {}).get("model", config.model)
            config.weights = str(run_dir)
        if config.teacher:  # "run:<id>" too
            config.teacher = str(_finished_run(manager, config.teacher, owner, "distil from"))
            _check_teacher_classes(Path(config.teacher), dataset)
        check_model_size(config, _facts(dataset), HostLimits.from_env().max_model_params_m)
        if isinstance(dataset.get("sample"), int) and not Path(dataset["path"]).is_dir():
            sample_folder(dataset["sample"])  # (removed to make room for other sizes: the same images again)
        if dataset.get("classes") or dataset.get("edits"):  # built class by class, or reviewed, in the app
            source = dataset.get("classes") or dataset["path"]
            with data.load_dataset(source, val_fraction=config.val_fraction, seed=config.seed,
                                   edits=dataset.get("edits")) as ds:
                run_id = manager.submit(ds, config, owner=owner or None, source_name=dataset["name"], name=run_name,
                                        remote=remote)
        else:
            run_id = manager.submit(dataset["path"], config, owner=owner or None, source_name=dataset["name"],
                                    name=run_name, remote=remote)
    except (jobs.JobError, data.DataError) as e:
        raise refused(str(e), duration=None)
    state = manager.progress(run_id, owner)
    rows = manager.list(owner or None)
    training = next((r["id"] for r in rows if r["state"] == RunState.RUNNING and r["id"] != run_id), None)
    return (f"Run **{state['name']}** ({run_id}) is {state['state']}: {state['message']}",
            _run_picker(rows, _live_choice(rows, training, new=run_id)))


def _finished_run(manager: jobs.JobManager, choice: str, owner: str | None, action: str) -> Path:
    """The directory of the visitor's finished run a "run:<id>" choice names (JobError if it is not theirs, or has
    no model yet)."""
    run_dir = manager.own_run(choice[len(RUN_START):], owner or None, action)
    if not (run_dir / runs.WEIGHTS).is_file():
        raise jobs.JobError(f"The run {run_dir.name} has no saved model yet: wait for it to finish.")
    return run_dir


def _check_teacher_classes(teacher: Path, dataset: dict) -> None:
    """JobError naming the difference when the teacher run's classes are not the dataset's (checked again by the
    run itself)."""
    from vit.train.teacher import class_order  # (torch: only once a teacher is picked)
    labels = runs.read_config(teacher).get("label_names")
    if isinstance(labels, list) and isinstance(dataset.get("labels"), list):
        try:
            class_order(labels, dataset["labels"])
        except TrainError as e:
            raise jobs.JobError(str(e)) from None


def check_model_size(config: TrainConfig, facts: dict | None, max_params_m: float) -> int:
    """The parameters the run's model will have, read before it is queued (the architecture on the meta device,
    an hf-hub model's safetensors header): JobError over the web app's cap, so that no child process ever starts
    to download or build it. The command line has no cap: a person on their own machine trains what they like."""
    spec = models.ModelSpec(config.model, pretrained=config.pretrained, weights=config.weights,
                            img_size=config.img_size, patch_size=config.patch_size, model_args=config.model_args)
    classes = (recipe.DataFacts.from_dict(facts).classes if facts else 0) or 2
    try:
        n = models.parameters_planned(spec, classes)
    except models.ModelError as e:
        raise jobs.JobError(str(e)) from None
    if max_params_m and n > max_params_m * 1e6:
        raise jobs.JobError(f"{config.model[:100]} has {n / 1e6:,.0f}M parameters, over this app's limit of "
                            f"{max_params_m:g}M (VIT_MAX_MODEL_PARAMS_M; it keeps memory bounded for every visitor). "
                            "Pick a smaller model, or train it with `python -m vit train` on your own machine.")
    return n


def planned_config(model_name: str, scratch: bool, epochs=None, batch_size=None, lr=None, facts: dict | None = None,
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
        if given.get("teacher") in (NO_TEACHER, ""):
            given.pop("teacher")
        elif given.get("teacher") is not None and not str(given["teacher"]).startswith(RUN_START):
            raise ConfigError("Pick the teacher among your finished runs (the app takes no other teacher; on the "
                              "command line, --teacher takes a folder or hf-hub:user/repo).")
        config = TrainConfig(model=name, pretrained=not scratch, weights=start, quick=bool(quick), **given).check()
        config = recipe.choose(config, recipe.DataFacts.from_dict(facts), given=given)
    except (models.ModelError, ConfigError) as e:
        raise refused(str(e), duration=None)
    return config


def describe_config(config: TrainConfig, classes: int = 2, teacher: str = "") -> str:
    """What will run: the model as built (built on the meta device: width, depth, patch, parameters) and what its
    weights are, the image size and the schedule in a line, the teacher (`teacher`: its name and accuracy), then each
    choice the recipe made for the data (an empty field in the form), and why."""
    entry = models.catalog_entry(config.model)
    if config.weights:
        model = f"the model of your run {Path(config.weights).name.removeprefix(RUN_START)}"
    else:
        spec = models.ModelSpec(config.model, pretrained=config.pretrained, img_size=config.img_size,
                                patch_size=config.patch_size, model_args=config.model_args)
        try:
            shape = models.built_text(models.planned(spec, classes))
        except Exception:  # (a model timm cannot build here: the run says why when it starts)
            shape = f"{config.model}, {'pretrained' if config.pretrained else 'from scratch'}"
        model = f"{entry.title}: {shape}" if entry and config.pretrained else shape
    size = f"{config.img_size} px images" if config.img_size else "the model's own image size"
    grow = ", growing from smaller images" if config.progressive else ""
    epochs = f"{config.epochs} epoch{'s' * (config.epochs != 1)}"
    line = f"{model}; {size}{grow}; {epochs}, batch {config.batch_size}, lr {config.lr:g}."
    if config.quick:
        line = (f"a quick model from {model}: its head fitted on the frozen features of your images (seconds; "
                "the other settings do not apply).")
    elif config.lp_ft:
        line += " LP-FT: the head is first fitted on the frozen features, then the whole model fine-tuned from it."
    if config.teacher and not config.quick:
        from vit.train.teacher import distilling
        line += f" Teacher: {teacher or config.teacher}; {distilling(config)}."
    if not config.recipe:
        return line
    return line + "\n\nChosen for your data (fill in a field to set it yourself):\n" + "".join(
        f"\n- {note}" for note in config.recipe)


def run_plan(manager: jobs.JobManager | None, dataset: dict | None, owner: str | None = None,
             train_on: str | None = None, flavor: str | None = None, **form) -> str:
    """The 'will run' line under the settings, updated as they or the dataset change (an error says what
    to fix). `form`: the Train form's fields by name; the teacher, one of the `owner`'s runs, is named with its
    accuracy (without a manager: by its id). On a Hugging Face GPU (`train_on`), the time and cost on `flavor`."""
    form = _filled(form)
    model_name, scratch = form.pop("model"), form.pop("scratch")
    teacher = ""
    try:
        config = planned_config(model_name, scratch, facts=_facts(dataset), **form)
        if config.teacher and manager is not None:
            teacher = f"your run {_model_label(manager.summary(config.teacher[len(RUN_START):], owner or None))}"
            _check_teacher_classes(_finished_run(manager, config.teacher, owner, "distil from"), dataset or {})
    except gr.Error as e:
        return f"**Cannot start:** {e.message}"
    except jobs.JobError as e:
        return f"**Cannot start:** {e}"
    if not config.weights and not config.model.startswith("hf-hub:"):  # (an hf-hub size is read at Start only)
        try:
            check_model_size(config, _facts(dataset), HostLimits.from_env().max_model_params_m)
        except jobs.JobError as e:
            return f"**Cannot start here:** {e}"
    facts = recipe.DataFacts.from_dict(_facts(dataset))
    plan = f"**Will train:** {describe_config(config, facts.classes if facts else 2, teacher)}"
    return plan + (f"\n\n{remote_plan(config, facts, flavor)}" if train_on == HF_GPU else "")


def remote_plan(config: TrainConfig, facts, flavor: str | None) -> str:
    """What training on a Hugging Face GPU will take and cost (vit.jobs.remote.estimate), and what goes where."""
    from vit.jobs import remote
    why = remote.refusal(config)
    if why:
        return f"**Cannot train on Hugging Face:** {why}"
    listed, source = _flavors()
    chosen = next((f for f in listed if f.name == flavor), None)
    if chosen is None:
        return f"**Cannot train on Hugging Face:** pick a GPU ({', '.join(f.name for f in listed)})."
    if facts is None:
        return "**On Hugging Face:** the time and cost are estimated once a dataset is checked."
    val = round(facts.train_images * config.val_fraction / max(1e-9, 1 - config.val_fraction))
    try:
        guess = remote.estimate(config, facts.train_images, val, facts.classes, chosen)
    except Exception as e:  # (a model timm cannot build: Start says why)
        return f"**Cannot train on Hugging Face:** the model cannot be built ({type(e).__name__})."
    return (f"**On Hugging Face:** {guess.text(chosen)} Prices: {source}. Billed to your Hugging Face account by the "
            "minute the job runs. Your images go to a private dataset repo of yours, the job pushes a checkpoint "
            "each epoch to a private model repo, and the model comes back here when it ends.")


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
    table = pd.DataFrame([[r["name"], r["state"], _model_text(r), _epoch_text(r), _accuracy_text(r), r["message"],
                           r["id"]] for r in rows], columns=RUN_COLUMNS)
    if selected in {r["id"] for r in rows}:
        return table, gr.update(choices=_run_choices(rows))
    return table, _run_picker(rows, _live_choice(rows, selected))


class Progress(NamedTuple):
    """What show_run fills: the summary line (with the progress bar), the loss curves, the accuracy curves."""
    summary: Any
    loss: Any
    accuracy: Any


LiveView = NamedTuple("LiveView", [*Progress.__annotations__.items(), ("key", Any)])  # Progress and the state key


def show_run(manager: jobs.JobManager, run_id: str | None, owner: str | None) -> Progress:
    """Progress of one run: a summary line and its loss and accuracy curves."""
    empty = pd.DataFrame(columns=["epoch", "value", "curve"])
    if not run_id:
        return Progress("Start a run or pick one to see its progress.", empty, empty)
    try:
        p = manager.progress(run_id, owner or None)
    except jobs.JobError as e:
        return Progress(str(e), empty, empty)
    lines = [f"**{p['id']}**: {p['state']}. {p['message']}"]
    if str(p.get("device") or "").startswith("hf:"):
        job = f": [its job]({p['job_url']})" if p.get("job_url") else ""
        lines.append(f"On a Hugging Face GPU ({p['device'][3:]}), billed to your account{job}.")
    if p["state"] == RunState.COMPLETED:
        lines.append(headline(p))
    if p["state"] == RunState.RUNNING and p["steps_per_epoch"]:
        epochs, steps = p["epochs"] or 1, p["steps_per_epoch"]
        done = ((p["epoch"] or 0) * steps + (p["step"] or 0)) / (epochs * steps)
        lines.append(f"<progress value='{done:.3f}' max='1' style='width:100%'></progress> {done:.0%}")
        lines.append(f"Epoch {min((p['epoch'] or 0) + 1, epochs)}/{epochs}, step {p['step'] or 0}/{steps}"
                     + (f", about {_duration(p['eta_s'])} left" if p.get("eta_s") else ""))
    if p["history"] and p.get("kind") == RunKind.QUICK:
        last = p["history"][-1]
        lines.append(f"Quick model: the head alone, fitted in {last['epoch_time']:.1f} s: train accuracy "
                     f"{last['train_acc']:.1%}, validation accuracy {last['val_acc']:.1%}.")
    elif p["history"]:
        last = p["history"][-1]
        val = NO_VALIDATION if no_validation(last) else f"val acc {last['val_acc']:.1%}"
        lines.append(f"Last epoch: train loss {last['train_loss']:.3f}, {val}, "
                     f"lr {last['lr']:.2e}, {last['images_per_s']:.0f} images/s")
    if p["cancel_requested"] and p["state"] == RunState.RUNNING:
        lines.append("Cancel requested: it stops after the current step.")
    if p["state"] in (RunState.FAILED, RunState.INTERRUPTED) and not p["message"]:
        lines.append(f"```\n{manager.log_tail(run_id)}\n```")
    if p.get("expires_at"):
        lines.append(expiry_line(p["expires_at"], manager.keep_s))
    losses, accs = [], []
    for row in p["history"]:
        losses += [(row["epoch"], row["train_loss"], "train"), (row["epoch"], row["val_loss"], "validation")]
        accs += [(row["epoch"], row["train_acc"], "train"), (row["epoch"], row["val_acc"], "validation")]
    return Progress(summary="\n\n".join(lines), loss=pd.DataFrame(losses, columns=["epoch", "value", "curve"]),
                    accuracy=pd.DataFrame(accs, columns=["epoch", "value", "curve"]))


def expiry_line(expires_at: float, keep_s: float | None) -> str:
    """When a shared app removes a run that has ended, and how to keep its model."""
    days = f"{keep_s / 86400:g} day{'' if keep_s == 86400 else 's'}" if keep_s else "a while"
    return (f"*This shared app removes runs {days} after they end: this one on "
            f"{time.strftime('%d %b %Y, %H:%M UTC', time.gmtime(expires_at))}. To keep the model, push it to the Hub "
            "or download its zip (Share tab).*")


def headline(r: dict) -> str:
    """A finished run's accuracy: the estimate on images that chose nothing, where they come from, and the best of
    N epochs on validation labelled as chosen on those images."""
    e, chosen = r.get("estimate") or {}, r.get("selection")
    if e.get("value") is None:
        return "No accuracy estimate: the dataset has no validation or test images to measure on."
    text = (f"### Accuracy {e['value']:.1%} (95% interval {e['low']:.1%}-{e['high']:.1%}) on {e['images']} "
            f"{SOURCE_WORDS.get(e['from'], 'images')}\nMeasured on {e.get('says', '')}: expect about this on new "
            "images like yours.")
    if chosen:
        text += (f" Best of {chosen['epochs']} epochs on validation: {chosen['val_acc']:.1%} (epoch "
                 f"{chosen['epoch']}), chosen on those {chosen['images']} images, so optimistic.")
    if e.get("balanced") is not None:
        text += f"\n\nBalanced accuracy {e['balanced']:.1%}, macro F1 {e['macro_f1']:.3f} on the same images."
        if (r.get("imbalance") or 0) >= IMBALANCED:
            text += (f" **The classes are imbalanced** (the largest has {r['imbalance']:.1f}x the training images of "
                     "the smallest): accuracy favours the large classes, so read the balanced accuracy and each "
                     "class's recall.")
    return text + trust_lines(r.get("calibration"), r.get("ood"))


def trust_lines(calibration: dict | None, ood: dict | None) -> str:
    """How far the probabilities can be trusted: the calibration, and the 'none of these' check."""
    text = ""
    if calibration and calibration.get("ece_after") is not None:
        text += (f"\n\nProbabilities calibrated (temperature {calibration['temperature']:.2f}, fitted on "
                 f"{calibration['images']} held-out images): calibration error {calibration['ece_before']:.3f} "
                 f"before, {calibration['ece_after']:.3f} after, measured out of fold.")
    elif calibration:
        text += f"\n\nProbabilities {calibration.get('says', 'not calibrated')}."
    if ood and ood.get("threshold") is not None:
        text += (f" 'Not sure' is said of images unlike the training images ({ood['says']}).")
    elif ood:
        text += f" {str(ood.get('says', '')).capitalize()}."
    return text


def curves_shown(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """The loss and accuracy curves are hidden for a quick model: one fit, nothing to draw."""
    try:
        quick = bool(run_id) and manager.summary(run_id, owner or None).get("kind") == RunKind.QUICK
    except jobs.JobError:
        quick = False
    return gr.Row(visible=not quick)


def _teacher_choices(rows: list[dict]) -> list[tuple[str, str]]:
    """The Teacher picker: none, then the visitor's finished runs."""
    return [("none", NO_TEACHER)] + [(_model_label(r), f"{RUN_START}{r['id']}") for r in _finished_rows(rows)]


def _start_choices(rows: list[dict]) -> list[tuple[str, str]]:
    """The Model picker: the catalog, then the visitor's finished runs to start from."""
    return MODEL_CHOICES + [(f"Start from your run: {_model_label(r)}", f"{RUN_START}{r['id']}")
                            for r in _finished_rows(rows)]


def _finished_rows(rows: list[dict]) -> list[dict]:
    """The runs of a listing that have finished with a model: the ones to start from, teach, compare."""
    return [r for r in rows if r["has_model"] and r["state"] == RunState.COMPLETED]


CONFIRM_DELETE = ("(run, who) => (run && confirm('Delete this run with its model and results? This cannot be "
                  "undone.')) ? [run, who] : [null, who]")


COMPARE_COLUMNS = ["best", "dataset", "run", "model", "accuracy", "95% interval", "measured on",
                   "best val (chosen on it)", "epochs", "batch", "lr", "time", "id"]


def compare_runs(manager: jobs.JobManager, owner: str | None) -> pd.DataFrame:
    """The visitor's finished runs side by side, grouped by dataset (its content hash: the same images and labels,
    whatever they were called; else its name) and ranked within it by the accuracy
    estimate (images that chose nothing; one star per dataset): model as built, settings, the best validation
    figure (chosen on its images, so labelled), training time. A run made before estimates existed comes last
    in its dataset, unranked."""
    rows = []
    for r in _finished(manager, owner):
        config, chosen = r["settings"], r.get("selection")
        took = (r["finished_at"] or 0) - (r["created_at"] or 0)
        e = r.get("estimate") or {}
        measured = e.get("value") is not None
        data = r.get("data_sha256")  # the same images and labels: the same dataset, whatever its name
        order = (data or r["source"] or "", -e["value"] if measured else 1)  # by dataset, then the estimate
        shown = f"{r['source'] or ''} · {data[:8]}" if data else r["source"] or ""
        rows.append([order, "", shown, r["name"], _model_text(r), f"{e['value']:.1%}" if measured else "",
                     f"{e['low']:.1%}-{e['high']:.1%}" if measured else "",
                     f"{e['images']} {SOURCE_WORDS.get(e['from'], '')}" if measured else "not measured",
                     f"{chosen['val_acc']:.1%} (epoch {chosen['epoch']} of {chosen['epochs']})" if chosen else "",
                     r["epoch"] or "", config.get("batch_size", ""), f"{config['lr']:g}" if config.get("lr") else "",
                     _duration(took) if took > 0 else "", r["id"]])
    rows.sort(key=lambda row: row[0])
    for k, row in enumerate(rows):
        if row[5] and (k == 0 or rows[k - 1][0][0] != row[0][0]):
            row[1] = "★"  # the best of its dataset
    rows = [row[1:] for row in rows]
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def best_run(manager: jobs.JobManager, owner: str | None) -> str | None:
    """The visitor's finished run with the best accuracy estimate (the newest among equals)."""
    done = [r for r in _finished(manager, owner) if (r.get("estimate") or {}).get("value") is not None]
    return max(done, key=lambda r: (r["estimate"]["value"], r["created_at"] or 0))["id"] if done else None


def _finished(manager: jobs.JobManager, owner: str | None) -> list[dict]:
    return _finished_rows(manager.list(owner or None))


def resume_run(manager: jobs.JobManager, run_id: str | None, owner: str | None, hf_token: str | None = None,
               oauth_token: gr.OAuthToken | None = None) -> str:
    """Resume the selected run; one on a Hugging Face GPU with the token typed in, else the signed-in visitor's."""
    if not run_id:
        raise refused("Pick a run first.")
    token = visitor_token(hf_token, oauth_token)
    try:
        return manager.resume(run_id, owner=owner or None, token=token)
    except jobs.JobError as e:
        raise refused(str(e))


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
