"""Gradio wiring: tabs, components and events. No ML logic lives here; every
handler calls into the vit package and turns its errors into clear toasts."""
from __future__ import annotations

import os
import secrets
import sys
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from vit import data, explain, hub, jobs, predict, runs, samples
from vit import models, safety, sessions
from vit.models import CATALOG, DEFAULT_MODEL
from vit.safety import HostLimits
from vit.train import ConfigError, TrainConfig, recipe, zero_means_off

TITLE = "ViT Studio"
INTRO = ("Fine-tune a Vision Transformer on your own images, see what it looks at, and share it. "
         "Start with your data: a .zip with one folder per class (cat/001.jpg, dog/001.jpg, ...).")
THEME = gr.themes.Soft()
CSS = ""
MODEL_CHOICES = [(f"{m.title} - {m.params_m:g}M params, {m.device}", m.name) for m in CATALOG]
RUN_COLUMNS = ["run", "state", "model", "epoch", "best val acc", "message", "id"]
_METHOD_TITLES = {"chefer": "Gradient-weighted attention (default)", "rollout": "Attention rollout",
                  "attention": "Raw attention (pick the layer and head)", "gradcam": "Grad-CAM"}
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
DOWNLOADS = Path(tempfile.gettempdir()) / "vit-studio-downloads"  # zips and ONNX files being served


