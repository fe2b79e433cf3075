"""What a visitor was doing, kept on the server so that a page reload or a return visit finds it: their
current dataset and their last training settings.

    remember(root, owner, dataset={"path": ..., "name": ...})
    recall(root, owner)          # {"dataset": {...}, "settings": {...}} or {}

Kept under <checkpoints>/.sessions/<hash of the owner token>.json: the browser holds only its random
token, never a path, so a visitor cannot point the app at a folder it did not give them itself.
"""
from __future__ import annotations

import os
from pathlib import Path

from vit import runs
from vit.safety import owner_hash

FOLDER = ".sessions"
KEYS = ("dataset", "settings", "models")  # models: {"classify": run id or hf-hub id, "share": run id}


def remember(root: str | os.PathLike, owner: str | None, **values) -> None:
    """Merge `values` (dataset=..., settings=...) into the visitor's record. A visitor without a token, or a
    write that fails (a full disk), leaves the record as it was: this is a convenience, never an error."""
    path = _path(root, owner)
    if path is None:
        return
    record = recall(root, owner)
    record.update({k: v for k, v in values.items() if k in KEYS})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(path, record)
    except OSError:
        pass


def recall(root: str | os.PathLike, owner: str | None) -> dict:
    """The visitor's record, or {} when there is none."""
    path = _path(root, owner)
    record = runs.read_json(path, {}) if path is not None else {}
    return record if isinstance(record, dict) else {}


def _path(root: str | os.PathLike, owner: str | None) -> Path | None:
    if not owner or not isinstance(owner, str):
        return None
    return Path(root) / FOLDER / f"{owner_hash(owner).removeprefix('sha256:')}.json"
