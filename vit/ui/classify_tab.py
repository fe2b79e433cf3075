"""The Classify tab: its components (layout), their events (wire), and the handlers: one image with its heatmap,
a batch into a gallery and a CSV, the examples."""
from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import gradio as gr

from vit import data, jobs, samples, trust
from vit import safety
from vit.ui.common import CLASS_SPECIFIC, DEFAULT_METHOD, MAX_BATCH, PREDICTED, _METHOD_TITLES
from vit.ui.files import _csv, _download_folder, _placeholder, _unopened_path, csv_rows
from vit.ui.loading import _explained, _load
from vit.ui.page import ONE_BATCH_EACH, PRIVATE, Page, _whole_number, outputs, refused

if TYPE_CHECKING:
    from vit.predict import LoadedModel

LABEL = "Prediction (calibrated)"
ACCEPT_RANGE = (0.5, 1.0)  # the 'not sure' slider: the share of the run's held-out images of its classes that pass


def layout() -> SimpleNamespace:
    """The Classify tab's components: the model, an image and how to draw its map; the prediction and the map."""
    with gr.Row():
        with gr.Column():
            model_source = gr.Dropdown([], label="Model: a finished run, or type hf-hub:user/repo",
                                       allow_custom_value=True)
            # a file path: the app checks the image's header before decoding it (Gradio's "pil" would decode any
            # size first)
            image = gr.Image(type="filepath", label="Image", image_mode=None, sources=["upload", "webcam", "clipboard"])
            image.preprocess = _unopened_path(image)
            examples = gr.Examples(_example_images(), inputs=image, label="Examples (sample shapes)")
            method = gr.Radio([(title, m) for m, title in _METHOD_TITLES.items()], value=DEFAULT_METHOD,
                              label="Heatmap")
            with gr.Row():
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity")
                target = gr.Dropdown([PREDICTED], value=PREDICTED, label="Explain class", allow_custom_value=False)
            with gr.Row():
                layer = gr.Number(-1, label="Layer, for raw attention (-1: the last)", precision=0)
                head = gr.Number(0, label="Head, for raw attention (0: mean of all)", precision=0, minimum=0)
            accept = gr.Slider(ACCEPT_RANGE[0], ACCEPT_RANGE[1], value=trust.ACCEPT, step=0.01,
                               label="'Not sure' threshold: the share of your own validation images that pass",
                               info="Higher: fewer 'not sure' answers, and more unfamiliar images answered anyway.")
            classify_btn = gr.Button("Classify", variant="primary")
            with gr.Accordion("Several images at once", open=False):
                batch_files = gr.File(label="Images", file_count="multiple", file_types=["image"], type="filepath")
                batch_btn = gr.Button("Classify all")
                batch_out = gr.Gallery(label="Predictions", columns=4, height="auto")
                batch_msg = gr.Markdown()
                batch_csv = gr.File(label="Predictions as CSV (file, unsure, ood_score, top 3 classes and "
                                          "probabilities)")
        with gr.Column():
            labels_out = gr.Label(label=LABEL, num_top_classes=5)
            notes = gr.Markdown()  # (first: "Not sure", right under the classes; then what the map shows)
            overlay_out = gr.Image(label="What the model looked at (left: your image, right: the map)", type="pil",
                                   format="png", height=420)
            heads_out = gr.Gallery(label="Attention per head (raw attention)", columns=6, height="auto",
                                   visible=DEFAULT_METHOD == "attention")
    return SimpleNamespace(model_source=model_source, image=image, examples=examples, method=method, opacity=opacity,
                           target=target, layer=layer, head=head, accept=accept, classify_btn=classify_btn,
                           batch_files=batch_files, batch_btn=batch_btn, batch_out=batch_out, batch_msg=batch_msg,
                           batch_csv=batch_csv, labels_out=labels_out, overlay_out=overlay_out, notes=notes,
                           heads_out=heads_out)


