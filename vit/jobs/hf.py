"""Training on Hugging Face Jobs, the Hub's side: the GPU hardware and its prices, a visitor's token checked for
jobs, the run's data put in a private dataset repo, the job started, its stage and log read, the job cancelled,
and the files it pushed to its private model repo fetched.

    hf = HfJobs(token)                       # checked: a token that can write repos and start jobs
    job = hf.start(spec)                     # the data is already up (hf.upload_data)
    hf.stage(job.id, hf.namespace)           # ("RUNNING", None)

The token is used for these calls, and goes into the job as a secret (HF_TOKEN, for its downloads and pushes).
It is never stored, logged or put in a message: every error is rewritten without it (JobError).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vit import env, figures
from vit.jobs.errors import JobError
from vit.models import hub_call_failure
from vit.safety import TOKENS_URL, scrub, token_problem

JOBS_URL = "https://huggingface.co/settings/jobs"
BILLING_URL = "https://huggingface.co/settings/billing"
IMAGE_ENV = "VIT_JOB_IMAGE"          # the image a job runs in, where it is not the Space's own
SPACE_APP_DIR = "/home/user/app"     # where a Gradio Space's image holds the app (and so the package)
PINNED_IMAGE = "python:3.11-slim"    # elsewhere: a stock Python that installs the project's pinned requirements
WORKER = "vit.jobs.remote_worker"
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


class TokenRejected(JobError):
    """The Hub rejected the token (invalid, revoked, or a sign-in that expired)."""


@dataclass(frozen=True)
class Flavor:
    """One GPU machine a job can run on, with its price."""
    name: str
    title: str
    usd_per_hour: float
    tflops: float | None  # peak dense fp16/bf16: the basis of the time estimate (None: unknown GPU)

    @property
    def label(self) -> str:
        return f"{self.title}: ${self.usd_per_hour:.2f}/hour"


FALLBACK = tuple(Flavor(*row) for row in figures.JOB_FLAVORS)
FALLBACK_NOTE = "list prices of 2026 (the Hub's current list could not be read)"


def flavors(token: str | None = None, endpoint: str | None = None) -> tuple[list[Flavor], str]:
    """The single-GPU machines jobs run on, cheapest first, and where their prices come from: the Hub's list, or
    the fallback (FALLBACK_NOTE) when it cannot be read. A run trains on one GPU, so larger machines are left out."""
    from huggingface_hub import HfApi
    peak = {f.name: f.tflops for f in FALLBACK}
    try:
        listed = HfApi(endpoint=endpoint).list_jobs_hardware(token=token or False)
    except Exception:
        return list(FALLBACK), FALLBACK_NOTE
    found = [Flavor(h.name, h.pretty_name, _per_hour(h.unit_cost_usd, h.unit_label), peak.get(h.name))
             for h in listed if h.accelerator is not None and getattr(h.accelerator, "quantity", 1) == 1]
    if not found:
        return list(FALLBACK), FALLBACK_NOTE
    return sorted(found, key=lambda f: f.usd_per_hour), "the Hub's prices"


def job_image() -> tuple[str, list[str]]:
    """The image a training job runs in and the command that starts the worker there: the Space's own image on a
    Space (the app and its packages are in it), else VIT_JOB_IMAGE if set (an image with the project installed),
    else a stock Python image that installs the project from the copy uploaded with the data (slower to start)."""
    space = env.read("SPACE_ID")
    if space:
        return f"hf.co/spaces/{space}", ["python", "-m", WORKER]
    if env.read(IMAGE_ENV):
        return env.read(IMAGE_ENV), ["python", "-m", WORKER]
    return PINNED_IMAGE, ["bash", "-c", INSTALL_THEN_RUN]


# the stock image: fetch the project's code (uploaded with the data, under code/), install its pinned requirements,
# run the worker. $VIT_DATA_REPO is the job's own environment, not the app's.
INSTALL_THEN_RUN = ("set -e; here=\"${TMPDIR:-/tmp}/vit\"; pip install -q 'huggingface_hub==2.4.0'; "
                    "hf download \"$VIT_DATA_REPO\" --repo-type dataset --include 'code/*' --local-dir \"$here\"; "
                    "pip install -q -r \"$here/code/requirements.txt\"; cd \"$here/code\"; "
                    f"exec python -m {WORKER}")


@dataclass
class JobSpec:
    """What a training job is asked to do."""
    flavor: str
    data_repo: str
    model_repo: str
    timeout_s: int
    name: str
    resume: bool = False
    labels: dict = field(default_factory=dict)


class HfJobs:
    """One visitor's calls to the Hub for a training job, with their token (checked, never kept beyond this
    object, which lives in memory only)."""

    def __init__(self, token: str | None, endpoint: str | None = None):
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()  # (a job's transfers are said in the run's status, not as bars in a log)
        if not token or not str(token).strip():
            raise JobError("Training on a Hugging Face GPU needs your token: sign in with Hugging Face (on a Space), "
                           f"or paste a token that can write repos and start jobs ({TOKENS_URL}); on the command "
                           "line, set HF_TOKEN or run `hf auth login`.")
        self._token = str(token).strip()
        if token_problem(self._token):
            raise JobError(token_problem(self._token))
        self.api = HfApi(endpoint=endpoint, token=self._token)
        self.endpoint = self.api.endpoint
        with self.errors("check the token"):
            who = self.api.whoami()
        self.namespace = who.get("name")
        role = (who.get("auth", {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise JobError("This token can only read; a job needs one that can write repos (for the data and the "
                           f"model) and start jobs. Create one at {TOKENS_URL}.")

    def __repr__(self) -> str:  # (never the token)
        return f"HfJobs({self.namespace!r})"

    def check_jobs_allowed(self) -> None:
        """JobError unless the token may start jobs in its namespace (the `jobs` scope of a Space's sign-in, or a
        token's "Start and manage Jobs" permission)."""
        with self.errors("list your jobs"):
            next(iter(self.api.list_jobs(namespace=self.namespace)), None)

    def upload_data(self, repo_id: str, data: Path, settings: dict, code: Path | None = None) -> None:
        """The run's checked data (its folder as the run trains on it: the images and labels.csv) under data/ and its
        settings as job.json, into the private dataset repo `repo_id`; the project's code under code/ when the
        job's image installs it."""
        import json
        with self.errors(f"upload the data to {repo_id}"):
            self.api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
            self.api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(data), path_in_repo="data",
                                   commit_message="The checked dataset of a ViT Studio run")
            self.api.upload_file(path_or_fileobj=json.dumps(settings, indent=1).encode(), path_in_repo="job.json",
                                 repo_id=repo_id, repo_type="dataset", commit_message="Its training settings")
            if code is not None:
                self.api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(code),
                                       path_in_repo="code", commit_message="The code that trains it")

    def create_model_repo(self, repo_id: str) -> None:
        with self.errors(f"create the model repo {repo_id}"):
            self.api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)

    def start(self, spec: JobSpec):
        """Start the job (JobInfo). The token goes in as the job's secret HF_TOKEN; the Hub it talks to, as ours."""
        image, command = job_image()
        environment = {"VIT_DATA_REPO": spec.data_repo, "VIT_MODEL_REPO": spec.model_repo,
                       "VIT_RESUME": "1" if spec.resume else "0", "PYTHONUNBUFFERED": "1",
                       "PYTHONPATH": SPACE_APP_DIR}
        if self.endpoint.rstrip("/") != "https://huggingface.co":
            environment["HF_ENDPOINT"] = self.endpoint
        with self.errors(f"start a job on {spec.flavor}"):
            return self.api.run_job(image=image, command=command, env=environment, secrets={"HF_TOKEN": self._token},
                                    flavor=spec.flavor, timeout=spec.timeout_s, name=spec.name,
                                    labels=spec.labels or None, namespace=self.namespace)

    def stage(self, job_id: str, namespace: str) -> tuple[str, str | None]:
        with self.errors("read the job's stage"):
            info = self.api.inspect_job(job_id=job_id, namespace=namespace)
        stage = info.status.stage
        return str(getattr(stage, "value", stage)), info.status.message

    def log(self, job_id: str, namespace: str) -> list[str]:
        """The job's log so far (its lines, oldest first)."""
        with self.errors("read the job's log"):
            return list(self.api.fetch_job_logs(job_id=job_id, namespace=namespace, follow=False))

    def cancel(self, job_id: str, namespace: str) -> None:
        with self.errors("cancel the job"):
            self.api.cancel_job(job_id=job_id, namespace=namespace)

    def download(self, repo_id: str, dest: Path, patterns: list[str]) -> list[str]:
        """The files of the model repo `repo_id` that match `patterns`, each moved into `dest` whole once all are
        here (a reader of `dest` never sees half a file); the names fetched."""
        import shutil
        import tempfile
        from huggingface_hub import snapshot_download
        with tempfile.TemporaryDirectory(prefix=".save-fetch-", dir=dest) as tmp, \
                self.errors(f"download the model from {repo_id}"):
            snapshot_download(repo_id, repo_type="model", allow_patterns=patterns, local_dir=tmp, token=self._token,
                              endpoint=self.endpoint)
            shutil.rmtree(Path(tmp) / ".cache", ignore_errors=True)
            fetched = sorted(p.name for p in Path(tmp).iterdir() if p.is_file())
            for name in fetched:
                os.replace(Path(tmp) / name, dest / name)
        return fetched

    def errors(self, doing: str) -> "_JobErrors":
        return _JobErrors(self._token, doing)


