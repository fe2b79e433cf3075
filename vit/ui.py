"""Gradio wiring: tabs, components and events. No ML logic lives here; every
handler calls into the vit package and turns its errors into clear toasts."""
from __future__ import annotations

import tempfile

import gradio as gr
import pandas as pd

from vit import data, samples

TITLE = "ViT Studio"
INTRO = ("Fine-tune a Vision Transformer on your own images, see what it looks at, and share it. "
         "Start with your data: a .zip with one folder per class (cat/001.jpg, dog/001.jpg, ...).")
THEME = gr.themes.Soft()
CSS = ""


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Data"):
            with gr.Row():
                upload = gr.File(label="Dataset (.zip of class folders)", file_types=[".zip"], type="filepath")
                with gr.Column():
                    sample_count = gr.Slider(10, 200, value=40, step=10, label="Images per class (sample data)")
                    sample_btn = gr.Button("Use the sample dataset (generated shapes)")
            report = gr.Markdown("Upload a dataset or use the sample data to see its health report.")
            counts = gr.BarPlot(x="class", y="images", color="split", title="Images per class")
            grid = gr.Gallery(label="Sample images per class", columns=6, height="auto")
        outputs = [report, counts, grid]
        upload.upload(check_dataset, upload, outputs, api_name="check_dataset")
        sample_btn.click(sample_dataset, sample_count, outputs, api_name="sample_dataset")
    return app


def check_dataset(path: str | None):
    """Validate an uploaded zip and show its health report, class counts and sample images."""
    if not path:
        raise gr.Error("No file received. Upload a .zip with one folder per class.")
    try:
        with data.load_dataset(path) as ds:
            return _show(ds)
    except data.DataError as e:
        raise gr.Error(str(e), duration=None)


def sample_dataset(per_class: float = 40):
    """Generate the built-in shapes dataset and show its report."""
    with tempfile.TemporaryDirectory(prefix="vit-sample-") as tmp:
        folder = samples.make_shapes_dataset(tmp, int(per_class), fmt="jpg")
        with data.load_dataset(folder) as ds:
            return _show(ds)


def _show(ds: data.Dataset):
    r = ds.report
    rows = [{"class": c, "split": split, "images": n}
            for split, per in r.split_counts.items() for c, n in per.items()]
    df = pd.DataFrame(rows, columns=["class", "split", "images"])
    return r.to_markdown(), df, data.thumbnails(ds)
