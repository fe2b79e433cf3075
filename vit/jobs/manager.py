"""The job manager: a queue of runs, a scheduler thread that starts each in a child process (child.py), the
requests (submit, cancel, resume, delete, with each visitor's quota: quota.py), and reconciliation after a
restart."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from vit import env, runs, sessions
from vit.runs import RunState
from vit.data import Dataset, export_dataset, load_dataset
from vit.jobs.child import Child, tail
from vit.jobs.errors import JobError
from vit.jobs.quota import Quota
from vit.jobs.views import default_name, summary
from vit.jobs.worker import DATA_DIR, DISK_FULL, JOB, LOG, kept_note
from vit.safety import HostLimits, on_spaces, owner_hash, owns
from vit.train import ConfigError, TrainConfig


EXPIRY_EVERY_S = 600.0  # how often a shared app looks for runs past VIT_KEEP_DAYS
DEAD_RUNS_EVERY_S = 15.0  # how often runs marked running by another process are checked (a child of ours: at once)


def _disk_full_refused(request):
    """A request that must write (a status, a CANCEL file) answers JobError when the disk is full."""
    @functools.wraps(request)
    def wrapped(*args, **kwargs):
        try:
            return request(*args, **kwargs)
        except OSError as e:
            if not runs.disk_full(e):
                raise
            raise JobError("The disk is full (no space left on device), so this cannot be recorded now; nothing "
                           "saved was changed. Delete runs you no longer need, then try again.") from None
    return wrapped


def default_single_user() -> bool:
    """Single-user unless VIT_SINGLE_USER says otherwise or the app runs as a Hugging Face Space."""
    value = env.read("VIT_SINGLE_USER")
    if value is not None:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return not on_spaces()


def default_cpu_threads() -> int:
    """Training threads on a CPU-only machine: every core but one, which is left to the web server."""
    value = env.read("VIT_TRAIN_THREADS")
    if value:
        return max(1, int(value))
    return max(1, (os.cpu_count() or 2) - 1)


class JobManager:
    """Queue, start, watch, cancel, resume and delete training runs under `root`."""

    def __init__(self, root: str | os.PathLike | None = None, *, single_user: bool | None = None,
                 cpu_threads: int | None = None, niceness: int = 10, cancel_grace_s: float = 30.0,
                 shutdown_grace_s: float = 10.0, max_active_per_owner: int | None = None, gpus: int | None = None,
                 poll_s: float = 0.25):
        self.root = Path(root) if root else runs.default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cv = threading.Condition()
        self.single_user = default_single_user() if single_user is None else single_user
        self.cpu_threads = cpu_threads or default_cpu_threads()
        self.niceness = niceness
        self.cancel_grace_s = cancel_grace_s
        self.shutdown_grace_s = shutdown_grace_s
        limits = HostLimits.from_env()
        shared = not self.single_user  # the limits of a shared app; a person's own app has none of them
        self.quota = Quota(max_active_per_owner or limits.runs_per_visitor if shared else None, self._active_runs,
                           self._cv, total=(limits.max_active_runs or None) if shared else None,
                           active_total=lambda: len(self._queue) + len(self._children))
        self.max_run_s = limits.max_run_minutes * 60 if shared and limits.max_run_minutes else None
        self.keep_s = limits.keep_days * 86400 if shared and limits.keep_days else None
        self._index = runs.RunIndex(self.root)
        self._owners: dict[str, str | None] = {}          # run id -> its owner's hash (job.json), read once
        self._views: dict[str, tuple] = {}                # run id -> (what it was made from, its summary)
        self._last_expiry = float("-inf")
        self.poll_s = poll_s
        self._gpus = gpus
        self._lock_file = _lock_root(self.root)
        self._queue: list[str] = []                 # run ids, first come first served
        self._children: dict[str, Child] = {}       # slot -> the child training on it
        self._closing = False
        self._last_sweep = 0.0
        self._pending: dict[str, dict] = {}               # run id -> final status not yet written (disk full)
        self._logged: set[str] = set()
        self._reconcile()
        self._thread = threading.Thread(target=self._schedule_forever, name="vit-jobs", daemon=True)
        self._thread.start()

    @functools.cached_property
    def slots(self) -> list[str]:
        """Where runs train: each GPU, then the CPU. torch is asked on the first run, not when the app starts."""
        gpus = self._gpus
        if gpus is None:
            import torch
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(gpus)] + ["cpu"]

    # ------------------------------------------------------------------ requests

    def submit(self, source: Dataset | str | os.PathLike, config: TrainConfig, *, owner: str | None = None,
               source_name: str | None = None, name: str | None = None) -> str:
        """Queue a training run on `source` (a loaded Dataset or a path); return its run id at once."""
        self._check_open()
        if not isinstance(config, TrainConfig):
            raise JobError("config must be a TrainConfig")
        try:
            config = replace(config).check()  # a copy: the caller's config is not changed
        except ConfigError as e:
            raise JobError(str(e)) from None
        with self.quota.reserved(owner):
            return self._submit(source, config, owner, source_name, _run_name(name))

    def _submit(self, source: Dataset | str | os.PathLike, config: TrainConfig, owner: str | None,
                source_name: str | None, name: str | None) -> str:
        dataset = source if isinstance(source, Dataset) else load_dataset(
            source, val_fraction=config.val_fraction, seed=config.seed)
        try:
            source_name = source_name or Path(str(dataset.report.source)).name
            if not dataset.report.ok:
                raise JobError(dataset.report.refusal())
            run_dir = runs.create_run_dir(self.root, config.model)
            try:
                data_dir = export_dataset(dataset, run_dir / DATA_DIR)
                config = replace(config, data=str(data_dir))
                device = self._device_kind(config.device)
                runs.write_json(run_dir / JOB, {
                    "config": asdict(config), "owner": owner_hash(owner), "device": device,
                    "source": source_name, "classes": dataset.classes,
                    "name": name or default_name(source_name, config),
                    "images": len(dataset.items)})
                with self._cv:
                    runs.update_status(run_dir, RunState.QUEUED, message="Queued", model=config.model,
                                       epochs=config.epochs, device=device)
                    self._queue.append(run_dir.name)
                    self._update_positions()
                    self._cv.notify_all()
            except BaseException as e:
                shutil.rmtree(run_dir, ignore_errors=True)
                if runs.disk_full(e):
                    raise JobError("The disk is full (no space left on device), so the run was not started; "
                                   "nothing already saved was touched. Delete runs you no longer need and try "
                                   "again.") from None
                raise
        finally:
            if dataset is not source:
                dataset.close()
        return run_dir.name

    @_disk_full_refused
    def cancel(self, run_id: str, *, owner: str | None = None, grace_s: float | None = None) -> str:
        """Stop a run: a queued one at once; a running one at its next step, or by force after the grace
        period (the status says which). Its best checkpoint stays. Returns a message for the user."""
        run_dir = self.own_run(run_id, owner, "cancel")
        grace = self.cancel_grace_s if grace_s is None else grace_s
        with self._cv:
            state = self._state(run_dir)
            if run_id in self._queue:
                self._queue.remove(run_id)
                runs.update_status(run_dir, RunState.CANCELLED, message="Cancelled before it started.", cancel="queued")
                self._update_positions()
                return f"Run {run_id} was cancelled before it started."
            child = self._child_of(run_id)
            if child is not None and state in runs.ACTIVE_STATES:  # (a finished child may still be exiting)
                runs.request_cancel(run_dir)
                child.cancel_deadline = time.monotonic() + grace
                self._cv.notify_all()
                return (f"Cancelling run {run_id}: it stops after the current step"
                        + (f", or is stopped by force in {grace:.0f} s." if grace > 0 else "."))
            if state == RunState.RUNNING:  # trained by another process (the CLI, another app): ask it
                runs.request_cancel(run_dir)
                return f"Asked run {run_id} to stop; the process training it stops after its current step."
            raise JobError(f"Run {run_id} is {state}; only a queued or running run can be cancelled.")

    @_disk_full_refused
    def resume(self, run_id: str, *, owner: str | None = None) -> str:
        """Queue an interrupted, cancelled or failed run again; it continues from its last finished epoch."""
        self._check_open()
        run_dir = self.own_run(run_id, owner, "resume")
        with self._cv:
            if self._state(run_dir) not in runs.ACTIVE_STATES and not self._settle(run_id):
                raise JobError(f"Run {run_id} is still stopping; try again in a moment.")
            state = self._state(run_dir)  # what the stopped child left
            if state not in runs.ENDED_STATES:
                raise JobError(f"Run {run_id} is {state}; only an interrupted, cancelled or failed run can be "
                               "resumed.")
            if not (run_dir / JOB).is_file() or not (run_dir / DATA_DIR).is_dir():
                raise JobError(f"Run {run_id} was not started from this app (it has no copy of its data); resume "
                               f"it with: python -m vit train --resume --out CHECKPOINTS/{run_id} --data DATA")
            self.quota.check(owner)
            runs.clear_cancel(run_dir)
            last = runs.load_resume_state(run_dir)
            where = f"from epoch {last['epoch'] + 2}" if last else "from the start (no epoch had finished)"
            runs.update_status(run_dir, RunState.QUEUED, message=f"Queued to resume {where}", resumed_from=state,
                               cancel=None)
            self._queue.append(run_id)
            self._update_positions()
            self._cv.notify_all()
        return f"Run {run_id} is queued to resume {where}."

    @_disk_full_refused
    def delete(self, run_id: str, *, owner: str | None = None) -> str:
        """Remove a run and its files; never a queued or running one."""
        run_dir = self.own_run(run_id, owner, "delete")
        with self._cv:
            if run_id in self._queue or not self._settle(run_id):
                raise JobError(f"Run {run_id} is queued or running; cancel it before deleting it.")
            try:
                runs.delete_run(run_dir, state=self._state(run_dir))
            except ValueError as e:
                raise JobError(str(e)) from None
            self._pending.pop(run_id, None)
            self._forget(run_id)
        return f"Deleted run {run_id}."

    # ------------------------------------------------------------------ reading

    def list(self, owner: str | None = None) -> list[dict]:
        """The runs `owner` may see (every run in single-user mode; their own on a shared app), newest
        first, with state, best metric and what they may do with each."""
        with self._cv:
            queue = list(self._queue)
        hashed = owner_hash(owner)  # (once, not once a run)
        mine = None if self.single_user else (lambda run_id: hashed is not None and self._owner_of(run_id) == hashed)
        return [self._summary(info.run_dir, info.status, info.config, owner, queue) for info in self._index.runs(mine)]

    def progress(self, run_id: str, owner: str | None = None) -> dict:
        """The run's summary plus its per-epoch history: what a progress view polls."""
        run_dir = self.own_run(run_id, owner, "see")
        with self._cv:
            queue = list(self._queue)
        summary = self._summary(run_dir, runs.read_status(run_dir), runs.read_config(run_dir), owner, queue)
        summary["history"] = runs.read_metrics_log(run_dir)
        summary["cancel_requested"] = runs.cancel_requested(run_dir)
        return summary

    def log_tail(self, run_id: str, lines: int = 20) -> str:
        return tail(self._run_dir(run_id) / LOG, lines)

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Block until the run leaves queued/running (or the timeout passes); return its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        run_dir = self._run_dir(run_id)
        while True:
            state = self._state(run_dir)
            with self._cv:
                active = run_id in self._queue or self._child_of(run_id) is not None
            if not active and state not in runs.ACTIVE_STATES:
                return state
            if deadline is not None and time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def web_threads(self) -> int:
        """Threads a computation of the web process (a classification) should use now: the cores a CPU run
        leaves free. torch's thread count is per thread, so the handler sets it before computing."""
        cores = os.cpu_count() or 1
        with self._cv:
            training = self.cpu_threads if "cpu" in self._children else 0
        return max(1, cores - training)

    def child_pid(self, run_id: str) -> int | None:
        """The pid of the process training `run_id` for this manager, if any."""
        with self._cv:
            child = self._child_of(run_id)
            return child.proc.pid if child else None

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop every child (cooperatively, then by force) and leave their runs `interrupted`, resumable.
        Queued runs stay queued for the next start. Safe to call twice."""
        grace = self.shutdown_grace_s if grace_s is None else grace_s
        with self._cv:
            if self._closing:
                return
            self._closing = True
            children = list(self._children.values())
            self._cv.notify_all()
        self._thread.join()
        for child in children:
            child.shutting_down = True
            child.ask_to_stop()
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._reap(child, forced=child.proc.poll() is None)
        self._children.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "JobManager":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ the scheduler

    def _schedule_forever(self) -> None:
        while True:
            with self._cv:
                if self._closing:
                    return
                try:
                    self._tick()
                except Exception as e:  # the scheduler must outlive any one bad run directory
                    self._log_once(f"scheduler error: {type(e).__name__}: {e}")
                self._cv.wait(self.poll_s)
            if self.keep_s and time.monotonic() - self._last_expiry > EXPIRY_EVERY_S:
                self._last_expiry = time.monotonic()
                try:
                    self.expire()
                except Exception as e:
                    self._log_once(f"expiry error: {type(e).__name__}: {e}")

    def _tick(self) -> None:
        self._flush_pending()
        for slot, child in list(self._children.items()):
            if child.proc.poll() is not None:
                del self._children[slot]  # first: a reap that fails must not hold the slot
                self._reap(child)
            elif child.cancel_deadline is not None and time.monotonic() > child.cancel_deadline:
                child.forced = True
                child.kill()
            elif self.max_run_s and child.cancel_deadline is None and time.monotonic() - child.started > self.max_run_s:
                self._stop_for_time(child)
        started = False
        for run_id in list(self._queue):
            run_dir = self.root / run_id
            if not (run_dir / JOB).is_file():  # deleted behind our back
                self._queue.remove(run_id)
                continue
            device = runs.read_json(run_dir / JOB, {}).get("device", "cpu")
            slot = next((s for s in self.slots if s.split(":")[0] == device and s not in self._children), None)
            if slot is not None:
                self._queue.remove(run_id)
                started = True
                try:
                    self._children[slot] = Child.start(run_dir, slot, self.cpu_threads, self.niceness)
                except OSError as e:
                    self._children.pop(slot, None)
                    self._finish(run_dir, RunState.FAILED, message=DISK_FULL if runs.disk_full(e) else
                                 f"The training process could not start: {e}")
        if started:
            self._update_positions()
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

    def expire(self, now: float | None = None) -> list[str]:
        """On a shared app, remove visitors' runs that ended more than VIT_KEEP_DAYS ago (never a queued or running
        one, never one started outside the app) and session records as old; return the ids removed."""
        if not self.keep_s:
            return []
        now = time.time() if now is None else now
        removed = []
        for info in self._index.runs(lambda run_id: self._owner_of(run_id) is not None):
            finished = info.status.get("finished_at") or info.status.get("updated_at") or now
            if info.state in runs.ACTIVE_STATES or now - finished < self.keep_s:
                continue
            with self._cv:
                if info.id in self._queue or self._child_of(info.id) is not None:
                    continue
                try:
                    runs.delete_run(info.run_dir)
                except (ValueError, OSError) as e:
                    self._log_once(f"cannot remove the expired run {info.id} ({e})")
                    continue
                self._forget(info.id)
            removed.append(info.id)
        sessions.sweep(self.root, self.keep_s, now)
        return removed

    def _reap(self, child: Child, forced: bool = False) -> None:
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
            final = (RunState.FAILED, {"message": f"The training process ended (exit code {rc}) and its run directory "
                                           f"could not be read: {type(e).__name__}: {e}"})
        if final:
            self._finish(child.run_dir, final[0], pid=None, **final[1])

    def _finish(self, run_dir: Path, state: str | None, **fields) -> None:
        """Write a run's final state; when the disk is full keep it (listings show it) and retry each tick."""
        try:
            runs.update_status(run_dir, state, **fields)
            self._pending.pop(run_dir.name, None)
        except OSError as e:
            pending = dict(fields, **({"state": state} if state else {}))
            self._pending[run_dir.name] = {**self._pending.get(run_dir.name, {}), **pending}
            self._log_once(f"cannot record the end of run {run_dir.name} yet ({e}); will retry")

    def _flush_pending(self) -> None:
        for run_id, fields in list(self._pending.items()):
            run_dir = self.root / run_id
            if not run_dir.is_dir():
                self._pending.pop(run_id, None)
                continue
            fields = dict(fields)
            self._finish(run_dir, fields.pop("state", None), **fields)

    def _log_once(self, message: str) -> None:
        """A scheduler problem, printed once (not on every tick while it lasts)."""
        if message not in self._logged:
            self._logged.add(message)
            print(f"vit.jobs: {message}", file=sys.stderr, flush=True)

    def _reconcile(self) -> None:
        """At start-up: runs whose process is gone become interrupted; queued runs queue again."""
        queued = []
        for info in self._index.runs():
            _hash_owner(info.run_dir)
            if info.state == RunState.QUEUED and (info.run_dir / JOB).is_file():
                queued.append(info)
            elif info.state == RunState.QUEUED:
                runs.update_status(info.run_dir, RunState.FAILED, message="Queued without a job description; start it "
                                                                   "again from the app.")
        self._mark_dead_runs()
        for info in sorted(queued, key=lambda r: (r.status.get("updated_at", 0), r.id)):
            self._queue.append(info.id)
        self._update_positions()

    def _mark_dead_runs(self) -> None:
        ours = {c.run_id for c in self._children.values()}
        for info in self._index.runs():
            if (info.state == RunState.RUNNING and info.id not in ours and info.id not in self._pending
                    and not runs.writer_alive(info.status)):
                runs.remove_partial_files(info.run_dir)
                epoch = info.status.get("epoch") or 0
                self._finish(info.run_dir, RunState.INTERRUPTED, pid=None,
                             message=f"The process training this run stopped during epoch {epoch + 1} "
                                     f"(the app restarted or the process died). {kept_note(info.run_dir)} "
                                     "Resume to continue.")

    def _update_positions(self) -> None:
        """Tell each queued run where it stands: 1 is next for its device."""
        ahead: dict[str, int] = {}
        for run_id in self._queue:
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
                    self._log_once(f"cannot update the queue position of {run_id} ({e})")

    # ------------------------------------------------------------------ helpers

    def _summary(self, run_dir: Path, status: dict, config: dict, owner: str | None, queue: list[str]) -> dict:
        """The run as the app shows it, made again only when one of its files or its place in the queue changed."""
        pending = self._pending.get(run_dir.name)
        if pending:  # a final state the full disk has not let us write yet
            status = {**status, **pending}
        mine = self.single_user or owns(self._owner_of(run_dir.name), owner)
        made_from = (run_dir.name in queue, mine)
        seen = self._views.get(run_dir.name)
        if seen is not None and seen[0] == made_from and seen[2] is status and seen[3] is config:
            # status and config are the index's: the same objects until their files change, and whatever writes a
            # run's metrics, weights or job writes its status after them
            return dict(seen[1])
        job = runs.read_json(run_dir / JOB, {})
        view = summary(run_dir, status, config, job, mine, queue)
        if self.keep_s and job.get("owner") and view["finished_at"] and view["state"] not in runs.ACTIVE_STATES:
            view["expires_at"] = view["finished_at"] + self.keep_s  # (the Train tab says when it goes)
        self._views[run_dir.name] = (made_from, view, status, config)
        return dict(view)

    def _owner_of(self, run_id: str) -> str | None:
        """Who started a run (the hash in its job.json), read once: a run's owner never changes."""
        if run_id not in self._owners:
            job = runs.read_json(self.root / run_id / JOB) if runs.RUN_ID.fullmatch(run_id) else None
            if not isinstance(job, dict):  # no such run, or one not yet written: asked again next time
                return None
            owner = job.get("owner")
            if owner and not str(owner).startswith("sha256:"):
                return owner_hash(owner)  # (a run from before owners were hashed: hashed at the next start)
            self._owners[run_id] = owner
        return self._owners[run_id]

    def _forget(self, run_id: str) -> None:
        self._owners.pop(run_id, None)
        self._views.pop(run_id, None)

    def _state(self, run_dir: Path) -> str | None:
        """A run's state: the one recorded, or the final one still waiting to be written (disk full)."""
        return self._pending.get(run_dir.name, {}).get("state") or runs.read_status(run_dir).get("state")

    def _run_dir(self, run_id: str) -> Path:
        try:
            return runs.run_path(self.root, run_id)
        except ValueError as e:
            raise JobError(str(e)) from None

    def own_run(self, run_id: str, owner: str | None, action: str) -> Path:
        """The directory of a run that `owner` may act on (any run in single-user mode), else JobError."""
        if not self.single_user and not (isinstance(run_id, str) and runs.RUN_ID.fullmatch(run_id) and owns(
                self._owner_of(run_id), owner)):
            # the same answer whether the run exists or not: ids of other visitors' runs are not confirmed
            raise JobError(f"There is no run {str(run_id)[:80]} in this session. It may have been deleted, or "
                           f"started in another browser; only the session that started a run can {action} it.")
        return self._run_dir(run_id)

    def _active_runs(self, owner: str | None) -> int:
        return sum(1 for r in self.list(owner) if r["state"] in runs.ACTIVE_STATES)

    def _check_open(self) -> None:
        if self._closing:
            raise JobError("The app is shutting down; try again when it is back.")

    def _settle(self, run_id: str, timeout: float = 30.0) -> bool:
        """True when no process of ours trains `run_id`. A child that has written its final state but is
        still exiting is waited for and reaped now, so that what it leaves cannot overwrite a new request."""
        for slot, child in list(self._children.items()):
            if child.run_id != run_id:
                continue
            if runs.read_status(child.run_dir).get("state") in runs.ACTIVE_STATES:
                return False
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            self._reap(child)
            del self._children[slot]
        return True

    def _child_of(self, run_id: str) -> Child | None:
        return next((c for c in self._children.values() if c.run_id == run_id), None)

    def _device_kind(self, wanted: str) -> str:
        if wanted == "cpu" or not any(s.startswith("cuda") for s in self.slots):
            if wanted == "cuda":
                raise JobError("This machine has no GPU; choose device 'auto' or 'cpu'.")
            return "cpu"
        return "cuda"


def _run_name(name: str | None) -> str | None:
    """A run's display name as typed (it never becomes a path): one line, at most 80 characters."""
    if name is None or not str(name).strip():
        return None
    name = " ".join(str(name).split())
    if len(name) > 80 or not name.isprintable():
        raise JobError("A run name is one line of at most 80 printable characters.")
    return name


def _hash_owner(run_dir: Path) -> None:
    """Runs recorded before owners were hashed: replace the stored token by its hash."""
    job = runs.read_json(run_dir / JOB)
    if job and job.get("owner") and not str(job["owner"]).startswith("sha256:"):
        try:
            runs.write_json(run_dir / JOB, {**job, "owner": owner_hash(job["owner"])})
        except OSError:
            pass


def _lock_root(root: Path):
    """One manager per checkpoints folder: two would start the same queued run twice."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run one app per folder
        return None
    f = open(root / ".jobs.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise JobError(f"Another ViT Studio app ({holder}) is already running the training queue of {root}. "
                       "Stop it first, or give this one another checkpoints folder (VIT_CHECKPOINTS).") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f
