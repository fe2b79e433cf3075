"""What the machine and the host decide for the job manager: single-user or shared, the training threads, one
manager per checkpoints folder, a run's display name, and a full disk refused in words."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from vit import env, runs
from vit.jobs.errors import JobError
from vit.safety import on_spaces


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


def run_name(name: str | None) -> str | None:
    """A run's display name as typed (it never becomes a path): one line, at most 80 characters."""
    if name is None or not str(name).strip():
        return None
    name = " ".join(str(name).split())
    if len(name) > 80 or not name.isprintable():
        raise JobError("A run name is one line of at most 80 printable characters.")
    return name


def lock_root(root: Path):
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


def disk_full_refused(request):
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
