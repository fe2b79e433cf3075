"""Trained models for Classify and Share, loaded once (the visitor's own runs, or Hub ids) and the heatmaps made
recently, kept for a new opacity or threshold."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from vit import jobs, models
from vit.safety import HostLimits
from vit.ui.page import refused

if TYPE_CHECKING:
    from vit.predict import LoadedModel


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


def _load(manager: jobs.JobManager, source: str | None, owner: str | None = None) -> LoadedModel:
    """The model of one of the visitor's runs, or of an hf-hub: id; never a folder named by the visitor."""
    from vit import predict  # torch and timm: with the first model, not with the page
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
