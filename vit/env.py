"""Every environment variable the app reads, in one place: its name, what it does, and the one function that
reads it. A new one is added to VARIABLES (read() refuses a name that is not there); the README names each
VIT_ one (tests/test_house.py checks both).

    from vit import env
    env.read("VIT_CHECKPOINTS")        # the text, or None when unset or blank
"""
from __future__ import annotations

import os

VARIABLES = {
    # where things are, who uses the app
    "VIT_CHECKPOINTS": "where runs are kept (default: checkpoints/, or /data/checkpoints on a Space with storage)",
    "VIT_SINGLE_USER": "1: one user sees every run (the default off a Space); 0: visitors each see their own",
    "VIT_SESSION_SECRET": "the key of the visitor ids browsers keep (default: made once, kept beside the runs)",
    "VIT_TRAIN_THREADS": "CPU threads for training (default: every core but one)",
    "SYSTEM": "set to 'spaces' by Hugging Face Spaces",
    "OAUTH_CLIENT_ID": "set by a Space with hf_oauth: true (the Share tab then offers to sign in)",
    # the shared app's limits (vit.safety.HostLimits; README, "Hosting it for others")
    "VIT_MAX_UPLOAD_MB": "largest upload", "VIT_MAX_PIXELS": "largest image, in pixels",
    "VIT_MAX_MODEL_PARAMS_M": "largest model the web app builds or trains, in millions of parameters",
    "VIT_RUNS_PER_VISITOR": "runs queued or running at once, per visitor",
    "VIT_CLASSIFY_CONCURRENCY": "classifications at once", "VIT_TEMP_MAX_AGE_S": "how long served files live",
    "VIT_MAX_ACTIVE_RUNS": "runs queued or running at once, of all visitors",
    "VIT_MAX_RUN_MINUTES": "training time of one run", "VIT_KEEP_DAYS": "days a visitor's ended runs are kept",
    # set by the job manager for its training process (vit.jobs.child -> vit.jobs.worker)
    "VIT_NICE": "the training process's niceness", "VIT_PARENT_PID": "the app that started it",
    "VIT_THREADS": "its CPU threads",
    # training on Hugging Face Jobs (vit.jobs.remote; README, "Training on a Hugging Face GPU")
    "SPACE_ID": "set by a Space: its id (a job runs in the Space's own image)",
    "VIT_JOB_IMAGE": "the image a job runs in off a Space: one with this project installed (default: a stock "
                     "Python image that installs it)",
    "VIT_JOB_POLL_S": "seconds between two reads of a job's stage and log (default 5)",
    # set by the app for its job on Hugging Face (vit.jobs.remote_worker)
    "VIT_DATA_REPO": "the run's private dataset repo", "VIT_MODEL_REPO": "the private model repo it pushes to",
    "VIT_RESUME": "1: continue from the checkpoint in the model repo", "VIT_JOB_WORK": "its working folder",
    # set by torchrun
    "WORLD_SIZE": "processes in a distributed run", "RANK": "this process's rank",
    "LOCAL_RANK": "this process's rank on its machine",
}


def read(name: str) -> str | None:
    """The value of `name` (one of VARIABLES), stripped; None when unset or blank."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of vit.env.VARIABLES: add it there, with what it does")
    value = os.environ.get(name, "").strip()
    return value or None


def number(name: str, default: int = 0) -> int:
    """A whole-number variable (torchrun's ranks, the child's settings); `default` when unset."""
    value = read(name)
    return int(value) if value is not None else default


def on_spaces() -> bool:
    """Whether the app runs as a Hugging Face Space (a Space sets SYSTEM=spaces)."""
    return read("SYSTEM") == "spaces"
