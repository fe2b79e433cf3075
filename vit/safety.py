"""What keeps a shared, public app safe: the limits one visitor's request may cost, the rule for names
that become paths, and visitor identity.

    limits = HostLimits.from_env()               # VIT_MAX_UPLOAD_MB, VIT_MAX_MODEL_PARAMS_M, ...
    path = safe_join(root, label, "001.jpg")     # ValueError unless the result lies inside root
    check_name(label, "class name")              # DataError-free: returns the reason, or None

A visitor is known by a random token kept in their browser. Only its hash is ever written
(`owner_hash`), so nothing downloadable can be used to act as them.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from vit import env

NAME_MAX_CHARS = 100


def on_spaces() -> bool:
    """Whether the app runs as a Hugging Face Space (a Space sets SYSTEM=spaces): the one place this is read."""
    return env.on_spaces()


RESERVED_NAMES = {"labels.csv"}          # the manifest: a class of that name would collide with it
OWNER_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass(frozen=True)
class HostLimits:
    """What one request or one visitor may cost. Each field has an environment variable."""

    max_upload_mb: int = 1024            # VIT_MAX_UPLOAD_MB: largest uploaded file (a dataset zip)
    max_pixels: int = 64_000_000         # VIT_MAX_PIXELS: largest image, read from its header before decoding
    max_model_params_m: float = 100.0    # VIT_MAX_MODEL_PARAMS_M: largest model the web process loads
    runs_per_visitor: int = 2            # VIT_RUNS_PER_VISITOR: queued or running runs per visitor (shared app)
    classify_concurrency: int = 0        # VIT_CLASSIFY_CONCURRENCY: classifications served at once (0: cores, max 4)
    temp_max_age_s: int = 3600           # VIT_TEMP_MAX_AGE_S: served downloads and uploads are removed after this
    max_active_runs: int = 8             # VIT_MAX_ACTIVE_RUNS: queued or running runs of all visitors (shared app)
    max_run_minutes: float = 60.0        # VIT_MAX_RUN_MINUTES: training time of one run before it is stopped (shared)
    keep_days: float = 7.0               # VIT_KEEP_DAYS: a visitor's ended runs and records are removed after (shared)

    @classmethod
    def from_env(cls) -> "HostLimits":
        table = {"max_upload_mb": ("VIT_MAX_UPLOAD_MB", int), "max_pixels": ("VIT_MAX_PIXELS", int),
                 "max_model_params_m": ("VIT_MAX_MODEL_PARAMS_M", float),
                 "runs_per_visitor": ("VIT_RUNS_PER_VISITOR", int),
                 "classify_concurrency": ("VIT_CLASSIFY_CONCURRENCY", int),
                 "temp_max_age_s": ("VIT_TEMP_MAX_AGE_S", int),
                 "max_active_runs": ("VIT_MAX_ACTIVE_RUNS", int), "max_run_minutes": ("VIT_MAX_RUN_MINUTES", float),
                 "keep_days": ("VIT_KEEP_DAYS", float)}
        values = {}
        for field_name, (var, kind) in table.items():
            raw = env.read(var) or ""
            if raw:
                try:
                    values[field_name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a number.") from None
                if not values[field_name] >= 0 or values[field_name] == float("inf"):  # (NaN and inf too)
                    raise ValueError(f"{var} must be a number of 0 or more (got {raw}).")
        return cls(**values)

    @property
    def concurrency(self) -> int:
        return self.classify_concurrency or max(1, min(4, os.cpu_count() or 1))


SECRET_FILE = ".session-secret"  # beside the runs: the key the browser's stored visitor id is kept under


def session_secret(root: str | os.PathLike) -> str:
    """The key of the visitor ids the browsers keep (Gradio's BrowserState): VIT_SESSION_SECRET, else a random
    value made once and kept in <root>/.session-secret (0600), so that a restart (a Space waking up) still reads
    every browser's id and its runs stay theirs. Gradio hands this key to the page, so it hides the id from other
    sites' scripts, not from the visitor: what makes a visitor is their random id, never the key."""
    given = env.read("VIT_SESSION_SECRET")
    if given:
        return given
    path = Path(root) / SECRET_FILE
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        kept = path.read_text().strip()
        if len(kept) >= 32:
            return kept
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)  # an empty or torn file: made again
    with os.fdopen(fd, "w") as f:
        made = secrets.token_urlsafe(32)
        f.write(made)
    os.chmod(path, 0o600)
    return made


def check_name(name: str, what: str = "name") -> str | None:
    """Why `name` cannot be one folder or file name (a class, a label), or None when it can.

    Refused: empty, longer than NAME_MAX_CHARS, '/' or '\\', '.' or '..', a leading dot (hidden
    files are skipped when a folder is read back), control or invisible format characters, and
    the names the dataset layout reserves."""
    if not isinstance(name, str) or not name.strip():
        return f"the {what} is empty"
    if len(name) > NAME_MAX_CHARS:
        return f"the {what} {name[:40]!r}... is longer than {NAME_MAX_CHARS} characters"
    if "/" in name or "\\" in name:
        return f"the {what} {name!r} contains '/' or '\\'"
    if name in (".", "..") or name.startswith("."):
        return f"the {what} {name!r} starts with '.'"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name):
        return f"the {what} {name!r} contains control or invisible characters"
    if name.strip().lower() in RESERVED_NAMES:
        return f"the {what} {name!r} is reserved for the dataset's manifest"
    return None


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """root/parts..., proven to lie inside root once symbolic links and '..' are resolved; else ValueError."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        raise ValueError(f"{'/'.join(parts)[:80]!r} points outside {Path(root).name}/; refused.")
    return path


def owner_hash(token: str | None) -> str | None:
    """What is stored for a visitor: a hash of their token (the token itself is never written)."""
    if not token:
        return None
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def owns(stored: str | None, token: str | None) -> bool:
    """Whether the visitor with `token` started a run whose recorded owner is `stored`."""
    if not token or not stored:
        return False
    return stored == owner_hash(token)


def valid_owner_token(token: str | None) -> bool:
    return isinstance(token, str) and bool(OWNER_TOKEN.fullmatch(token))


TOKENS_URL = "https://huggingface.co/settings/tokens"


def token_problem(token: str) -> str | None:
    """Why `token` (stripped) cannot be a Hugging Face token, in words that never repeat it (None: it can be): a
    line break, a space or an invisible character inside is a paste gone wrong."""
    if any(c.isspace() for c in token):
        return f"The token has a space or a line break inside it. Paste it again as one line, from {TOKENS_URL}."
    if not token.isascii() or not token.isprintable():
        return ("The token has an invisible or non-ASCII character in it (e.g. a zero-width space from a copy). "
                f"Paste it again from {TOKENS_URL}.")
    if not 8 <= len(token) <= 256:
        return f"That is not a Hugging Face token (they look like hf_...). Copy one from {TOKENS_URL}."
    return None


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` (a token) replaced, for a message or a log."""
    return text.replace(secret, "hf_***") if secret else text