def build_app(manager: jobs.JobManager | None = None) -> gr.Blocks:
    """The app. Without a manager it makes one for VIT_CHECKPOINTS (default checkpoints/) on first use."""
    get_manager = _manager_getter(manager)
    limits = HostLimits.from_env()
    # Gradio's own copies of uploads and outputs are removed once they are older than the limit.
    with gr.Blocks(title=TITLE, delete_cache=(max(60, limits.temp_max_age_s // 4), limits.temp_max_age_s)) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        dataset = gr.State(None)                 # {"path", "name", "summary"} of the checked dataset
        owner = gr.BrowserState("", storage_key="vit-studio-owner")  # survives closing the tab
        with gr.Tab("Data"):
            with gr.Row():
                upload = gr.File(label="Dataset (.zip of class folders)", file_types=[".zip"], type="filepath")
                with gr.Column():
                    sample_count = gr.Slider(10, SAMPLE_MAX, value=SAMPLE_PER_CLASS, step=10,
                                             label="Images per class (sample data)")
                    sample_btn = gr.Button("Use the sample dataset (generated shapes)")
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
            report_features = gr.Markdown()  # what a run's frozen features say about this data
            counts = gr.BarPlot(x="class", y="images", color="split", title="Images per class")
            grid = gr.Gallery(label="Sample images per class", columns=6, height="auto")
        with gr.Tab("Train"):
            if runs.storage_note():
                gr.Markdown(f"**Note:** {runs.storage_note()}")
            offline = not models.hub_reachable()
            if offline:
                gr.Markdown("**Offline:** pretrained weights cannot be downloaded from the Hugging Face Hub here, "
                            "so *From scratch* is on. Fine for the sample shapes; for real photos, fine-tuning "
                            "pretrained weights is far better (copy a Hugging Face cache here, or run online).")
            data_line = gr.Markdown(NO_DATA)
            with gr.Row():
                model = gr.Dropdown(MODEL_CHOICES, value=DEFAULT_MODEL, label="Model (or type any timm ViT name)",
                                    allow_custom_value=True)
                scratch = gr.Checkbox(offline, label="From scratch (no download; settings chosen for your data)",
                                      info="Pretrained weights come from the Hugging Face Hub. Offline, train "
                                           "from scratch: good for simple images (shapes, digits, scans), far "
                                           "weaker on photos.")
            d = TrainConfig()
            with gr.Row():  # an empty field is chosen for the data (the "Will train" line says how); typed, it wins
                epochs = _auto_field("Epochs")
                batch_size = _auto_field("Batch size")
                lr = _auto_field("Learning rate (head)")
                img_size = _auto_field("Image size (px)")
            with gr.Accordion("Advanced settings", open=False):
                with gr.Row():
                    weight_decay = gr.Number(d.weight_decay, label="Weight decay", minimum=0)
                    label_smoothing = gr.Number(d.label_smoothing, label="Label smoothing", minimum=0, maximum=0.5)
                    warmup = _auto_field("Warm-up epochs")
                    patience = _auto_field("Early stopping patience (0: off)")
                with gr.Row():
                    randaugment = gr.Checkbox(d.randaugment, label="RandAugment")
                    mixup = gr.Number(d.mixup, label="Mixup alpha (0: off)", minimum=0)
                    cutmix = gr.Number(d.cutmix, label="CutMix alpha (0: off)", minimum=0)
                    ema = gr.Number(0, label="EMA decay (0: off)", minimum=0, maximum=1)
                with gr.Row():
                    val_fraction = gr.Number(d.val_fraction, label="Validation fraction", minimum=0, maximum=0.9)
                    seed = gr.Number(d.seed, label="Seed", precision=0)
                    progressive = gr.Radio(["auto", "on", "off"], value="auto", label="Progressive resizing",
                                           info="Train the first epochs on smaller images (faster), growing to "
                                                "the final size.")
            with gr.Row():
                run_name = gr.Textbox("", label="Run name (optional)", placeholder="default: dataset · model · time",
                                      max_length=80, scale=3)
            plan = gr.Markdown()
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", interactive=False, scale=2)
                quick_btn = gr.Button("Quick model (seconds)", interactive=False, scale=1)
            gr.Markdown("*Quick model*: only the head is fitted, on the frozen features of the starting weights "
                        "(pretrained, or one of your runs picked as the Model). Its results also show what "
                        "those features say about your data: near-duplicates, likely label errors, and whether "
                        "more images would help.")
            start_msg = gr.Markdown()
            # the name stays in view on a phone while the other columns scroll; long cells are cut
            runs_table = gr.Dataframe(headers=RUN_COLUMNS, label="Runs (newest first)", interactive=False,
                                      wrap=False, max_chars=40, pinned_columns=1)
            with gr.Row():
                selected = gr.Dropdown([], label="Run", allow_custom_value=True, scale=3)
                cancel_btn = gr.Button("Cancel", scale=1)
                resume_btn = gr.Button("Resume", scale=1)
                delete_btn = gr.Button("Delete", variant="stop", scale=1)
            run_msg = gr.Markdown()
            progress = gr.Markdown()
            with gr.Row() as curves:
                loss_plot = gr.LinePlot(x="epoch", y="value", color="curve", title="Loss", min_width=280)
                acc_plot = gr.LinePlot(x="epoch", y="value", color="curve", title="Accuracy", y_lim=[0, 1],
                                       min_width=280)
            with gr.Accordion("Compare finished runs", open=False):
                compare_table = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, wrap=True,
                                             label="Finished runs, best first (click a column to sort)")
                use_best = gr.Button("Use the best run in Classify and Share")
            with gr.Accordion("Results of the selected run", open=True):
                per_class = gr.Dataframe(label="Per class (validation)", interactive=False)
                with gr.Row():
                    confusion = gr.Image(label="Confusion matrix", show_label=False, type="pil", min_width=280)
                    mistakes = gr.Gallery(label=MISTAKES_LABEL, columns=4,
                                          height="auto", min_width=280)
                features_md = gr.Markdown()
                with gr.Column(visible=False) as features_box:  # shown for a run with diagnostics
                    with gr.Row():
                        curve_plot = gr.LinePlot(x="images", y="accuracy", y_lim=[0, 1],
                                                 title="Learning curve (the head alone, on part of the data)",
                                                 min_width=280)
                        pairs = gr.Gallery(label="Near-duplicates, side by side", columns=2, height="auto",
                                           object_fit="contain", min_width=280)
                    suspects = gr.Gallery(label="Likely label errors", columns=6, height="auto")
                    with gr.Row():
                        suspect = gr.Dropdown([], label="Review an image", scale=3)
                        verdict = gr.Dropdown([], label="Action", scale=2)
                        review_btn = gr.Button("Apply to my dataset", scale=1)
                    review_msg = gr.Markdown()
            timer = gr.Timer(2.0)
            run_key = gr.State("")  # "<run id>:<state>" of the selected run
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    model_source = gr.Dropdown([], label="Model: a finished run, or type hf-hub:user/repo",
                                               allow_custom_value=True)
                    # a file path: the app checks the image's header before decoding it (Gradio's "pil"
                    # would decode any size first)
                    image = gr.Image(type="filepath", label="Image", image_mode=None,
                                     sources=["upload", "webcam", "clipboard"])
                    image.preprocess = _unopened_path(image)
                    examples = gr.Examples(_example_images(), inputs=image, label="Examples (sample shapes)")
                    method = gr.Radio([(_METHOD_TITLES[m], m) for m in explain.METHODS],
                                      value=explain.DEFAULT_METHOD, label="Heatmap")
                    with gr.Row():
                        opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity")
                        target = gr.Dropdown([PREDICTED], value=PREDICTED, label="Explain class",
                                             allow_custom_value=False)
                    with gr.Row():
                        layer = gr.Number(-1, label="Layer, for raw attention (-1: the last)", precision=0)
                        head = gr.Number(0, label="Head, for raw attention (0: mean of all)", precision=0,
                                         minimum=0)
                    classify_btn = gr.Button("Classify", variant="primary")
                    with gr.Accordion("Several images at once", open=False):
                        batch_files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                              type="filepath")
                        batch_btn = gr.Button("Classify all")
                        batch_out = gr.Gallery(label="Predictions", columns=4, height="auto")
                        batch_msg = gr.Markdown()
                        batch_csv = gr.File(label="Predictions as CSV (file, top 3 classes and probabilities)")
                with gr.Column():
                    labels_out = gr.Label(label="Prediction", num_top_classes=5)
                    overlay_out = gr.Image(label="What the model looked at (left: your image, right: the map)",
                                           type="pil", format="png", height=420)
                    explain_notes = gr.Markdown()
                    heads_out = gr.Gallery(label="Attention per head (raw attention)", columns=6, height="auto",
                                           visible=explain.DEFAULT_METHOD == "attention")

        with gr.Tab("Share"):
            gr.Markdown("Push a finished run to the Hugging Face Hub as a timm model with a model card, or "
                        "download it as ONNX.")
            with gr.Row():
                share_run = gr.Dropdown([], label="Run", allow_custom_value=True)
                repo_name = gr.Textbox(label="Repo (user/name, or just name)", placeholder="your-name/pets-vit")
                private = gr.Checkbox(False, label="Private")
            if safety.on_spaces() and os.environ.get("OAUTH_CLIENT_ID"):  # hf_oauth: true
                gr.LoginButton("Sign in with Hugging Face to push")
            token = gr.Textbox(label="Hugging Face token with write access (used for this push only, never stored)",
                               type="password", placeholder="hf_...")
            with gr.Row():
                preview_btn = gr.Button("Preview model card")
                push_btn = gr.Button("Push to the Hub", variant="primary")
                export_btn = gr.Button("Export ONNX")
                zip_btn = gr.Button("Download the run (.zip)")
            share_msg = gr.Markdown()
            with gr.Row():
                onnx_file = gr.File(label="ONNX model (one file, weights inside)")
                zip_file = gr.File(label="The run (.zip: model, config, metrics)")
            card_view = gr.Markdown()

        shown = [report, counts, grid, dataset, data_line]

        def keep_dataset(ds, who):  # a reload or a return visit finds it again
            sessions.remember(get_manager().root, who, dataset=ds)

        kept = dict(fn=keep_dataset, inputs=[dataset, owner], outputs=None, api_visibility="private")
        upload.upload(check_dataset, upload, shown, api_name="check_dataset").then(**kept)
        sample_btn.click(sample_dataset, sample_count, shown, api_name="sample_dataset").then(**kept)
        slots = [class_count, *class_rows, *class_names, *class_files]
        add_class.click(lambda n: _class_slots(n + 1), class_count, slots, api_visibility="private")
        remove_class.click(lambda n: _class_slots(n - 1), class_count, slots, api_visibility="private")
        check_classes_btn.click(check_classes, [*class_names, *class_files], shown,
                                api_name="check_classes").then(**kept)

        welcome = app.load(_ensure_owner, owner, owner, api_visibility="private")
        dataset.change(lambda ds: [gr.Button(interactive=bool(ds) and not ds.get("problem"))] * 2, dataset,
                       [start_btn, quick_btn], api_visibility="private")
        listing = [runs_table, selected]
        view = [progress, loss_plot, acc_plot]
        results = [per_class, confusion, mistakes]
        advanced = [img_size, weight_decay, label_smoothing, warmup, patience, randaugment, mixup, cutmix, ema,
                    val_fraction, seed, progressive]

        def starter(quick: bool):
            def start(ds, model_name, from_zero, n_epochs, batch, rate, who, *more):
                *values, named = more if len(more) > len(ADVANCED) else (*more, None)
                return start_training(get_manager(), ds, model_name, from_zero, n_epochs, batch, rate, who, named,
                                      quick=quick, **dict(zip(ADVANCED, values)))
            return start

        def outcome(run_id, who):
            return run_results(get_manager(), run_id, who)

        def refresh(choice, who):
            return list_runs(get_manager(), choice, who)

        def show(run_id, who):
            return show_run(get_manager(), run_id, who)

        def show_live(run_id, who):  # the live view, and a key that changes when the run's state does
            return (*show(run_id, who), _state_key(get_manager(), run_id))

        def act(action):
            def handler(run_id, who):
                return run_action(get_manager(), action, run_id, who)
            return handler

        form = [dataset, model, scratch, epochs, batch_size, lr, owner, *advanced, run_name]
        start_btn.click(starter(False), form, [start_msg, selected], api_name="start_training")
        quick_btn.click(starter(True), form, [start_msg, selected], api_name="quick_model")
        settings = [model, scratch, epochs, batch_size, lr, *advanced]

        def keep_settings(who, *values):
            sessions.remember(get_manager().root, who, settings=dict(zip(SETTINGS, values)))

        def restore(who):
            return restore_session(get_manager(), who)

        planned = [dataset, *settings]
        for field in planned:  # what will actually run, before Start, as the dataset or a setting changes
            field.change(run_plan, planned, plan, api_visibility="private", show_progress="hidden")
        for field in settings:  # remembered for the next visit
            field.input(keep_settings, [owner, *settings], None, api_visibility="private", show_progress="hidden")
            if isinstance(field, gr.Textbox):  # a pasted or autofilled value sends no input event: leaving does
                field.blur(keep_settings, [owner, *settings], None, api_visibility="private", show_progress="hidden")
        welcome.then(restore, owner, [*shown, *settings], api_visibility="private").then(
            run_plan, planned, plan, api_visibility="private").then(
            refresh, [selected, owner], listing, api_visibility="private")
        timer.tick(refresh, [selected, owner], listing, api_name="list_runs", show_progress="hidden")
        timer.tick(show_live, [selected, owner], [*view, run_key], api_visibility="private", show_progress="hidden")
        selected.change(show, [selected, owner], view, api_name="show_run", show_progress="hidden")
        for event in (selected.change, run_key.change):
            event(lambda run_id, who: curves_shown(get_manager(), run_id, who), [selected, owner], curves,
                  api_visibility="private", show_progress="hidden")
        selected.change(outcome, [selected, owner], results, api_name="run_results", show_progress="hidden")
        # results are drawn once per state (e.g. when the run completes), not on every tick
        run_key.change(outcome, [selected, owner], results, api_visibility="private", show_progress="hidden")
        diagnosed = [features_md, curve_plot, pairs, suspects, suspect, verdict, features_box]

        def read_features(run_id, ds, who):
            return run_features(get_manager(), run_id, ds, who)

        selected.change(read_features, [selected, dataset, owner], diagnosed, api_name="run_features",
                        show_progress="hidden")
        run_key.change(read_features, [selected, dataset, owner], diagnosed, api_visibility="private",
                       show_progress="hidden")
        suspect.change(lambda run_id, name, who: review_choices(get_manager(), run_id, name, who),
                       [selected, suspect, owner], verdict, api_visibility="private", show_progress="hidden")

        def review(ds, run_id, name, action, who):
            return review_image(get_manager(), ds, run_id, name, action, who)

        review_btn.click(review, [dataset, selected, suspect, verdict, owner], [*shown, review_msg],
                         api_name="review_image").then(**kept).then(
            read_features, [selected, dataset, owner], diagnosed, api_visibility="private")

        def for_data_tab(run_id, ds, who):
            return data_features(get_manager(), run_id, ds, who)

        for event in (selected.change, run_key.change, dataset.change):
            event(for_data_tab, [selected, dataset, owner], report_features, api_visibility="private",
                  show_progress="hidden")

        def comparison(who):
            return compare_runs(get_manager(), who)

        run_key.change(comparison, owner, compare_table, api_visibility="private", show_progress="hidden")
        welcome.then(comparison, owner, compare_table, api_name="compare_runs")
        for btn, action in ((cancel_btn, "cancel"), (resume_btn, "resume"), (delete_btn, "delete")):
            # Delete asks first in the page; a declined confirmation sends no run, and nothing is deleted
            ask = CONFIRM_DELETE if action == "delete" else None
            btn.click(act(action), [selected, owner], run_msg, api_name=f"{action}_run", js=ask).then(
                refresh, [selected, owner], listing, api_visibility="private")
        app.load(refresh, [selected, owner], listing, api_visibility="private")

        def classify(source, img, how, alpha, cls, at_layer=-1, at_head=0, who=None):
            try:
                return classify_image(get_manager(), source, img, how, alpha, cls, at_layer, at_head, owner=who)
            except gr.Error as e:  # say what is wrong, and clear the previous image's results
                gr.Warning(e.message)
                return None, None, f"**Cannot classify:** {e.message}", [], gr.Dropdown()

        def classify_many(source, paths, who=None):
            try:
                gallery, table = classify_batch(get_manager(), source, paths, owner=who)
            except gr.Error as e:
                gr.Warning(e.message)
                return [], f"**Cannot classify:** {e.message}", None
            return gallery, "", table

        def model_lists(for_share, for_classify, known, who):  # one listing of the runs for both pickers
            rows = get_manager().list(who or None)
            finished = [r["id"] for r in rows if r["state"] == "completed"]
            new = [i for i in finished if known is not None and i not in known]  # finished since the last look
            follow = new[0] if new else None
            starts = gr.update() if finished == known else gr.Dropdown(choices=_start_choices(rows))
            return (_model_picker(rows, for_share, follow), _model_picker(rows, for_classify, follow), finished,
                    starts)

        def push(run_id, repo, is_private, typed, who, oauth_token: gr.OAuthToken | None = None):
            return push_to_hub(get_manager(), run_id, repo, is_private, typed, oauth_token, who)

        def preview(run_id, repo, who=None):
            return preview_card(get_manager(), run_id, repo, who)

        def export(run_id, who):
            return export_run(get_manager(), run_id, who)

        push_btn.click(push, [share_run, repo_name, private, token, owner], share_msg, api_name="push")
        preview_btn.click(preview, [share_run, repo_name, owner], card_view, api_name="preview_card")
        export_btn.click(export, [share_run, owner], [onnx_file, share_msg], api_name="export_onnx")
        zip_btn.click(lambda run_id, who: download_run(get_manager(), run_id, who), [share_run, owner], zip_file,
                      api_name="download_run")
        # Several classifications at once, each on its own replica of the model with its share of the cores.
        asked = [model_source, image, method, opacity, target, layer, head, owner]
        shown_map = [labels_out, overlay_out, explain_notes, heads_out, target]
        classify_btn.click(classify, asked, shown_map, api_name="classify",
                           concurrency_limit=limits.concurrency, concurrency_id="classify")
        # per-head maps exist for raw attention only: their box shows with it
        method.change(lambda how: gr.Gallery(visible=how == "attention"), method, heads_out,
                      api_visibility="private", show_progress="hidden")

        def redraw(source, img, *rest):  # a changed method, class, layer, head or opacity: draw it again
            if not source or not img:
                return (gr.update(),) * len(shown_map)
            return classify(source, img, *rest)

        for control, event in ((method, "input"), (target, "input"), (layer, "submit"), (head, "submit"),
                               (opacity, "release")):
            getattr(control, event)(redraw, asked, shown_map, api_visibility="private",
                                    concurrency_limit=limits.concurrency, concurrency_id="classify")
        batch_btn.click(classify_many, [model_source, batch_files, owner], [batch_out, batch_msg, batch_csv],
                        api_name="classify_batch",
                        concurrency_limit=limits.concurrency, concurrency_id="classify")
        model_source.change(lambda run_id, who: run_examples(get_manager(), run_id, who), [model_source, owner],
                            examples.dataset, api_visibility="private", show_progress="hidden")
        pickers = [share_run, model_source]

        def best_everywhere(who):
            best = best_run(get_manager(), who)
            if best is None:
                raise refused("No finished run with a model yet.")
            return gr.Dropdown(value=best), gr.Dropdown(value=best)

        use_best.click(best_everywhere, owner, pickers, api_visibility="private")
        finished_seen = gr.State(None)  # finished runs the pickers know of: a new one is followed
        app.load(model_lists, [*pickers, finished_seen, owner], [*pickers, finished_seen, model],
                 api_visibility="private")
        timer.tick(model_lists, [*pickers, finished_seen, owner], [*pickers, finished_seen, model],
                   api_visibility="private", show_progress="hidden")
    return app


# ---------------------------------------------------------------------------
# handlers: plain functions, reachable without a browser


def check_dataset(path: str | None):
    """Validate an uploaded zip and show its health report, class counts and sample images."""
    if not path:
        raise refused("No file received. Upload a .zip with one folder per class.")
    try:
        with data.load_dataset(path) as ds:
            shown = _show(ds, path, Path(path).name)
    except data.DataError as e:
        _remove_upload(path)
        raise refused(str(e), duration=None)
    if shown[3].get("problem"):  # cannot be trained on: nothing will use the upload again
        _remove_upload(path)
    return shown


def check_classes(*names_and_files):
    """Validate classes built one by one (MAX_CLASSES names, then their image lists) and show the report.
    Empty slots are ignored; a removed slot is emptied by the UI."""
    names, files = names_and_files[:MAX_CLASSES], names_and_files[MAX_CLASSES:]
    mapping: dict[str, list[str]] = {}
    for i, (name, paths) in enumerate(zip(names, files)):
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
    root = Path(tempfile.gettempdir()) / "vit-studio-samples"
    folder = root / f"shapes-{n}"
    if not (folder / "circle").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root))
        samples.make_shapes_dataset(tmp / "d", n, fmt="jpg")
        try:
            os.replace(tmp / "d", folder)  # atomic: a concurrent request sees all of it or none
        except OSError:
            pass  # another request made it first
        shutil.rmtree(tmp, ignore_errors=True)
    with data.load_dataset(folder) as ds:
        return _show(ds, str(folder), f"sample shapes ({n} per class)")


