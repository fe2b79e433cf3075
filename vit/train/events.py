"""What a run tells the world as it goes: events to the caller, status.json for the app, a cooperative stop.

    emit = Emitter(run_dir, on_event=print, writes=True)   # rank 0 writes; the other ranks stay quiet
    emit.status(RunState.RUNNING, message="Training")
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vit import runs
from vit.runs import RunState

if TYPE_CHECKING:
    from vit.train.distributed import Distributed

Event = dict


EventHandler = Callable[[Event], None]


def epoch_line(e: dict) -> str:
    """One finished epoch (an "epoch" event) in a line, as the command line and the run's log print it."""
    return (f"epoch {e['epoch']}/{e['epochs']}  train loss {e['train_loss']:.4f} acc {e['train_acc']:.1%}  "
            f"val loss {e['val_loss']:.4f} acc {e['val_acc']:.1%}  lr {e['lr']:.2e}  "
            f"{e['images_per_s']:.0f} img/s  {e['epoch_time']:.1f}s  eta {e['eta_s']:.0f}s")


def cancelled(emit: "Emitter", epoch: int, step: int, history: list[dict], best: dict) -> dict:
    best_note = f"best checkpoint (epoch {best['epoch']}) kept" if best["epoch"] else "no checkpoint had been saved yet"
    emit.status(RunState.CANCELLED, message=f"Cancelled at epoch {epoch + 1}, step {step + 1}; {best_note}.",
                epoch=epoch, step=step)
    emit.event(type="end", cancelled=True)
    return {"cancelled": True, "epoch": epoch + 1, "step": step + 1, "best_epoch": best["epoch"], "history": history}


class StopFlag:
    """A cooperative cancel: the caller's flag or a CANCEL file, agreed on by every rank."""

    def __init__(self, run_dir: Path, should_stop, ddp: "Distributed"):
        self.run_dir, self.should_stop, self.ddp = run_dir, should_stop, ddp

    def __call__(self) -> bool:
        local = bool(self.should_stop and self.should_stop()) or runs.cancel_requested(self.run_dir)
        return self.ddp.any(local)


class Emitter:
    """Progress: events to the caller, status.json in the run directory (rank 0 only)."""

    def __init__(self, run_dir: Path, on_event: EventHandler | None, writes: bool):
        self.run_dir, self.on_event, self.writes = run_dir, on_event, writes
        self._last_step_write = 0.0

    def event(self, **e) -> None:
        if self.on_event and self.writes:
            self.on_event(e)

    def status(self, state: str | None = None, **fields) -> None:
        if self.writes:
            runs.update_status(self.run_dir, state, **fields)
        self.event(type="status", state=state, **fields)

    def step(self, **e) -> None:
        self.event(type="step", **e)
        now = time.monotonic()
        if self.writes and now - self._last_step_write > 1.0:
            self._last_step_write = now
            runs.update_status(self.run_dir, epoch=e["epoch"], step=e["step"], steps_per_epoch=e["steps"],
                               loss=e["loss"])

    def epoch(self, row: dict, epochs: int, best: dict) -> None:
        self.event(type="epoch", epochs=epochs, **row)
        if self.writes:
            measured = not no_validation(row)
            runs.update_status(self.run_dir, epoch=row["epoch"], step=0, eta_s=row["eta_s"],
                               best_val_acc=best["val_acc"] if measured else None, best_epoch=best["epoch"],
                               message=f"Epoch {row['epoch']}/{epochs}: " + (
                                   f"val acc {row['val_acc']:.1%}" if measured else NO_VALIDATION))


NO_VALIDATION = "no validation images to measure on (validation fraction 0)"


def no_validation(row: dict) -> bool:
    """Whether an epoch's row was measured on no images (its validation loss is NaN): its 0% is no accuracy."""
    loss = row.get("val_loss")
    return loss is None or loss != loss
