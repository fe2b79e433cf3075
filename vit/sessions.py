"""What a visitor was doing, kept on the server so that a page reload or a return visit finds it: their
current dataset, their last training settings and the models they picked.

    remember(root, owner, dataset={"path": ..., "name": ...})
    recall(root, owner)          # {"dataset": {...}, "settings": {...}, "models": {...}} or {}
    sweep(root, max_age_s)       # records not written for that long are removed (a shared app: VIT_KEEP_DAYS)

Kept under <checkpoints>/.sessions/<hash of the owner token>.json: the browser holds only its random
token, never a path, so a visitor cannot point the app at a folder it did not give them itself. A record is
written for a valid token only and holds only the known keys, each of its type and size: a page's event
can send anything, and the store must not fill the disk.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vit import runs
from vit.safety import owner_hash, valid_owner_token

FOLDER = ".sessions"
KEYS = ("dataset", "settings", "models")  # models: {"classify": run id or hf-hub id, "share": run id}
MAX_BYTES = {"dataset": 256 * 1024, "settings": 16 * 1024, "models": 1024}  # each value, as JSON
MAX_TEXT = 200  # one setting or model name


def remember(root: str | os.PathLike, owner: str | None, **values) -> None:
    """Merge `values` (dataset=..., settings=...) into the visitor's record. A value of the wrong type or over
    its size is left out; a visitor without a valid token, or a write that fails (a full disk), leaves the
    record as it was: this is a convenience, never an error."""
    path = _path(root, owner)
    if path is None:
        return
    record = recall(root, owner)
    record.update({k: v for k, v in ((k, _clean(k, v)) for k, v in values.items() if k in KEYS) if v is not None})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(path, record)
    except OSError:
        pass


def recall(root: str | os.PathLike, owner: str | None) -> dict:
    """The visitor's record, or {} when there is none."""
    path = _path(root, owner)
    record = runs.read_json(path, {}) if path is not None else {}
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in ((k, _clean(k, record.get(k))) for k in KEYS) if v is not None}


def sweep(root: str | os.PathLike, max_age_s: float, now: float | None = None) -> int:
    """Remove the records not written for max_age_s seconds; return how many."""
    now = time.time() if now is None else now
    removed = 0
    for path in (Path(root) / FOLDER).glob("*.json"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed


def _clean(key: str, value):
    """The value if it has its key's type and size, else None. settings and models are flat maps of names to
    short plain values; a dataset is what the app's own check made (a map), bounded in size."""
    if not isinstance(value, dict):
        return None
    if key in ("settings", "models"):
        value = {str(k)[:40]: v for k, v in value.items()
                 if v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= MAX_TEXT)}
    try:
        size = len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return None
    return value if size <= MAX_BYTES[key] else None


def _path(root: str | os.PathLike, owner: str | None) -> Path | None:
    if not valid_owner_token(owner):
        return None
    return Path(root) / FOLDER / f"{owner_hash(owner).removeprefix('sha256:')}.json"