SETTINGS = ("model", "scratch", "epochs", "batch_size", "lr")  # then ADVANCED: the Train form, in order
ADVANCED = ("img_size", "weight_decay", "label_smoothing", "warmup_epochs", "early_stopping", "randaugment", "mixup",
            "cutmix", "ema_decay", "val_fraction", "seed", "progressive")


def restore_session(manager: jobs.JobManager, owner: str | None):
    """What the visitor had on their last visit: the dataset (checked again, with its report) and the
    Train settings, as updates for the Data tab's outputs and the Train form (unchanged where none)."""
    record = sessions.recall(manager.root, owner)
    names = SETTINGS + ADVANCED
    saved = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    form = [gr.update(value=saved[k]) if k in saved else gr.update() for k in names]
    ds = record.get("dataset")
    if not isinstance(ds, dict) or not ds.get("name"):
        return (*[gr.update()] * 5, *form)
    if ds.get("problem"):
        line = f"The dataset **{ds['name']}** cannot be trained on: {ds['problem']} Fix it and upload it again."
        return (line, gr.update(), gr.update(), ds, line, *form)
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
        shown = (gone, pd.DataFrame(columns=["class", "split", "images"]), [], None, gone)
    return (*shown, *form)


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
    if not run_id:
        return nothing
    try:
        run_dir = manager.own_run(run_id, owner or None, "see")
    except jobs.JobError:
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
    try:
        run_dir = manager.own_run(run_id, owner or None, "see") if run_id else None
    except jobs.JobError:
        return empty
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


