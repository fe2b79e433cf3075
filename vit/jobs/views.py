"""Runs as the app shows them: one summary per run (the view model), how a run starts in a few words, its
default name."""
from __future__ import annotations

import time
from pathlib import Path

from vit import runs
from vit.runs import RunState
from vit.jobs.worker import JOB
from vit.models import built_text
from vit.train import TrainConfig


def summary(run_dir: Path, status: dict, config: dict, job: dict, mine: bool, queue: list[str]) -> dict:
    """One run as the app shows it: name, state, model and how it starts, progress, accuracy, and what the
    visitor may do with it (`mine`: their own run, or single-user mode)."""
    metrics = runs.read_json(run_dir / runs.METRICS, {})
    state = status.get("state", "unknown")
    best = status.get("best_val_acc")
    if best is None and metrics:
        best = (metrics.get("selection") or {}).get("val_acc", metrics.get("val_acc"))
    built = (config.get(runs.CONFIG_KEY) or {}).get("built")
    return {
        "id": run_dir.name, "state": state, "message": status.get("message", ""),
        "model": status.get("model") or job.get("config", {}).get("model") or config.get("architecture"),
        "arch": built_text(built) if built else status.get("arch"),  # the model as built, and its weights
        "estimate": metrics.get("accuracy_estimate"),  # the accuracy on images that chose nothing
        "selection": metrics.get("selection"),  # the best of N epochs on validation, chosen on those images
        "imbalance": metrics.get("imbalance"),  # the largest training class over the smallest
        "calibration": metrics.get("calibration"), "ood": metrics.get("ood"),  # (vit.trust)
        "source": job.get("source"), "created_at": status.get("created_at"),
        "data_sha256": job.get("data_sha256"),  # the content hash of its data (vit.data.report.content_hash)
        "name": job.get("name") or run_dir.name, "recipe": start_summary(job.get("config") or {}),
        "kind": runs.kind_of(job.get("config") or {}) if job.get("config") else None,
        "settings": job.get("config") or {},  # the TrainConfig it was started with
        "finished_at": status.get("finished_at"), "epoch": status.get("epoch"),
        "epochs": status.get("epochs") or job.get("config", {}).get("epochs"),
        "step": status.get("step"), "steps_per_epoch": status.get("steps_per_epoch"),
        "eta_s": status.get("eta_s") if state == RunState.RUNNING else None,
        "best_val_acc": best if best is None or best >= 0 else None, "best_epoch": status.get("best_epoch"),
        "position": status.get("position") if run_dir.name in queue else None,
        "device": status.get("device") or job.get("device"), "has_model": (run_dir / runs.WEIGHTS).is_file(),
        "job_url": status.get("job_url"),  # a run on a Hugging Face GPU: its job's page
        "mine": mine, "can_cancel": mine and state in runs.ACTIVE_STATES,
        "can_delete": mine and state not in runs.ACTIVE_STATES,
        "can_resume": mine and state in runs.ENDED_STATES and (run_dir / JOB).is_file(),
    }


def start_summary(config: dict) -> str:
    """How a run starts, in a few words: 'pretrained', 'from a run, quick model', 'from scratch, 64 px'."""
    if not config:
        return ""
    kind = runs.kind_of(config)
    if kind is runs.RunKind.SCRATCH:
        return "from scratch" + (f", {config['img_size']} px" if config.get("img_size") else "")
    start = "from a run" if config.get("weights") else "pretrained"
    return start + (", quick model" if kind is runs.RunKind.QUICK else ", LP-FT" if config.get("lp_ft") else "")


def default_name(source: str, config: TrainConfig) -> str:
    """dataset · model · time, e.g. 'pets.zip · vit_tiny_patch16_224 · 14:05' ('ViT from scratch' for a model with
    random weights: its shape is the recipe's, not the named model's; 'from your run' for one started from a
    run)."""
    model = config.model.split("/")[-1].split(".")[0][:40]
    if config.weights:
        model = "from your run"  # (its architecture, not the model named in the form)
    elif not config.pretrained:
        model = "ViT from scratch"
    return f"{source[:40]} · {model} · {time.strftime('%H:%M')}"
