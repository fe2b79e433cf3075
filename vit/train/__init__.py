"""Training: what a run is asked (config), what is chosen for it (recipe), and the engine that runs it.

    from vit.train import TrainConfig, train
    metrics = train(dataset, TrainConfig(epochs=10), run_dir, on_event=print)

- config.py       TrainConfig, its ranges and messages
- recipe.py       the one place that chooses what the user left open (fine-tuning, from scratch, LP-FT)
- engine.py       train(): setup, train_one_epoch, evaluate, checkpoints, final metrics
- prepare.py      what every run starts from: device, seed, the model as asked, the images decoded once
- quick.py        the quick model and the LP-FT head (frozen features, a fitted head)
- probe.py        the linear probe itself (logistic regression by L-BFGS, cross-validation)
- transforms.py   the images as the model sees them; progressive sizes
- metrics.py      the final report (confusion, per class, misclassified)
- events.py       progress events, status.json, the cooperative stop
- distributed.py  torchrun / DDP
"""
from vit.train import recipe
from vit.train.config import ConfigError, TrainConfig, TrainError, zero_means_off
from vit.train.events import Event, EventHandler, epoch_line

_WITH_TORCH = {"train": "vit.train.engine", "progressive_sizes": "vit.train.transforms"}


def __getattr__(name: str):
    """The engine (torch, timm) is imported on first use: a config, the recipe and the events need neither, and
    the web page starts without them (bench/app_bench.py)."""
    if name in _WITH_TORCH:
        import importlib
        return getattr(importlib.import_module(_WITH_TORCH[name]), name)
    raise AttributeError(f"module 'vit.train' has no attribute {name!r}")


__all__ = ["ConfigError", "Event", "EventHandler", "TrainConfig", "TrainError", "epoch_line", "progressive_sizes",
           "recipe", "train", "zero_means_off"]