def wire(page: Page, tab: SimpleNamespace) -> None:
    """The Classify tab's events. Several classifications run at once, each on its own replica of the model with
    its share of the cores."""
    at_once = dict(concurrency_limit=page.limits.concurrency, concurrency_id="classify")
    # a lane of its own for batches, so that heavy batches never hold the slots of single images; one batch per
    # visitor at a time in it (classify_batch refuses a second at once), so no visitor holds two of its places
    batches = dict(concurrency_limit=page.limits.concurrency, concurrency_id="classify_batch")
    asked = [tab.model_source, tab.image, tab.method, tab.opacity, tab.target, tab.layer, tab.head, page.owner,
             tab.accept]
    shown = outputs(Classified, probs=tab.labels_out, overlay=tab.overlay_out, notes=tab.notes, heads=tab.heads_out,
                    target=tab.target)
    tab.classify_btn.click(page.bind(classify_view), asked, shown, api_name="classify", **at_once)
    # a new image (or a cleared one, or a file that is not an image) clears the last one's results
    tab.image.change(lambda _: Classified(None, None, "", [], gr.update(value=PREDICTED)), tab.image, shown, **PRIVATE)
    # per-head maps exist for raw attention only: their box shows with it
    tab.method.change(lambda how: gr.Gallery(visible=how == "attention"), tab.method, tab.heads_out, **PRIVATE)
    for control, event in ((tab.method, "input"), (tab.target, "input"), (tab.layer, "submit"), (tab.head, "submit"),
                           (tab.opacity, "release"), (tab.accept, "release")):
        getattr(control, event)(page.bind(redraw), asked, shown, api_visibility="private", **at_once)
    tab.batch_btn.click(page.bind(classify_batch_view), [tab.model_source, tab.batch_files, page.owner, tab.accept],
                        [tab.batch_out, tab.batch_msg, tab.batch_csv], api_name="classify_batch", **batches)
    tab.model_source.change(page.bind(run_examples), [tab.model_source, page.owner], tab.examples.dataset, **PRIVATE)


class Classified(NamedTuple):
    """What a classification fills: the calibrated probabilities, the overlay, the notes (the verdict first), the
    per-head maps and the class explained."""
    probs: Any
    overlay: Any
    notes: Any
    heads: Any
    target: Any


def classify_view(manager: jobs.JobManager, source: str | None, image, method: str, opacity: float,
                  target: str | None, layer: float | None = -1, head: float | None = 0, owner: str | None = None,
                  accept: float | None = None):
    """classify_image for the page: what is wrong is said, and the previous image's results are cleared."""
    try:
        return classify_image(manager, source, image, method, opacity, target, layer, head, accept, owner=owner)
    except gr.Error as e:
        gr.Warning(e.message)
        return Classified(None, None, f"**Cannot classify:** {e.message}", [], gr.Dropdown())


def redraw(manager: jobs.JobManager, source: str | None, image, *rest):
    """A changed method, class, layer, head or opacity: the map drawn again (nothing without a model and an image)."""
    if not source or not image:
        return Classified._make([gr.update()] * len(Classified._fields))
    return classify_view(manager, source, image, *rest)


def classify_batch_view(manager: jobs.JobManager, source: str | None, paths: list[str] | None,
                        owner: str | None = None, accept: float | None = None):
    """classify_batch for the page: the gallery, a message (what is wrong, if anything) and the CSV."""
    try:
        gallery, table = classify_batch(manager, source, paths, accept, owner=owner)
    except gr.Error as e:
        gr.Warning(e.message)
        return [], f"**Cannot classify:** {e.message}", None
    return gallery, "", table


