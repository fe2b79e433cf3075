"""The training queue and its scheduler thread: each queued run starts in a child process (child.py) on a free
slot (a GPU, or the CPU); a child that ends is reaped and its final state recorded, even on a full disk (kept and
written later); runs past a shared app's time limit stop as a cancel does; at start-up, runs left by a dead
process become interrupted and queued runs queue again. JobManager (manager.py) makes the requests; this holds
the lock (`cv`) that every change of the queue or the children happens under."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from vit import runs
from vit.jobs.child import Child
from vit.jobs.errors import JobError
from vit.jobs.remote import detached_message
from vit.jobs.worker import kept_note
from vit.runs import JOB, RunState
from vit.safety import owner_hash

DEAD_RUNS_EVERY_S = 15.0  # how often runs marked running by another process are checked (a child of ours: at once)


class Scheduler:
    """The queue (run ids, first come first served), the children training (slot -> Child), and the final states
    a full disk has not let us write yet (run id -> fields)."""

    def __init__(self, root: Path, index: runs.RunIndex, *, cpu_threads: int, niceness: int, cancel_grace_s: float,
                 max_run_s: float | None, gpus: int | None, poll_s: float,
                 every: tuple[tuple[float, Callable[[], object]], ...] = ()):
        self.root, self.index, self.cv = root, index, threading.Condition()
        self.cpu_threads, self.niceness, self.cancel_grace_s = cpu_threads, niceness, cancel_grace_s
        self.max_run_s, self.poll_s, self._gpus = max_run_s, poll_s, gpus
        self.queue: list[str] = []
        self.children: dict[str, Child] = {}
        self.pending: dict[str, dict] = {}
        self.closing = False
        self._every = [[period, job, float("-inf")] for period, job in every]  # (expiry: at once, then every 10 min)
        self._last_sweep = 0.0
        self._logged: set[str] = set()
        self.reconcile()
        self._thread = threading.Thread(target=self._forever, name="vit-jobs", daemon=True)
        self._thread.start()

    @functools.cached_property
    def slots(self) -> list[str]:
        """Where runs train: each GPU, then the CPU. torch is asked on the first run, not when the app starts."""
        gpus = self._gpus
        if gpus is None:
            import torch
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(gpus)] + ["cpu"]

    def enqueue(self, run_id: str) -> None:
        """Queue a run (the caller holds `cv` and has written its queued status)."""
        self.queue.append(run_id)
        self.update_positions()
        self.cv.notify_all()

    def state(self, run_dir: Path) -> str | None:
        """A run's state: the one recorded, or the final one still waiting to be written (disk full)."""
        return self.pending.get(run_dir.name, {}).get("state") or runs.read_status(run_dir).get("state")

    def child_of(self, run_id: str) -> Child | None:
        return next((c for c in self.children.values() if c.run_id == run_id), None)

    def busy(self, run_id: str) -> bool:
        """Queued here, or trained by a child of ours."""
        return run_id in self.queue or self.child_of(run_id) is not None

    def device_kind(self, wanted: str) -> str:
        if wanted == "cpu" or not any(s.startswith("cuda") for s in self.slots):
            if wanted == "cuda":
                raise JobError("This machine has no GPU; choose device 'auto' or 'cpu'.")
            return "cpu"
        return "cuda"

    def settle(self, run_id: str, timeout: float = 30.0) -> bool:
        """True when no process of ours trains `run_id`. A child that has written its final state but is
        still exiting is waited for and reaped now, so that what it leaves cannot overwrite a new request."""
        for slot, child in list(self.children.items()):
            if child.run_id != run_id:
                continue
            if runs.read_status(child.run_dir).get("state") in runs.ACTIVE_STATES:
                return False
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            self.reap(child)
            del self.children[slot]
        return True

    def close(self, grace_s: float) -> None:
        """Stop the thread, then every child (cooperatively, then by force): their runs become interrupted."""
        with self.cv:
            if self.closing:
                return
            self.closing = True
            children = list(self.children.values())
            self.cv.notify_all()
        self._thread.join()
        for child in children:
            child.shutting_down = True
            child.ask_to_stop()
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.reap(child, forced=child.proc.poll() is None)
        self.children.clear()

    def web_threads(self) -> int:
        """Threads a computation of the web process should use now: the cores a CPU run leaves free."""
        with self.cv:
            training = self.cpu_threads if "cpu" in self.children else 0
        return max(1, (os.cpu_count() or 1) - training)

    # ------------------------------------------------------------------ the thread

    def _forever(self) -> None:
        while True:
            with self.cv:
                if self.closing:
                    return
                try:
                    self.tick()
                except Exception as e:  # the scheduler must outlive any one bad run directory
                    self.log_once(f"scheduler error: {type(e).__name__}: {e}")
                self.cv.wait(self.poll_s)
            for task in self._every:
                if time.monotonic() - task[2] > task[0]:
                    task[2] = time.monotonic()
                    try:
                        task[1]()
                    except Exception as e:
                        self.log_once(f"{getattr(task[1], '__name__', 'task')} error: {type(e).__name__}: {e}")

    def tick(self) -> None:
        self._flush_pending()
        for slot, child in list(self.children.items()):
            if child.proc.poll() is not None:
                del self.children[slot]  # first: a reap that fails must not hold the slot
                self.reap(child)
            elif child.cancel_deadline is not None and time.monotonic() > child.cancel_deadline:
                child.forced = True
                child.kill()
            elif self.max_run_s and child.cancel_deadline is None and time.monotonic() - child.started > self.max_run_s:
                self._stop_for_time(child)
        started = False
        for run_id in list(self.queue):
            run_dir = self.root / run_id
            if not (run_dir / JOB).is_file():  # deleted behind our back
                self.queue.remove(run_id)
                continue
            device = runs.read_json(run_dir / JOB, {}).get("device", "cpu")
            slot = next((s for s in self.slots if s.split(":")[0] == device and s not in self.children), None)
            if slot is not None:
                self.queue.remove(run_id)
                started = True
                try:
                    self.children[slot] = Child.start(run_dir, slot, self.cpu_threads, self.niceness)
                except OSError as e:
                    self.children.pop(slot, None)
                    self.finish(run_dir, RunState.FAILED, message=runs.DISK_FULL if runs.disk_full(e) else
                                f"The training process could not start: {e}")
        if started:
            self.update_positions()
        if time.monotonic() - self._last_sweep > DEAD_RUNS_EVERY_S:
            self._last_sweep = time.monotonic()
            self._mark_dead_runs()

    def _stop_for_time(self, child: Child) -> None:
        """A run past the time limit of a shared app stops as a cancel does (its best checkpoint kept, resumable)."""
        minutes = self.max_run_s / 60
        child.time_up = (f"Stopped after {minutes:g} minutes of training: the time limit of one run on this shared app "
                         "(VIT_MAX_RUN_MINUTES), so that every visitor gets a turn.")
        try:
            runs.request_cancel(child.run_dir)
        except OSError:
            pass
        child.cancel_deadline = time.monotonic() + self.cancel_grace_s

    def reap(self, child: Child, forced: bool = False) -> None:
        """Record how a child ended when it could not say so itself, and kill what it left behind.
        Never raises: a state that cannot be written (disk full) is kept and written later."""
        forced = forced or child.forced
        if forced:
            child.kill()
        rc = child.proc.wait()
        child.kill()  # data loader workers of a child that died
        try:
            runs.remove_partial_files(child.run_dir)
            if child.cancel_deadline is not None:
                runs.clear_cancel(child.run_dir)
        except OSError:
            pass
        if not child.run_dir.is_dir():
            return
        try:
            final = child.ending(rc, forced)
        except Exception as e:  # an unreadable run directory: say so rather than stop the scheduler
            final = (RunState.FAILED, {"message": f"The training process ended (exit code {rc}) and its run "
                                                  f"directory could not be read: {type(e).__name__}: {e}"})
        if final:
            self.finish(child.run_dir, final[0], pid=None, **final[1])

    def finish(self, run_dir: Path, state: str | None, **fields) -> None:
        """Write a run's final state; when the disk is full keep it (listings show it) and retry each tick."""
        try:
            runs.update_status(run_dir, state, **fields)
            self.pending.pop(run_dir.name, None)
        except OSError as e:
            pending = dict(fields, **({"state": state} if state else {}))
            self.pending[run_dir.name] = {**self.pending.get(run_dir.name, {}), **pending}
            self.log_once(f"cannot record the end of run {run_dir.name} yet ({e}); will retry")

    def _flush_pending(self) -> None:
        for run_id, fields in list(self.pending.items()):
            run_dir = self.root / run_id
            if not run_dir.is_dir():
                self.pending.pop(run_id, None)
                continue
            fields = dict(fields)
            self.finish(run_dir, fields.pop("state", None), **fields)

    def log_once(self, message: str) -> None:
        """A scheduler problem, printed once (not on every tick while it lasts)."""
        if message not in self._logged:
            self._logged.add(message)
            print(f"vit.jobs: {message}", file=sys.stderr, flush=True)

    def reconcile(self) -> None:
        """At start-up: runs whose process is gone become interrupted; queued runs queue again."""
        queued = []
        for info in self.index.runs():
            _hash_owner(info.run_dir)
            if info.state == RunState.QUEUED and (info.run_dir / JOB).is_file():
                queued.append(info)
            elif info.state == RunState.QUEUED:
                runs.update_status(info.run_dir, RunState.FAILED,
                                   message="Queued without a job description; start it again from the app.")
        self._mark_dead_runs()
        for info in sorted(queued, key=lambda r: (r.status.get("updated_at", 0), r.id)):
            self.queue.append(info.id)
        self.update_positions()

    def _mark_dead_runs(self) -> None:
        ours = {c.run_id for c in self.children.values()}
        for info in self.index.runs():
            if (info.state == RunState.RUNNING and info.id not in ours and info.id not in self.pending
                    and not runs.writer_alive(info.status)):
                runs.remove_partial_files(info.run_dir)
                epoch = info.status.get("epoch") or 0
                self.finish(info.run_dir, RunState.INTERRUPTED, pid=None,
                            message=detached_message(info.run_dir) or
                            f"The process training this run stopped during epoch {epoch + 1} "
                            f"(the app restarted or the process died). {kept_note(info.run_dir)} Resume to continue.")

    def update_positions(self) -> None:
        """Tell each queued run where it stands: 1 is next for its device."""
        ahead: dict[str, int] = {}
        for run_id in self.queue:
            run_dir = self.root / run_id
            device = runs.read_json(run_dir / JOB, {}).get("device", "cpu")
            position = ahead[device] = ahead.get(device, 0) + 1
            status = runs.read_status(run_dir)
            message = ("Queued: next in line" if position == 1 else
                       f"Queued: {position - 1} run{'s' if position > 2 else ''} ahead") + (
                " (to resume)" if status.get("resumed_from") else "")
            if status.get("position") != position or status.get("message") != message:
                try:
                    runs.update_status(run_dir, position=position, message=message)
                except OSError as e:  # disk full: the queue itself is in memory and carries on
                    self.log_once(f"cannot update the queue position of {run_id} ({e})")


def _hash_owner(run_dir: Path) -> None:
    """Runs recorded before owners were hashed: replace the stored token by its hash."""
    job = runs.read_json(run_dir / JOB)
    if job and job.get("owner") and not str(job["owner"]).startswith("sha256:"):
        try:
            runs.write_json(run_dir / JOB, {**job, "owner": owner_hash(job["owner"])})
        except OSError:
            pass
