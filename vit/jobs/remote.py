"""Runs trained on a Hugging Face GPU (Jobs, billed per minute to the visitor's account), followed by the app like
its own runs: the run directory here is the record, kept up to date from the job's log.

    hf = HfJobs(token)                                       # vit.jobs.hf: the token checked, in memory only
    follower = Follower(run_dir, hf, flavor="t4-small")      # a thread: upload, start, follow, fetch the model
    follower.start(); follower.cancel()

job.json's "remote" record says where it runs: the flavor, the namespace, the job's id and the two private repos
(the run's data, its model). The follower uploads the run's own copy of its checked data (once), starts the job
(`python -m vit.jobs.remote_worker`), reads the job's stage and log every few seconds (the worker's JSON lines:
status and epochs, so the curves and the ETA are live), cancels the job when asked, and when the job ends fetches
what it pushed into the run directory: Classify, Compare and Share then work as for a run trained here. A follower
that stops (the app shuts down, the token expires, the Hub cannot be reached for a while) leaves the run
interrupted, saying that the job may go on; Resume with a token follows it again, or starts a new job from the last
pushed checkpoint.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vit import env, figures, runs
from vit.jobs.errors import JobError
from vit.jobs.hf import TERMINAL, Flavor, HfJobs, JobSpec, TokenRejected, code_folder, job_image, job_url
from vit.jobs.remote_worker import EVENT, PUSHED
from vit.runs import JOB, LOG, RunState

REMOTE = "remote"      # job.json's record of a run trained on Hugging Face
FETCHED = [name for name in PUSHED if name not in (runs.RESUME, runs.STATUS)]  # (the checkpoint stays in the repo;
                                                                                 # the status here is the app's)
MAX_MISSES = 12        # polls in a row that cannot reach the Hub before the follower gives up (the run: interrupted)
KEPT = ("message", "epoch", "epochs", "step", "steps_per_epoch", "eta_s", "best_val_acc", "best_epoch", "arch",
        "loss")        # the job's status fields the run here shows


def poll_s() -> float:
    return float(env.read("VIT_JOB_POLL_S") or 5.0)


def record(run_dir: Path) -> dict | None:
    """The run's remote record (None: it trains here)."""
    return (runs.read_json(run_dir / JOB, {}) or {}).get(REMOTE)


def repo_names(namespace: str, run_id: str) -> tuple[str, str]:
    """The private dataset and model repos of a run."""
    return f"{namespace}/vit-studio-data-{run_id}", f"{namespace}/vit-studio-{run_id}"


@dataclass(frozen=True)
class Estimate:
    """What a run on a flavor is expected to take and cost, and the job's time limit."""
    train_s: float
    setup_s: float
    usd: float
    timeout_s: int
    basis: str

    def text(self, flavor: Flavor) -> str:
        total = self.train_s + self.setup_s
        return (f"on {flavor.title} about {_minutes(total)} (training {_minutes(self.train_s)}, starting and "
                f"pushing {_minutes(self.setup_s)}), about ${self.usd:.2f} at ${flavor.usd_per_hour:.2f}/hour; it "
                f"stops at {_minutes(self.timeout_s)} whatever happens. {self.basis}")


def estimate(config, images: int, val_images: int, classes: int, flavor: Flavor) -> Estimate:
    """The time and cost of training `config` on `images` (and measuring `val_images` each epoch) on `flavor`: the
    model's FLOPs (counted on the meta device) at a share of the GPU's peak (figures.JOB_GPU_USE), plus the setup."""
    from vit.models import ModelSpec, forward_flops
    spec = ModelSpec(config.model, pretrained=False, img_size=config.img_size, patch_size=config.patch_size,
                     model_args=config.model_args)
    flops = forward_flops(spec, max(classes, 2))
    tflops = flavor.tflops or min(f.tflops for f in _fallback())
    per_s = tflops * 1e12 * figures.JOB_GPU_USE
    train_s = config.epochs * (images * 3 * flops + val_images * flops) / per_s
    setup = figures.JOB_SETUP_S
    timeout = int(setup + figures.JOB_TIMEOUT_FACTOR * train_s + figures.JOB_TIMEOUT_MARGIN_S)
    usd = (setup + train_s) / 3600 * flavor.usd_per_hour
    basis = (f"Estimated from the model's {flops / 1e9:.2f} GFLOPs per image at {figures.JOB_GPU_USE:.0%} of the "
             f"GPU's peak{'' if flavor.tflops else ' (this GPU is not in our table: a T4 is assumed)'}, not measured.")
    return Estimate(train_s, setup, usd, timeout, basis)


