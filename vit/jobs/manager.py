"""The job manager: the requests (submit, cancel, resume, delete; list and progress), each checked against the
visitor's ownership (listing.py) and quota (quota.py), on a queue whose scheduler thread starts each run in a
child process (scheduler.py, child.py). It is the one object the UI asks about runs."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from vit import runs
from vit.data import Dataset, export_dataset, load_dataset
from vit.jobs.child import tail
from vit.jobs.errors import JobError
from vit.jobs.host import default_cpu_threads, default_single_user, disk_full_refused, lock_root, run_name
from vit.jobs.listing import Listing
from vit.jobs import remote as remote_runs
from vit.jobs.quota import Quota
from vit.jobs.scheduler import Scheduler
from vit.jobs.views import default_name
from vit.runs import DATA_DIR, JOB, LOG, RunState
from vit.safety import HostLimits, owner_hash
from vit.train import ConfigError, TrainConfig

EXPIRY_EVERY_S = 600.0  # how often a shared app looks for runs past VIT_KEEP_DAYS


class JobManager:
    """Queue, start, watch, cancel, resume and delete training runs under `root`."""

    def __init__(self, root: str | os.PathLike | None = None, *, single_user: bool | None = None,
                 cpu_threads: int | None = None, niceness: int = 10, cancel_grace_s: float = 30.0,
                 shutdown_grace_s: float = 10.0, max_active_per_owner: int | None = None, gpus: int | None = None,
                 poll_s: float = 0.25):
        self.root = Path(root) if root else runs.default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.single_user = default_single_user() if single_user is None else single_user
        self.cpu_threads, self.niceness = cpu_threads or default_cpu_threads(), niceness
        self.cancel_grace_s, self.shutdown_grace_s = cancel_grace_s, shutdown_grace_s
        limits, shared = HostLimits.from_env(), not self.single_user  # a person's own app has none of the limits
        self.quota = Quota(max_active_per_owner or limits.runs_per_visitor if shared else None,
                           total=(limits.max_active_runs or None) if shared else None)
        self.keep_s = limits.keep_days * 86400 if shared and limits.keep_days else None
        self._lock_file = lock_root(self.root)
        index = runs.RunIndex(self.root)
        self.scheduler = Scheduler(self.root, index, cpu_threads=self.cpu_threads, niceness=niceness,
                                   cancel_grace_s=cancel_grace_s, gpus=gpus, poll_s=poll_s,
                                   max_run_s=limits.max_run_minutes * 60 if shared and limits.max_run_minutes else None,
                                   every=((EXPIRY_EVERY_S, self.expire),) if self.keep_s else ())
        self._cv = self.scheduler.cv
        self.followers: dict[str, remote_runs.Follower] = {}  # runs training on Hugging Face, followed from here
        self.listing = Listing(self.root, index, self.scheduler, self.single_user, self.keep_s)

    # ------------------------------------------------------------------ requests

    def submit(self, source: Dataset | str | os.PathLike, config: TrainConfig, *, owner: str | None = None,
               source_name: str | None = None, name: str | None = None,
               remote: remote_runs.Remote | None = None) -> str:
        """Queue a training run on `source` (a loaded Dataset or a path); return its run id at once. `remote`: train
        it on a Hugging Face GPU instead (vit.jobs.remote), with the visitor's token, checked before anything is
        made."""
        self._check_open()
        if not isinstance(config, TrainConfig):
            raise JobError("config must be a TrainConfig")
        try:
            config = replace(config).check()  # a copy: the caller's config is not changed
        except ConfigError as e:
            raise JobError(str(e)) from None
        hf = self._connect(remote, config) if remote is not None else None
        with self._reserved(owner):
            return self._submit(source, config, owner, source_name, run_name(name), remote, hf)

    def _submit(self, source: Dataset | str | os.PathLike, config: TrainConfig, owner: str | None,
                source_name: str | None, name: str | None, remote=None, hf=None) -> str:
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
                device = f"hf:{remote.flavor}" if remote else self.scheduler.device_kind(config.device)
                job = {"config": asdict(config), "owner": owner_hash(owner), "device": device,
                       "source": source_name, "classes": dataset.classes,
                       "name": name or default_name(source_name, config), "images": len(dataset.items),
                       "data_sha256": dataset.report.content_sha256}
                if remote is not None:
                    try:
                        job[remote_runs.REMOTE] = remote_runs.prepare(run_dir, hf, remote, config, dataset)
                    except Exception as e:  # (the model is built on the meta device for the estimate)
                        raise JobError(f"The model cannot be built, so no job was started: {e}") from None
                runs.write_json(run_dir / JOB, job)
                if remote is not None:
                    runs.update_status(run_dir, RunState.RUNNING, message="Preparing the job", model=config.model,
                                       epochs=config.epochs, device=device)
                    self._follow(run_dir, hf, new_job=True)
                    return run_dir.name
                with self._cv:
                    runs.update_status(run_dir, RunState.QUEUED, message="Queued", model=config.model,
                                       epochs=config.epochs, device=device)
                    self.scheduler.enqueue(run_dir.name)
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

    @disk_full_refused
    def cancel(self, run_id: str, *, owner: str | None = None, grace_s: float | None = None) -> str:
        """Stop a run: a queued one at once; a running one at its next step, or by force after the grace
        period (the status says which). Its best checkpoint stays. Returns a message for the user."""
        run_dir = self.own_run(run_id, owner, "cancel")
        grace = self.cancel_grace_s if grace_s is None else grace_s
        follower = self.followers.get(run_id)
        if follower is not None and follower.is_alive():
            follower.cancel()
            return (f"Cancelling run {run_id} on Hugging Face: the job stops within a minute; the best model it "
                    "pushed is kept, and Resume starts a new job from its last checkpoint.")
        with self._cv:
            state = self.scheduler.state(run_dir)
            if run_id in self.scheduler.queue:
                self.scheduler.queue.remove(run_id)
                runs.update_status(run_dir, RunState.CANCELLED, message="Cancelled before it started.",
                                   cancel="queued")
                self.scheduler.update_positions()
                return f"Run {run_id} was cancelled before it started."
            child = self.scheduler.child_of(run_id)
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

    @disk_full_refused
    def resume(self, run_id: str, *, owner: str | None = None, token: str | None = None) -> str:
        """Queue an interrupted, cancelled or failed run again; it continues from its last finished epoch. A run on
        Hugging Face needs the visitor's `token`: its job is followed again if it still runs, else a new one starts
        from the last pushed checkpoint."""
        self._check_open()
        run_dir = self.own_run(run_id, owner, "resume")
        if remote_runs.record(run_dir):
            return self._resume_remote(run_dir, owner, token)
        with self._cv:
            if self.scheduler.state(run_dir) not in runs.ACTIVE_STATES and not self.scheduler.settle(run_id):
                raise JobError(f"Run {run_id} is still stopping; try again in a moment.")
            state = self.scheduler.state(run_dir)  # what the stopped child left
            if state not in runs.ENDED_STATES:
                raise JobError(f"Run {run_id} is {state}; only an interrupted, cancelled or failed run can be "
                               "resumed.")
            if not (run_dir / JOB).is_file() or not (run_dir / DATA_DIR).is_dir():
                raise JobError(f"Run {run_id} was not started from this app (it has no copy of its data); resume "
                               f"it with: python -m vit train --resume --out CHECKPOINTS/{run_id} --data DATA")
            self.quota.check(owner, *self._counts(owner))
            runs.clear_cancel(run_dir)
            last = runs.load_resume_state(run_dir)
            where = f"from epoch {last['epoch'] + 2}" if last else "from the start (no epoch had finished)"
            runs.update_status(run_dir, RunState.QUEUED, message=f"Queued to resume {where}", resumed_from=state,
                               cancel=None)
            self.scheduler.enqueue(run_id)
        return f"Run {run_id} is queued to resume {where}."

    @disk_full_refused
    def delete(self, run_id: str, *, owner: str | None = None) -> str:
        """Remove a run and its files; never a queued or running one."""
        run_dir = self.own_run(run_id, owner, "delete")
        rec = remote_runs.record(run_dir)
        with self._cv:
            if run_id in self.scheduler.queue or not self.scheduler.settle(run_id) or (
                    run_id in self.followers and self.followers[run_id].is_alive()):
                raise JobError(f"Run {run_id} is queued or running; cancel it before deleting it.")
            try:
                runs.delete_run(run_dir, state=self.scheduler.state(run_dir))
            except ValueError as e:
                raise JobError(str(e)) from None
            self.scheduler.pending.pop(run_id, None)
            self.listing.forget(run_id)
        if rec:
            return (f"Deleted run {run_id} here. Its repos on the Hub ({rec['data_repo']}, {rec['model_repo']}) are "
                    "yours and stay: delete them there if you no longer need them.")
        return f"Deleted run {run_id}."

    def expire(self, now: float | None = None) -> list[str]:
        """On a shared app, remove visitors' runs ended more than VIT_KEEP_DAYS ago (listing.Listing.expire)."""
        return self.listing.expire(now)

    # ------------------------------------------------------------------ reading

    def list(self, owner: str | None = None) -> list[dict]:
        """The runs `owner` may see (every run in single-user mode; their own on a shared app), newest
        first, with state, best metric and what they may do with each."""
        return self.listing.runs(owner)

    def summary(self, run_id: str, owner: str | None = None) -> dict:
        """One run as `list` shows it (its name, state, kind, settings, ...), without its history."""
        return self.listing.one(self.own_run(run_id, owner, "see"), owner)

    def progress(self, run_id: str, owner: str | None = None) -> dict:
        """The run's summary plus its per-epoch history: what a progress view polls."""
        return self.listing.progress(self.own_run(run_id, owner, "see"), owner)

    def own_run(self, run_id: str, owner: str | None, action: str) -> Path:
        """The directory of a run that `owner` may act on (any run in single-user mode), else JobError."""
        return self.listing.own_run(run_id, owner, action)

    def log_tail(self, run_id: str, lines: int = 20) -> str:
        return tail(self.listing.run_dir(run_id) / LOG, lines)

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Block until the run leaves queued/running (or the timeout passes); return its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        run_dir = self.listing.run_dir(run_id)
        while True:
            state = self.scheduler.state(run_dir)
            with self._cv:
                active = self.scheduler.busy(run_id)
            if not active and state not in runs.ACTIVE_STATES:
                return state
            if deadline is not None and time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def web_threads(self) -> int:
        """Threads a computation of the web process (a classification) should use now: the cores a CPU run
        leaves free. torch's thread count is per thread, so the handler sets it before computing."""
        return self.scheduler.web_threads()

    def child_pid(self, run_id: str) -> int | None:
        """The pid of the process training `run_id` for this manager, if any."""
        with self._cv:
            child = self.scheduler.child_of(run_id)
            return child.proc.pid if child else None

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop every child (cooperatively, then by force) and leave their runs `interrupted`, resumable.
        Queued runs stay queued for the next start. Runs on Hugging Face are no longer followed (their jobs go on).
        Safe to call twice."""
        for follower in list(self.followers.values()):
            follower.stop()
        for follower in list(self.followers.values()):
            follower.join(timeout=10)
        self.scheduler.close(self.shutdown_grace_s if grace_s is None else grace_s)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "JobManager":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ runs on Hugging Face

    def _connect(self, remote: remote_runs.Remote, config: TrainConfig):
        """The visitor's checked session with the Hub for a run on `remote` (JobError says what is wrong)."""
        why = remote_runs.refusal(config)
        if why:
            raise JobError(why)
        return remote.connect()

    def _follow(self, run_dir: Path, hf, new_job: bool) -> None:
        follower = remote_runs.Follower(run_dir, hf, new_job=new_job,
                                        on_end=lambda run_id: self.followers.pop(run_id, None))
        self.followers[run_dir.name] = follower
        follower.start()

    def _resume_remote(self, run_dir: Path, owner: str | None, token: str | None) -> str:
        """A run on Hugging Face again: its job followed if it still runs (or has finished: its model fetched), else
        a new job from the last checkpoint pushed, on the same flavor."""
        run_id, rec = run_dir.name, remote_runs.record(run_dir)
        if run_id in self.followers and self.followers[run_id].is_alive():
            raise JobError(f"Run {run_id} is being followed already.")
        state = runs.read_status(run_dir).get("state")
        if state not in runs.ENDED_STATES:
            raise JobError(f"Run {run_id} is {state}; only an interrupted, cancelled or failed run can be resumed.")
        remote = remote_runs.Remote(rec["flavor"], token or "", rec.get("endpoint"))
        hf = remote.connect()
        stage = hf.stage(rec["job_id"], rec["namespace"])[0] if rec.get("job_id") else None
        with self._cv:
            self.quota.check(owner, *self._counts(owner))
        again = stage in ("SCHEDULING", "RUNNING", "COMPLETED")
        runs.update_status(run_dir, RunState.RUNNING, resumed_from=state,
                           message="Following the job again" if again else "Starting a new job")
        self._follow(run_dir, hf, new_job=not again)
        if again:
            return f"Run {run_id}: following its job {rec['job_id']} on Hugging Face again ({stage.lower()})."
        return f"Run {run_id}: a new job starts on Hugging Face {rec['flavor']}, from its last pushed checkpoint."

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _reserved(self, owner: str | None):
        """One of the owner's places held while a submission copies its data (JobError when there is none)."""
        with self._cv:
            self.quota.reserve(owner, *self._counts(owner))
        try:
            yield
        finally:
            with self._cv:
                self.quota.release(owner)

    def _counts(self, owner: str | None) -> tuple[int, int]:
        """The runs queued or running: the owner's, and all visitors' (the caller holds the lock)."""
        if self.quota.limit is None:
            return 0, 0
        mine = sum(1 for r in self.list(owner) if r["state"] in runs.ACTIVE_STATES)
        return mine, len(self.scheduler.queue) + len(self.scheduler.children)

    def _check_open(self) -> None:
        if self.scheduler.closing:
            raise JobError("The app is shutting down; try again when it is back.")
