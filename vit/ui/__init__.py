"""Gradio wiring: tabs, components and events. No ML logic lives here; every handler calls into the vit
package and turns its errors into clear toasts. Nothing below the UI imports gradio.

Each tab module has layout() (its components), wire() (their events) and the handlers they call:
- app.py           build_app: the tabs composed, and the events between them
- data_tab.py      upload, classes one by one, the sample data, a returning visitor's dataset
- train_tab.py     the form and what will run, starting runs and quick models, the runs and the live view,
                   comparison, cancel / resume / delete
- results.py       the selected run's results: per class, mistakes, what the features say, the label review
- classify_tab.py  one image with its heatmap, a batch, the examples
- share_tab.py     the model card, push, ONNX, the run as a zip
- page.py          Page (what the events share), handlers bound to it and their typed, named inputs and outputs,
                   refusals as toasts, one request per visitor in a lane
- common.py        the app's constants (title, catalog choices, the Train form's fields, caps on what is shown)
- dataset_view.py  the Data tab's view of a checked dataset (Shown) and the expectations it sets
- runs_view.py     runs in words: pickers, the model and accuracy, a run's images, what its features say
- loading.py       trained models loaded once for Classify and Share, recent heatmaps
- files.py         files served and received: CSV made safe, downloads and their cleanup
"""
from vit.models import DEFAULT_MODEL
from vit.ui.app import build_app
from vit.ui.classify_tab import classify_batch, classify_image, run_examples
from vit.ui.common import (CLASS_SPECIFIC, CSS, INTRO, launch_options, MAX_BATCH, MAX_CLASSES, MAX_MISTAKES,
                           MAX_PAIRS, MAX_SUSPECTS, MISTAKES_LABEL, MODEL_CHOICES, NO_DATA, PREDICTED, RUN_COLUMNS,
                           RUN_START, SAMPLE_MAX, SAMPLE_PER_CLASS, FORM, HERE, HF_GPU, THEME, TITLE, WHERE)
from vit.ui.files import csv_rows, DOWNLOADS
from vit.ui.page import refused
from vit.ui.data_tab import (CLASS_SLOTS, check_classes, check_dataset, check_hub_dataset, data_features,
                             restore_session, sample_dataset)
from vit.ui.share_tab import download_run, export_run, preview_card, push_to_hub
from vit.ui.results import review_choices, review_image, run_features, run_results
from vit.ui.train_tab import (best_run, COMPARE_COLUMNS, compare_runs, CONFIRM_DELETE, curves_shown, describe_config,
                              list_runs, planned_config, resume_run, run_action, run_plan, show_run,
                              start_training)

__all__ = ["CLASS_SLOTS", "CLASS_SPECIFIC", "FORM", "HERE", "HF_GPU", "WHERE",
           "COMPARE_COLUMNS", "CONFIRM_DELETE", "CSS", "DEFAULT_MODEL", "DOWNLOADS",
           "INTRO", "MAX_BATCH", "MAX_CLASSES", "MAX_MISTAKES", "MAX_PAIRS", "MAX_SUSPECTS", "MISTAKES_LABEL",
           "MODEL_CHOICES", "NO_DATA", "PREDICTED", "RUN_COLUMNS", "RUN_START", "SAMPLE_MAX", "SAMPLE_PER_CLASS",
           "THEME", "TITLE", "best_run", "build_app", "check_classes", "check_dataset", "check_hub_dataset",
           "classify_batch", "classify_image", "compare_runs", "csv_rows", "curves_shown", "data_features",
           "describe_config", "download_run", "export_run", "launch_options", "list_runs", "planned_config",
           "preview_card", "push_to_hub", "refused", "restore_session", "review_choices", "review_image", "resume_run",
           "run_action", "run_examples", "run_features", "run_plan", "run_results", "sample_dataset", "show_run",
           "start_training"]