def _features_summary(found: dict, reviewed: set) -> list[str]:
    """A run's diagnostics in three lines: the learning curve's verdict, near-duplicates, likely label errors
    (those not yet reviewed)."""
    points = found.get("learning_curve", {}).get("points", [])
    pairs_ = found.get("near_duplicates", [])
    leaks = sum(bool(p.get("leak")) for p in pairs_)
    doubted = found.get("suspects", 0) - len(reviewed & {e["name"] for e in found.get("label_errors", [])})
    return [f"- **Would more images help?** {found.get('learning_curve', {}).get('verdict', '')} "
            + ", ".join(f"{p['images']} images: {p['val_acc']:.0%}" for p in points) + ".",
            f"- **Near-duplicates:** {data.count(len(pairs_), 'pair')} of images that look the same to the model"
            + (f", {leaks} across train and validation or test (validation accuracy is flattered: remove one "
               "of each)" if leaks else "") + ".",
            f"- **Likely label errors:** {data.count(max(doubted, 0), 'image')} that a head fitted without them "
            "finds more like another class."]


def data_features(manager: jobs.JobManager, run_id: str | None, dataset: dict | None, owner: str | None) -> str:
    """For the Data tab, under the health report: what the selected run's features say, when that run was
    trained on the dataset shown there."""
    try:
        run_dir = manager.own_run(run_id, owner or None, "see") if run_id and dataset else None
    except jobs.JobError:
        return ""
    found = runs.read_json(run_dir / runs.DIAGNOSTICS, None) if run_dir else None
    if not isinstance(found, dict) or runs.read_json(run_dir / jobs.JOB, {}).get("source") != dataset.get("name"):
        return ""
    name = runs.read_json(run_dir / jobs.JOB, {}).get("name") or run_dir.name
    return "\n".join([f"### What the features say about this data (run {name})",
                      *_features_summary(found, set(dataset.get("edits") or {})),
                      "", "*The pairs and the images to review are in the Train tab, under that run's results.*"])