class Follower(threading.Thread):
    """One remote run, followed from this app: upload (once), start a job (unless one is to be followed again),
    follow its stage and log, cancel it when asked, fetch its files when it ends, and write the run's final state."""

    def __init__(self, run_dir: Path, hf: HfJobs, *, new_job: bool = True, on_end=None):
        super().__init__(name=f"vit-remote-{run_dir.name}", daemon=True)
        self.run_dir, self.hf, self.new_job, self.on_end = run_dir, hf, new_job, on_end
        rec = record(run_dir) or {}
        self.flavor, self.timeout_s = rec.get("flavor"), rec.get("timeout_s") or 3600
        self._cancel_asked, self._unfollow = threading.Event(), threading.Event()
        self._seen, self._rows, self._misses, self._cancel_sent = 0, {}, 0, False

    def cancel(self) -> None:
        self._cancel_asked.set()

    def stop(self) -> None:
        """Stop following (the app shuts down): the job goes on; the run becomes interrupted."""
        self._unfollow.set()

    def run(self) -> None:
        try:
            self._follow()
        except JobError as e:
            self._end(RunState.INTERRUPTED if self._job_id() else RunState.FAILED, str(e) + self._after())
        except Exception as e:  # (the follower must say what happened to the run, whatever it was)
            self._end(RunState.FAILED, f"Following the job failed: {type(e).__name__}: {e}{self._after()}")
        finally:
            if self.on_end:
                self.on_end(self.run_dir.name)

    # ------------------------------------------------------------------ the steps

    def _follow(self) -> None:
        runs.update_status(self.run_dir, RunState.RUNNING, **runs.process_identity(), device=f"hf:{self.flavor}")
        rec = record(self.run_dir)
        self._rows = {r["epoch"]: r for r in runs.read_metrics_log(self.run_dir) if "epoch" in r}
        if self.new_job:
            if not rec.get("uploaded"):
                self._upload(rec)
            if self._cancel_asked.is_set():
                return self._end(RunState.CANCELLED, "Cancelled before the job started: nothing was billed.")
            if self._unfollow.is_set():
                return self._end(RunState.INTERRUPTED, "The app shut down before the job started (nothing was "
                                                       "billed). Resume (signed in) to start it.")
            self._start(rec)
        while not self._unfollow.is_set():
            stage, said = self._poll()
            if stage in TERMINAL:
                return self._finish(stage, said)
            if self._cancel_asked.is_set() and not self._cancel_sent:
                self.hf.cancel(self._job_id(), rec["namespace"])
                self._cancel_sent = True
                runs.update_status(self.run_dir, message="Cancelling the job on Hugging Face...")
            self._unfollow.wait(poll_s())
        self._end(RunState.INTERRUPTED, "The app shut down while this run trained on Hugging Face." + self._after())

    def _upload(self, rec: dict) -> None:
        data = self.run_dir / runs.DATA_DIR
        images = sum(1 for p in data.rglob("*") if p.is_file()) - 1
        runs.update_status(self.run_dir, message=f"Uploading {images} images to the private dataset repo "
                                                 f"{rec['data_repo']}")
        job = runs.read_json(self.run_dir / JOB)
        settings = {k: job[k] for k in ("config", "classes", "source", "name")}  # (not the owner)
        with tempfile.TemporaryDirectory(prefix="vit-upload-") as tmp:
            code = None if job_image()[1][0] == "python" else code_folder(Path(tmp))
            self.hf.upload_data(rec["data_repo"], data, settings, code)
        self._update(uploaded=True)

    def _start(self, rec: dict) -> None:
        self.hf.create_model_repo(rec["model_repo"])
        resume = bool(rec.get("jobs"))  # a job before this one may have pushed a checkpoint
        spec = JobSpec(flavor=self.flavor, data_repo=rec["data_repo"], model_repo=rec["model_repo"],
                       timeout_s=self.timeout_s, name=f"vit-studio-{self.run_dir.name}"[:80], resume=resume,
                       labels={"app": "vit-studio"})
        info = self.hf.start(spec)
        url = job_url(self.hf.endpoint, rec["namespace"], info.id)
        self._update(job_id=info.id, job_url=url, jobs=[*rec.get("jobs", []), info.id])
        self._seen = 0
        runs.update_status(self.run_dir, message=f"Waiting for a {self.flavor} machine (job {info.id}: {url})",
                           job_url=url)
        with open(self.run_dir / LOG, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {info.id} on {self.flavor}: {url}\n")

    def _poll(self) -> tuple[str | None, str | None]:
        """The job's stage (None: the Hub did not answer this time); its new log lines applied to the run."""
        rec = record(self.run_dir)
        try:
            stage, said = self.hf.stage(rec["job_id"], rec["namespace"])
            lines = self.hf.log(rec["job_id"], rec["namespace"])
        except TokenRejected:
            raise
        except JobError:
            self._misses += 1
            if self._misses >= MAX_MISSES:
                raise
            return None, None
        self._misses = 0
        self._apply(lines[self._seen:])
        self._seen = max(self._seen, len(lines))
        if stage == "SCHEDULING":
            runs.update_status(self.run_dir, message=f"Waiting for a {self.flavor} machine (job {rec['job_id']})")
        return stage, said

    def _apply(self, lines: list[str]) -> None:
        """The worker's events: its status (the fields KEPT), each finished epoch's row (the curves)."""
        status, rows_changed = {}, False
        for line in lines:
            if not line.startswith(EVENT):
                continue
            try:
                event = json.loads(line[len(EVENT):])
            except ValueError:
                continue
            status.update({k: v for k, v in (event.get("status") or {}).items() if k in KEPT})
            row = event.get("row")
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                self._rows[row["epoch"]] = row
                rows_changed = True
        if lines:
            with open(self.run_dir / LOG, "a") as log:
                log.writelines(line + "\n" for line in lines)
        if status:  # (before the rows: a page that sees an epoch's row sees the status that came with it, its ETA)
            runs.update_status(self.run_dir, **status)
        if rows_changed:
            runs.write_metrics_log(self.run_dir, [self._rows[k] for k in sorted(self._rows)])

    def _finish(self, stage: str, said: str | None) -> None:
        """The job has ended: what it pushed, fetched; the run's final state, in words."""
        rec, done = record(self.run_dir), runs.read_status(self.run_dir).get("message") or ""
        runs.update_status(self.run_dir, message=f"The job has ended ({stage.lower()}): fetching what it pushed")
        try:
            fetched = self.hf.download(rec["model_repo"], self.run_dir, FETCHED)
        except JobError as e:
            fetched, why = [], str(e)
        else:
            why = ""
        rows = runs.read_metrics_log(self.run_dir)
        if rows:  # the job's own log of epochs, fetched with the model, is the complete one
            self._rows = {r["epoch"]: r for r in rows if "epoch" in r}
        model = runs.WEIGHTS in fetched
        where = f" ({rec['model_repo']}, private)"
        if stage == "COMPLETED" and model:
            done = done if not done or done.endswith(".") else f"{done}."
            return self._end(RunState.COMPLETED, f"{done} Trained on Hugging Face {self.flavor}; the model is "
                                                 f"here and in {rec['model_repo']} (private).")
        if stage == "COMPLETED":
            return self._end(RunState.FAILED, f"The job completed but no model could be fetched from "
                                              f"{rec['model_repo']}. {why}".strip())
        if stage == "CANCELED":
            kept = ("The best model so far is here and the last checkpoint is kept in the model repo" + where
                    if model else "No epoch had been pushed")
            return self._end(RunState.CANCELLED, f"Cancelled: the job was stopped on Hugging Face. {kept}; Resume "
                                                 "starts a new job from there.")
        last = [ln for ln in self._log_tail() if not ln.startswith(EVENT) and not ln.startswith("===")]
        tail = "\n".join(last[-5:]) or "(no output)"
        return self._end(RunState.FAILED, f"The job {'was deleted' if stage == 'DELETED' else 'failed'} on Hugging "
                                          f"Face ({said or stage}). The last lines of its log:\n{tail}")

    # ------------------------------------------------------------------ helpers

    def _log_tail(self) -> list[str]:
        from vit.jobs.child import tail
        return tail(self.run_dir / LOG, 40).splitlines()

    def _end(self, state: str, message: str) -> None:
        runs.update_status(self.run_dir, state, message=message.strip(), pid=None, eta_s=None)

    def _job_id(self) -> str | None:
        return (record(self.run_dir) or {}).get("job_id")

    def _after(self) -> str:
        """What becomes of a job the app no longer follows, and what to do."""
        rec = record(self.run_dir) or {}
        if not rec.get("job_id"):
            return (f" Your data is in {rec['data_repo']} (private): Resume starts the job without uploading it "
                    "again." if rec.get("uploaded") else "")
        return (f" The job {rec['job_id']} may still be running on Hugging Face ({rec.get('job_url')}): it pushes "
                f"its model to {rec['model_repo']} (private) and is billed until it ends or reaches its time limit. "
                "Resume (signed in) to follow it again, or cancel it on that page.")

    def _update(self, **fields) -> None:
        job = runs.read_json(self.run_dir / JOB)
        job[REMOTE] = {**job[REMOTE], **fields}
        runs.write_json(self.run_dir / JOB, job)


def detached_message(run_dir: Path) -> str | None:
    """For a remote run whose follower is gone (the app restarted): what its status says (None: it trains here)."""
    rec = record(run_dir)
    if not rec:
        return None
    if not rec.get("job_id"):
        return "The app restarted before the job started (nothing was billed). Resume (signed in) to start it."
    return (f"The app restarted while this run trained on Hugging Face. The job {rec['job_id']} may still be running "
            f"there ({rec.get('job_url')}): it pushes its model to {rec['model_repo']} (private) and is billed until "
            "it ends or reaches its time limit. Resume (signed in) to follow it again, or cancel it on that page.")


def _fallback() -> tuple[Flavor, ...]:
    from vit.jobs.hf import FALLBACK
    return FALLBACK


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


@dataclass
class Remote:
    """Where a run is to train: a Hugging Face GPU flavor, with the visitor's token (kept in memory only)."""
    flavor: str
    token: str = field(repr=False)
    endpoint: str | None = None
    chosen: Flavor | None = field(default=None, repr=False)  # the flavor as the Hub lists it (connect)

    def connect(self) -> HfJobs:
        """The visitor's session with the Hub, checked: the token may write repos and start jobs, and the flavor is
        one the Hub lists (JobError otherwise, before anything is created or uploaded)."""
        from vit.jobs.hf import flavors
        hf = HfJobs(self.token, self.endpoint)
        hf.check_jobs_allowed()
        listed, source = flavors(self.token, hf.endpoint)
        names = [f.name for f in listed]
        if self.flavor not in names:
            raise JobError(f"{str(self.flavor)[:40]!r} is not a GPU machine that jobs run on ({source}): pick one "
                           f"of {', '.join(names)}.")
        self.chosen = next(f for f in listed if f.name == self.flavor)
        return hf


def prepare(run_dir: Path, hf: HfJobs, remote: Remote, config, dataset) -> dict:
    """job.json's remote record for a new run: the flavor, the namespace, the repos, the job's time limit (from the
    estimate, with a margin) and the estimate itself."""
    data_repo, model_repo = repo_names(hf.namespace, run_dir.name)
    guess = estimate(config, len(dataset.train), len(dataset.val), len(dataset.classes), remote.chosen)
    return {"backend": "hf-jobs", "flavor": remote.flavor, "namespace": hf.namespace, "data_repo": data_repo,
            "model_repo": model_repo, "timeout_s": guess.timeout_s, "estimate_s": round(guess.train_s + guess.setup_s),
            "estimate_usd": round(guess.usd, 2), "endpoint": hf.endpoint, "jobs": [], "uploaded": False}


def refusal(config) -> str | None:
    """Why a config cannot train on Hugging Face (None: it can): a quick model, or a file of this machine."""
    if config.quick:
        return "A quick model takes seconds here: train it on this machine, not on a Hugging Face GPU."
    if config.teacher:
        return ("A teacher cannot be sent to a job yet: train with a teacher on this machine, or without one on "
                "Hugging Face.")
    if config.weights:
        return ("Starting from one of your runs cannot be sent to a job yet: start from pretrained weights on Hugging "
                "Face, or train on this machine.")
    return None
