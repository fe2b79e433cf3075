"""Who may see which run, and the runs as the app shows them: each run's owner (the hash in its job.json, read
once), the visitor's own runs (every run in single-user mode), summaries made again only when a file of the run
or its place in the queue changed, and the expiry of ended runs on a shared app."""
from __future__ import annotations

import time
from pathlib import Path

from vit import runs, sessions
from vit.jobs.errors import JobError
from vit.jobs.scheduler import Scheduler
from vit.jobs.views import summary
from vit.runs import JOB
from vit.safety import owner_hash, owns


class Listing:
    def __init__(self, root: Path, index: runs.RunIndex, scheduler: Scheduler, single_user: bool,
                 keep_s: float | None):
        self.root, self.index, self.scheduler = root, index, scheduler
        self.single_user, self.keep_s = single_user, keep_s
        self._owners: dict[str, str | None] = {}   # run id -> its owner's hash (job.json), read once
        self._views: dict[str, tuple] = {}         # run id -> (what it was made from, its summary, status, config)

    def runs(self, owner: str | None) -> list[dict]:
        """The runs `owner` may see, newest first (JobManager.list)."""
        queue, pending = self._scheduled()
        hashed = owner_hash(owner)  # (once, not once a run)
        mine = None if self.single_user else (lambda run_id: hashed is not None and self.owner_of(run_id) == hashed)
        return [self.summary(info.run_dir, info.status, info.config, hashed, queue, pending)
                for info in self.index.runs(mine)]

    def one(self, run_dir: Path, owner: str | None) -> dict:
        """One run's summary (JobManager.summary)."""
        queue, pending = self._scheduled()
        return self.summary(run_dir, runs.read_status(run_dir), runs.read_config(run_dir), owner_hash(owner), queue,
                            pending)

    def progress(self, run_dir: Path, owner: str | None) -> dict:
        """The run's summary plus its per-epoch history (JobManager.progress)."""
        view = self.one(run_dir, owner)
        view["history"] = runs.read_metrics_log(run_dir)
        view["cancel_requested"] = runs.cancel_requested(run_dir)
        return view

    def _scheduled(self) -> tuple[list[str], dict]:
        """The queue and the final states not yet written, as they are now."""
        with self.scheduler.cv:
            return list(self.scheduler.queue), dict(self.scheduler.pending)

    def summary(self, run_dir: Path, status: dict, config: dict, hashed: str | None, queue: list[str],
                pending: dict) -> dict:
        """The run as the app shows it to the visitor whose token hashes to `hashed` (hashed once per listing),
        made again only when one of its files or its place in the queue changed."""
        if pending.get(run_dir.name):  # a final state the full disk has not let us write yet
            status = {**status, **pending[run_dir.name]}
        mine = self.single_user or hashed is not None and self.owner_of(run_dir.name) == hashed
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

    def owner_of(self, run_id: str) -> str | None:
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

    def forget(self, run_id: str) -> None:
        self._owners.pop(run_id, None)
        self._views.pop(run_id, None)

    def run_dir(self, run_id: str) -> Path:
        try:
            return runs.run_path(self.root, run_id)
        except ValueError as e:
            raise JobError(str(e)) from None

    def own_run(self, run_id: str, owner: str | None, action: str) -> Path:
        """The directory of a run that `owner` may act on (any run in single-user mode), else JobError."""
        if not self.single_user and not (isinstance(run_id, str) and runs.RUN_ID.fullmatch(run_id) and owns(
                self.owner_of(run_id), owner)):
            # the same answer whether the run exists or not: ids of other visitors' runs are not confirmed
            raise JobError(f"There is no run {str(run_id)[:80]} in this session. It may have been deleted, or "
                           f"started in another browser; only the session that started a run can {action} it.")
        return self.run_dir(run_id)

    def expire(self, now: float | None = None) -> list[str]:
        """On a shared app, remove visitors' runs that ended more than VIT_KEEP_DAYS ago (never a queued or running
        one, never one started outside the app) and session records as old; return the ids removed."""
        if not self.keep_s:
            return []
        now = time.time() if now is None else now
        removed = []
        for info in self.index.runs(lambda run_id: self.owner_of(run_id) is not None):
            finished = info.status.get("finished_at") or info.status.get("updated_at") or now
            if info.state in runs.ACTIVE_STATES or now - finished < self.keep_s:
                continue
            with self.scheduler.cv:
                if self.scheduler.busy(info.id):
                    continue
                try:
                    runs.delete_run(info.run_dir)
                except (ValueError, OSError) as e:
                    self.scheduler.log_once(f"cannot remove the expired run {info.id} ({e})")
                    continue
                self.forget(info.id)
            removed.append(info.id)
        sessions.sweep(self.root, self.keep_s, now)
        return removed