def job_url(endpoint: str, namespace: str, job_id: str) -> str:
    return f"{endpoint.rstrip('/')}/jobs/{namespace}/{job_id}"


def code_folder(dest: Path) -> Path:
    """A copy of the project's code and pinned requirements, in `dest`, for a stock image to install (job_image)."""
    import shutil
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "vit", dest / "vit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("requirements.txt", "pyproject.toml"):
        if (root / name).is_file():
            shutil.copyfile(root / name, dest / name)
    return dest


def _per_hour(cost: float, unit: str) -> float:
    return round(cost * {"second": 3600, "minute": 60, "hour": 1}.get(str(unit).lower(), 60), 4)


class _JobErrors:
    """Turn huggingface_hub and network errors into JobError messages that say what to do, without the token."""

    def __init__(self, token: str, doing: str):
        self.token, self.doing = token, doing

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, JobError):
            error.args = (scrub(str(error), self.token),)
        failure = None if error is None or isinstance(error, JobError) else hub_call_failure(error)
        if failure is None:
            return False
        said = {
            401: ("The Hugging Face Hub rejected the token: it is invalid, revoked or expired (a sign-in lasts a few "
                  f"hours). Sign in again, or create a new token at {TOKENS_URL}."),
            402: (f"Hugging Face refused to {self.doing}: the account has no credit for paid hardware (HTTP 402). Add "
                  f"a payment method or credit at {BILLING_URL}, or train on this machine."),
            403: (f"The token may not {self.doing}. A job needs a token that can write repos and start jobs: on a "
                  "Space, sign out and in again to grant the `jobs` permission; otherwise create a fine-grained token "
                  f"with \"Start and manage Jobs\" and write access at {TOKENS_URL}."),
            "offline": "Offline mode is on (HF_HUB_OFFLINE is set): unset it to train on Hugging Face.",
            "network": (f"Could not {self.doing}: the Hugging Face Hub cannot be reached ({type(error).__name__}). "
                        "Check the internet connection and try again.")}
        first = (scrub(str(error), self.token).splitlines() or [type(error).__name__])[0]
        message = said.get(failure) or f"Could not {self.doing}: the Hugging Face Hub answered {failure}: {first}"
        raise (TokenRejected if failure == 401 else JobError)(message) from None