def classify_image(manager: jobs.JobManager, source: str | None, image, method: str, opacity: float,
                   target: str | None, layer: float | None = -1, head: float | None = 0, accept: float | None = None,
                   *, owner: str | None = None):
    """Top classes (calibrated), the heatmap overlay, its notes (first, "not sure" for an image unlike the
    training images at the `accept` threshold) and per-head maps for one image (a file path)."""
    from vit import explain, predict  # torch and timm come with the first classification, not with the page
    if image is None:
        raise refused("Upload an image to classify.")
    if method not in explain.METHODS:
        raise refused(f"Unknown heatmap method {str(method)[:40]!r}; choose one of {', '.join(explain.METHODS)}.")
    loaded = _load(manager, source, owner)
    instead = []
    if not explain.is_transformer(loaded.model) and method != "gradcam":  # a CNN: its one map, and why
        instead = [f"*{explain.NEEDS_ATTENTION[method]} needs a ViT's attention, and {loaded.name} is a CNN, which "
                   "has none: Grad-CAM on its last stage is shown instead.*"]
        method = "gradcam"
    blocks = getattr(loaded.model, "blocks", None) or []
    try:
        accept = _acceptance(accept)
        layer_index = _whole_number(layer, "Layer", -1)
        head_number = _whole_number(head, "Head", 0)
        heads_there = int(getattr(getattr(blocks[0], "attn", None), "num_heads", 0) or 0) if blocks else 0
        if method == "attention" and heads_there and not 0 <= head_number <= heads_there:
            raise ValueError(f"Head {head_number} does not exist: the model has {heads_there} heads per layer "
                             f"(use 1..{heads_there}, or 0 for their mean).")
        # (a new opacity or threshold, or a method seen before, is drawn from the map already made: _explained)
        done = predict.classify_and_explain(loaded, image, method, target if target in loaded.labels else None,
                                            layer=layer_index, head=head_number - 1 if head_number else None,
                                            accept=accept, threads=manager.web_threads(), cache=_explained)
        rgb, answer, e, t = done.image, done.answer, done.explanation, done.target
    except (predict.PredictError, explain.ExplainError, ValueError) as err:
        raise refused(str(err), duration=None)
    probs = {label: float(p) for label, p in zip(loaded.labels, answer.probs)}
    picture = explain.figure(rgb, e.heatmap, box=loaded.input_box(rgb.size), opacity=opacity)
    notes = [verdict(answer, loaded), *instead, _map_title(method, loaded, e.target, layer_index, head_number),
             *e.notes]
    where = _layer_name(layer_index, len(blocks))
    heads = [] if e.heads is None else [(explain.colour_heatmap(h, (96, 96 * h.shape[0] // h.shape[1])),
                                         f"{where}, head {i + 1}") for i, h in enumerate(e.heads)]
    chosen = loaded.labels[e.target] if t is not None else PREDICTED
    return Classified(probs=probs, overlay=picture, notes="\n\n".join(notes), heads=heads,
                      target=gr.Dropdown(choices=[PREDICTED, *loaded.labels], value=chosen))


def verdict(answer, loaded: LoadedModel) -> str:
    """Whether the image looks like the training images, in words (first among the notes)."""
    best, p = answer.top(loaded.labels, 1)[0]
    if answer.unsure is None:
        return f"*Probabilities are calibrated; {loaded.trust.note}.*"
    share = loaded.trust.stranger_than(answer.ood_score)
    score = f"(score {answer.ood_score:.3g}, threshold {answer.threshold:.3g})"
    if answer.unsure:
        return (f"**Not sure: this does not look like your training images** (closest: {best}, {p:.0%}): it is less "
                f"like them than {share:.0%} of your own validation images {score}. The model only knows its "
                "classes, and an image of none of them still gets one. The heatmap shows what it looked at.")
    return (f"Looks like your training images: more like them than {1 - share:.0%} of your own validation images "
            f"{score}. The probabilities are calibrated.")


def _acceptance(accept) -> float | None:
    """The slider's share of held-out images that pass (None: the run's own)."""
    if accept is None or accept == "":
        return None
    try:
        value = float(accept)
    except (TypeError, ValueError):
        raise ValueError(f"The 'not sure' threshold must be a number from {ACCEPT_RANGE[0]} to "
                         f"{ACCEPT_RANGE[1]}.") from None
    if not ACCEPT_RANGE[0] <= value <= ACCEPT_RANGE[1]:
        raise ValueError(f"The 'not sure' threshold must be from {ACCEPT_RANGE[0]} to {ACCEPT_RANGE[1]} "
                         f"(got {value:g}).")
    return value


def _map_title(method: str, loaded: LoadedModel, target: int, layer: int, head: int) -> str:
    """What the map shows, in words: the class only where the method depends on it, the layer and head
    that were asked for."""
    from vit import explain
    if method == "attention":
        depth = len(loaded.model.blocks)
        which = f"head {head}" if head else "the mean of its heads"
        grid = loaded.model.patch_embed.grid_size
        readers = explain.token_layout(loaded.model, tuple(g * p for g, p in zip(
            grid, loaded.model.patch_embed.patch_size))).readers
        source = ("from the classifier token" if readers else
                  "of the patch tokens, averaged: this model has no class token (its head pools the patches)")
        return (f"**Raw attention of {_layer_name(layer, depth)}** ({which}), {source}. "
                "Attention, not an explanation: it is the same whatever the class, and by the last layers every "
                "token carries information from the whole image, so it often points at background.")
    text = f"**{_METHOD_TITLES[method]}**"
    if method in CLASS_SPECIFIC:
        text += f" for class **{loaded.labels[target]}**"
    return f"{text}. {explain.METHODS[method]}"


def _layer_name(layer: int, depth: int) -> str:
    index = layer % depth if depth else layer
    return f"layer {index} (the last)" if index == depth - 1 else f"layer {index} of 0..{depth - 1}"


def classify_batch(manager: jobs.JobManager, source: str | None, paths: list[str] | None,
                   accept: float | None = None, *, owner: str | None = None):
    """Several images: a gallery captioned with each one's top class, "not sure" where it does not look like the
    training images (or what is wrong with it), and the CSV."""
    if not paths:
        raise refused("Add some images first.")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise refused("The images must be a list of uploaded files.")
    if len(paths) > MAX_BATCH:
        raise refused(f"{len(paths)} images at once is over the limit of {MAX_BATCH}; classify them in parts.")
    with ONE_BATCH_EACH.holding(owner, "Your last batch is still being classified; wait for it to finish."):
        return _classify_batch(manager, source, paths, accept, owner)


def _classify_batch(manager: jobs.JobManager, source: str | None, paths: list[str], accept: float | None,
                    owner: str | None):
    from vit import predict
    loaded = _load(manager, source, owner)
    try:
        accept = _acceptance(accept)
    except ValueError as e:
        raise refused(str(e))
    out, table = [], []
    k = min(3, len(loaded.labels))
    for path in paths:
        name = Path(path).name
        try:
            with predict.compute_share(manager.web_threads()):
                (answer,) = loaded.answers([predict.read_image(path)], accept)
            top = answer.top(loaded.labels, k)
            caption = f"{top[0][0]} {top[0][1]:.0%}"
            out.append((path, f"Not sure (closest: {caption})" if answer.unsure else caption))
            table.append([name, "", "" if answer.unsure is None else answer.unsure,
                          "" if answer.ood_score is None else round(answer.ood_score, 6),
                          *[v for label, p in top for v in (label, round(p, 4))]])
        except predict.PredictError as e:
            out.append((_placeholder(), str(e)))  # (the message names the file)
            table.append([name, str(e), "", "", *[""] * (2 * k)])
    return out, _csv(table, ["file", "problem", "unsure", "ood_score",
                             *[f"{c}{i + 1}" for i in range(k) for c in ("label", "probability")]])


# ---------------------------------------------------------------------------
# helpers


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
    for i, (_label, path) in enumerate(picked):
        try:
            img, _, _ = data.read_rgb(path, draft_side=256, max_side=1024)
        except data.DataError:
            continue
        img.thumbnail((320, 320))
        out = folder / f"{i:02d}.png"
        img.save(out)
        samples_.append([str(out)])
    return gr.Dataset(samples=samples_, label="Examples: validation images of this run (try them)")


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
