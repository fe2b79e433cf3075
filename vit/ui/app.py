"""The app: the four tabs' components and their events, composed. The handlers live in the tab modules."""
from __future__ import annotations

import os

import gradio as gr

from vit import explain, jobs, runs
from vit import models, safety, sessions
from vit.models import DEFAULT_MODEL
from vit.safety import HostLimits
from vit.train import TrainConfig
from vit.ui.classify_tab import _example_images, classify_batch, classify_image, run_examples
from vit.ui.common import (INTRO, MAX_CLASSES, MISTAKES_LABEL, MODEL_CHOICES, NO_DATA, PREDICTED, RUN_COLUMNS,
                           SAMPLE_MAX, SAMPLE_PER_CLASS, TITLE, _METHOD_TITLES, _ensure_owner, _manager_getter,
                           _model_picker, _state_key, _unopened_path, refused)
from vit.ui.data_tab import _class_slots, check_classes, check_dataset, data_features, restore_session, sample_dataset
from vit.ui.share_tab import download_run, export_run, preview_card, push_to_hub
from vit.ui.train_tab import (ADVANCED, COMPARE_COLUMNS, CONFIRM_DELETE, SETTINGS, _auto_field, _start_choices,
                              best_run, compare_runs, curves_shown, list_runs, review_choices, review_image,
                              run_action, run_features, run_plan, run_results, show_run, start_training)


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