def review_choices(manager: jobs.JobManager, run_id: str | None, name: str | None, owner: str | None):
    """What can be done with a likely label error: relabel as the class suggested (first), keep, relabel
    as another class, or drop it."""
    suspect = _suspect(manager, run_id, name, owner)
    if suspect is None:
        return gr.Dropdown(choices=[], value=None)
    classes = runs.read_json(manager.own_run(run_id, owner or None, "see") / runs.METRICS, {}).get("classes", [])
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
    suspect = _suspect(manager, run_id, name, owner)
    if suspect is None:
        raise refused("Pick one of the run's likely label errors to review.")
    classes = runs.read_json(manager.own_run(run_id, owner or None, "see") / runs.METRICS, {}).get("classes", [])
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


def _suspect(manager: jobs.JobManager, run_id: str | None, name: str | None, owner: str | None) -> dict | None:
    if not run_id or not name:
        return None
    try:
        run_dir = manager.own_run(run_id, owner or None, "see")
    except jobs.JobError:
        return None
    found = runs.read_json(run_dir / runs.DIAGNOSTICS, {})
    return next((e for e in found.get("label_errors", []) if e.get("name") == name), None) \
        if isinstance(found, dict) else None


def _run_image(run_dir: Path, name: str, side: int = 160):
    """A small copy of one image of the run's own data (None when it cannot be read)."""
    try:
        path = safety.safe_join(run_dir / jobs.DATA_DIR, *str(name).split("/"))
        img, _, _ = data.read_rgb(path, draft_side=side, max_side=640)
    except (ValueError, data.DataError):
        return None
    img.thumbnail((side, side))
    return img


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


