"""The child process that trains one run: `python -m vit.jobs.worker RUN_DIR`, started by the job manager.

It reads the run's job.json and its own copy of the data, trains (resuming when the run has a saved epoch),
writes its progress into the run directory, and exits with a code that says how it ended. It stops by
itself when the app that started it goes away.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from vit import env, runs
from vit.runs import RunState
from vit.data import DataError, load_dataset
from vit.train import TrainConfig, epoch_line

JOB, LOG, DATA_DIR, DISK_FULL = runs.JOB, runs.LOG, runs.DATA_DIR, runs.DISK_FULL
EXIT_DISK_FULL = runs.Exit.DISK_FULL


def _child_main(run_dir: Path) -> int:
    """Train the run in `run_dir` (resuming when it has a saved epoch) and exit with 0 completed,
    1 cancelled, 2 failed, 3 stopped because the app went away, 4 the disk is full."""
    try:
        return _train_child(run_dir)
    except Exception as e:  # (safetensors says a full disk with an error of its own)
        if not (runs.disk_full(e) or runs.disk_full(e.__cause__)):
            raise
        print(f"failed: {e}", flush=True)
        with contextlib.suppress(OSError):
            runs.update_status(run_dir, RunState.FAILED, message=DISK_FULL)
        return EXIT_DISK_FULL


def _train_child(run_dir: Path) -> int:
    if env.number("VIT_NICE") > 0:
        os.nice(env.number("VIT_NICE"))
    stop = _StopRequests(run_dir, env.number("VIT_PARENT_PID") or None)
    job = runs.read_json(run_dir / JOB)
    if not job:
        runs.update_status(run_dir, RunState.FAILED, message=f"{run_dir / JOB} is missing or unreadable.")
        return 2
    config = TrainConfig.from_dict(job["config"])
    if env.number("VIT_THREADS"):
        import torch
        torch.set_num_threads(env.number("VIT_THREADS"))
        config.threads = env.number("VIT_THREADS")
    from vit.train import TrainError, train
    try:
        dataset = load_dataset(run_dir / DATA_DIR, val_fraction=config.val_fraction, seed=config.seed)
    except DataError as e:
        runs.update_status(run_dir, RunState.FAILED, message=f"The run's copy of its data cannot be read: {e}")
        return 2
    if job.get("source"):  # the name the user knows it by, not the run's copy ("data")
        dataset.report.source = str(job["source"])
    resume = (run_dir / runs.RESUME).is_file()
    with dataset:
        try:
            result = train(dataset, None if resume else config, run_dir, on_event=_log_event,
                           should_stop=stop, resume=resume)
        except TrainError as e:
            if runs.disk_full(e.__cause__):
                raise e.__cause__
            print(f"failed: {e}", flush=True)
            return runs.Exit.FAILED
    if result.get("cancelled") and stop.reason:
        kept = kept_note(run_dir)
        runs.update_status(run_dir, RunState.INTERRUPTED, message=f"Stopped during epoch {result['epoch']}: "
                                                                  f"{stop.reason}. {kept} Resume to continue.")
        return runs.Exit.APP_GONE
    return runs.Exit.CANCELLED if result.get("cancelled") else runs.Exit.OK


class _StopRequests:
    """should_stop for a child: SIGTERM (the app shutting down) or the app process disappearing.
    A cancel from the user arrives as the run's CANCEL file, which train() checks itself."""

    def __init__(self, run_dir: Path, parent_pid: int | None):
        self.run_dir, self.reason = run_dir, None
        signal.signal(signal.SIGTERM, lambda *_: self._set("the app shut down"))
        if parent_pid:
            threading.Thread(target=self._watch_parent, args=(parent_pid,), daemon=True).start()

    def __call__(self) -> bool:
        return self.reason is not None

    def _set(self, reason: str) -> None:
        self.reason = self.reason or reason

    def _watch_parent(self, parent_pid: int) -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        self._set("the app that started it exited")
        time.sleep(60.0)  # a step that never ends: do not outlive the app by more than this
        runs.update_status(self.run_dir, RunState.INTERRUPTED, pid=None,
                           message=f"Stopped: the app that started it exited. {kept_note(self.run_dir)} "
                                   "Resume to continue.")
        os._exit(runs.Exit.APP_GONE)


def _log_event(e: dict) -> None:
    kind = e.get("type")
    if kind == "status" and e.get("message"):
        print(f"[{time.strftime('%H:%M:%S')}] {e.get('state') or ''} {e['message']}".replace("  ", " "), flush=True)
    elif kind == "epoch":
        print(f"[{time.strftime('%H:%M:%S')}] {epoch_line(e)}", flush=True)


def kept_note(run_dir: Path) -> str:
    state = runs.load_resume_state(run_dir) if (run_dir / runs.RESUME).is_file() else None
    if state is None:
        return "No epoch had finished, so there is no checkpoint yet."
    best = state.get("best", {}).get("epoch")
    saved = "Epoch 1 is saved" if state["epoch"] == 0 else f"Epochs 1-{state['epoch'] + 1} are saved"
    return saved + (f"; the best model (epoch {best}) is kept." if best else ".")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m vit.jobs.worker RUN_DIR  (started by the app's job manager)", file=sys.stderr)
        sys.exit(runs.Exit.FAILED)
    sys.exit(_child_main(Path(sys.argv[1])))
