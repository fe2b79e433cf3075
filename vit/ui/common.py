"""The app's constants: its title and intro, the catalog as choices, the Train form's fields, caps on what a
page shows, launch options."""
from __future__ import annotations

import gradio as gr

from vit.models import CATALOG, TEACHERS
from vit.safety import HostLimits
from vit.train.config import in_form


TITLE = "ViT Studio"


INTRO = ("Fine-tune a Vision Transformer on your own images, see what it looks at, and share it. "
         "Start with your data: a .zip with one folder per class (cat/001.jpg, dog/001.jpg, ...).")


THEME = gr.themes.Soft()


CSS = ""


MODEL_CHOICES = [(f"{m.title} - {m.params_m:g}M params, {m.device}", m.name) for m in (*CATALOG, *TEACHERS)]


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
HERE, HF_GPU = "this machine", "a Hugging Face GPU"  # where a run trains (the Train tab's "Train on")
WHERE = ("train_on", "flavor", "hf_token")  # the Train tab's fields beside the settings: where, on what, the token
NO_TEACHER = "none"  # the Teacher picker's first choice; the others are the visitor's finished runs, "run:<id>"


MAX_SUSPECTS = 24  # likely label errors shown for a run


MAX_PAIRS = 12     # near-duplicate pairs shown


FORM = ("model", "scratch", *in_form("main"), "teacher", *in_form("advanced"))  # the Train form's fields: its API names


def launch_options() -> dict:
    """launch() settings that keep a shared app bounded: the upload cap (Gradio refuses larger files,
    naming the cap) and the theme."""
    return {"theme": THEME, "css": CSS, "max_file_size": f"{HostLimits.from_env().max_upload_mb}mb"}