def classify_image(manager: jobs.JobManager, source: str | None, image, method: str, opacity: float,
                   target: str | None, layer: float | None = -1, head: float | None = 0, *, owner: str | None = None):
    """Top classes, the heatmap overlay, its notes and per-head maps for one image (a file path)."""
    if image is None:
        raise refused("Upload an image to classify.")
    if method not in explain.METHODS:
        raise refused(f"Unknown heatmap method {str(method)[:40]!r}; choose one of {', '.join(explain.METHODS)}.")
    loaded = _load(manager, source, owner)
    try:
        layer_index = _whole_number(layer, "Layer", -1)
        head_number = _whole_number(head, "Head", 0)
        heads_there = int(getattr(loaded.model.blocks[0].attn, "num_heads", 0) or 0)
        if method == "attention" and heads_there and not 0 <= head_number <= heads_there:
            raise ValueError(f"Head {head_number} does not exist: the model has {heads_there} heads per layer "
                             f"(use 1..{heads_there}, or 0 for their mean).")
        rgb = predict.read_image(image)
        t = loaded.labels.index(target) if target in loaded.labels else None
        weights = loaded.folder / runs.WEIGHTS
        key = (str(weights), weights.stat().st_mtime_ns, str(image), method, t, layer_index, head_number)
        e = _explained.get(key)
        if e is None:  # (a new opacity, or a method seen before, is drawn from the map already made)
            with predict.compute_share(manager.web_threads()), loaded.borrow() as model:
                e = explain.explain(model, loaded.preprocess(rgb), method, t, layer=layer_index,
                                    head=head_number - 1 if head_number else None)
            _explained.put(key, e)
    except (predict.PredictError, explain.ExplainError, ValueError) as err:
        raise refused(str(err), duration=None)
    probs = {label: float(p) for label, p in zip(loaded.labels, e.probs)}
    picture = explain.figure(rgb, e.heatmap, box=loaded.input_box(rgb.size), opacity=opacity)
    notes = [_map_title(method, loaded, e.target, layer_index, head_number)] + e.notes
    where = _layer_name(layer_index, len(loaded.model.blocks))
    heads = [] if e.heads is None else [(explain.colour_heatmap(h, (96, 96 * h.shape[0] // h.shape[1])),
                                         f"{where}, head {i + 1}") for i, h in enumerate(e.heads)]
    chosen = loaded.labels[e.target] if t is not None else PREDICTED
    return probs, picture, "\n\n".join(notes), heads, gr.Dropdown(choices=[PREDICTED, *loaded.labels], value=chosen)


def _map_title(method: str, loaded: predict.LoadedModel, target: int, layer: int, head: int) -> str:
    """What the map shows, in words: the class only where the method depends on it, the layer and head
    that were asked for."""
    if method == "attention":
        depth = len(loaded.model.blocks)
        which = f"head {head}" if head else "the mean of its heads"
        return (f"**Raw attention of {_layer_name(layer, depth)}** ({which}), from the classifier token. "
                "Attention, not an explanation: it is the same whatever the class, and by the last layers every "
                "token carries information from the whole image, so it often points at background.")
    text = f"**{_METHOD_TITLES[method]}**"
    if method in CLASS_SPECIFIC:
        text += f" for class **{loaded.labels[target]}**"
    return f"{text}. {explain.METHODS[method]}"


def _layer_name(layer: int, depth: int) -> str:
    index = layer % depth if depth else layer
    return f"layer {index} (the last)" if index == depth - 1 else f"layer {index} of 0..{depth - 1}"


def push_to_hub(manager: jobs.JobManager, run_id: str | None, repo: str, private: bool, typed_token: str | None,
                oauth_token, owner: str | None) -> str:
    """Push a run; the token typed in, else the signed-in user's (on a Space). Neither is kept."""
    if not run_id:
        raise refused("Pick a finished run to push.")
    if not (repo or "").strip():
        raise refused("Give the repo a name, e.g. your-name/pets-vit.")
    token = (typed_token or "").strip() or (getattr(oauth_token, "token", None) if oauth_token else None)
    try:
        run_dir = manager.own_run(run_id, owner or None, "push")
        url = hub.push_run(run_dir, repo, token, private=bool(private))
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    repo_id = url.rstrip("/").split("/", 3)[-1] if "/" in url else repo
    return (f"Pushed **{run_id}** to [{url}]({url}). Anyone can load it with "
            f"`timm.create_model(\"hf-hub:{repo_id}\", pretrained=True)`.")


def preview_card(manager: jobs.JobManager, run_id: str | None, repo: str | None, owner: str | None = None) -> str:
    """The model card a push would write (its text; the pictures go with the push)."""
    if not run_id:
        raise refused("Pick a finished run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "see")
        repo = (repo or "").strip().strip("/") or run_id
        return hub.card_preview(run_dir, repo if "/" in repo else f"your-name/{repo}")
    except ValueError as e:
        raise refused(str(e))


def download_run(manager: jobs.JobManager, run_id: str | None, owner: str | None = None) -> str:
    """A zip of the run (model, config, metrics, health report) to download."""
    if not run_id:
        raise refused("Pick a run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "download")
        return str(runs.archive(run_dir, _download_folder()))
    except (ValueError, OSError) as e:
        raise refused(str(e))


def export_run(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """model.onnx of a run (dynamic batch), checked against PyTorch."""
    if not run_id:
        raise refused("Pick a finished run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "export")
        path, diff = hub.export_onnx(run_dir, _download_folder() / f"{run_id}.onnx")
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    return str(path), f"Exported **{run_id}** to ONNX; largest difference from PyTorch on test inputs: {diff:.1e}."


def classify_batch(manager: jobs.JobManager, source: str | None, paths: list[str] | None, *,
                   owner: str | None = None):
    """Several images: a gallery captioned with each one's top class (or what is wrong with it)."""
    if not paths:
        raise refused("Add some images first.")
    if len(paths) > MAX_BATCH:
        raise refused(f"{len(paths)} images at once is over the limit of {MAX_BATCH}; classify them in parts.")
    loaded = _load(manager, source, owner)
    out, table = [], []
    k = min(3, len(loaded.labels))
    for path in paths:
        name = Path(path).name
        try:
            with predict.compute_share(manager.web_threads()):
                (top,) = loaded.classify(predict.read_image(path), topk=k)
            out.append((path, f"{top[0][0]} {top[0][1]:.0%}"))
            table.append([name, "", *[v for label, p in top for v in (label, round(p, 4))]])
        except predict.PredictError as e:
            out.append((_placeholder(), str(e)))  # (the message names the file)
            table.append([name, str(e), *[""] * (2 * k)])
    return out, _csv(table, ["file", "problem", *[f"{c}{i + 1}" for i in range(k) for c in ("label", "probability")]])


# ---------------------------------------------------------------------------
# helpers


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
    running = [r["id"] for r in rows if r["state"] == "running"]
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
    finished = [r["id"] for r in done if r["state"] == "completed"]
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
    model = (r["model"] or "").split(".")[0]
    return f"{model} ({r['recipe']})" if r.get("recipe") else model


def _model_label(r: dict) -> str:
    """'pets.zip · vit_small_patch16_224 · 14:05 · 93%' (the default name already names the model)."""
    acc = "" if r["best_val_acc"] is None else f" · {r['best_val_acc']:.0%}"
    state = "" if r["state"] == "completed" else f" ({r['state']})"
    model = "" if (r["model"] or "").split(".")[0] in r["name"] else f" · {_model_text(r)}"
    return f"{r['name']}{model}{acc}{state}"


def _state_key(manager: jobs.JobManager, run_id: str | None) -> str:
    try:
        return f"{run_id}:{runs.read_status(runs.run_path(manager.root, run_id)).get('state')}" if run_id else ""
    except ValueError:
        return ""


def _load(manager: jobs.JobManager, source: str | None, owner: str | None = None) -> predict.LoadedModel:
    """The model of one of the visitor's runs, or of an hf-hub: id; never a folder named by the visitor."""
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
        writer.writerows(rows)
    return str(path)


def _placeholder() -> str:
    path = Path(tempfile.gettempdir()) / "vit-studio-unreadable.png"
    if not path.is_file():
        from PIL import Image
        Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    return str(path)


def run_examples(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """The Classify examples for a run: a few of its own validation images, one or two per class (copied
    small where Gradio may serve them); the sample shapes when the run has none to offer."""
    picked: list[tuple[str, Path]] = []
    try:
        run_dir = manager.own_run(run_id, owner or None, "use") if run_id and ":" not in run_id else None
        manifest = run_dir / jobs.DATA_DIR / data.MANIFEST_NAME if run_dir else None
        rows = list(csv_rows(manifest)) if manifest and manifest.is_file() else []
    except (jobs.JobError, OSError, ValueError):
        rows = []
    labels = sorted({r.get("label") for r in rows if r.get("split") == "val"} - {None})
    per_class = 1 if len(labels) > 4 else 2
    for label in labels[:8]:
        names = [r["path"] for r in rows if r.get("split") == "val" and r.get("label") == label][:per_class]
        for name in names:
            try:
                picked.append((label, safety.safe_join(run_dir / jobs.DATA_DIR, *name.split("/"))))
            except ValueError:
                continue
    if not picked:
        return gr.Dataset(samples=_example_images(), label="Examples (sample shapes)")
    folder, samples_ = _download_folder(), []
    for i, (label, path) in enumerate(picked):
        try:
            img, _, _ = data.read_rgb(path, draft_side=256, max_side=1024)
        except data.DataError:
            continue
        img.thumbnail((320, 320))
        out = folder / f"{i:02d}.png"
        img.save(out)
        samples_.append([str(out)])
    return gr.Dataset(samples=samples_, label="Examples: validation images of this run (try them)")


def csv_rows(path: Path):
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _example_images() -> list[list[str]]:
    """One generated image per sample shape, for the Classify tab's examples."""
    import random
    folder = Path(tempfile.gettempdir()) / "vit-studio-examples"
    folder.mkdir(exist_ok=True)
    out = []
    for k, shape in enumerate(samples.SHAPES):
        path = folder / f"{shape}.png"
        if not path.is_file():
            samples.draw_shape(shape, 160, random.Random(k)).save(path)
        out.append([str(path)])
    return out


def _class_slots(n: int):
    """Show n class slots; the hidden ones are emptied, so they never count."""
    n = max(2, min(MAX_CLASSES, int(n)))
    keep = [gr.update() if i < n else "" for i in range(MAX_CLASSES)]
    return ([n] + [gr.Row(visible=i < n) for i in range(MAX_CLASSES)] + keep
            + [gr.update() if i < n else None for i in range(MAX_CLASSES)])


def _show(ds: data.Dataset, path: str | None, name: str, classes: dict | None = None, edits: dict | None = None):
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
    return r.to_markdown() + hint, df, data.thumbnails(ds), state, line


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
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    max_age = HostLimits.from_env().temp_max_age_s
    for old in DOWNLOADS.iterdir():
        try:
            if time.time() - old.stat().st_mtime > max_age:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        except OSError:
            pass
    return Path(tempfile.mkdtemp(dir=DOWNLOADS))


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
    return f"{done}/{r['epochs']}" if r["state"] != "queued" else f"0/{r['epochs']}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"

