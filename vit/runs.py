"""The run directory: the one record of a training run, shared by the UI, the CLI and the Hub code.

checkpoints/<run-id>/
    config.json        timm Hub format (architecture, num_classes, label_names, pretrained_cfg,
                       model_args) plus our training config under "vit_studio"
    model.safetensors  best weights: timm.create_model("local-dir:<run-dir>", pretrained=True) loads them
    last.pt            state for resuming (weights, optimizer, scheduler, epoch, RNG, history);
                       tensors and plain data only, read with torch.load(weights_only=True)
    status.json        state, epoch, step, message, timestamps
    metrics.jsonl      one line per epoch
    metrics.json       final metrics of the best model
    data_report.json   the dataset's health report at the start of training (for the model card)
    ood.safetensors    what the "none of these" check compares an image with (vit.trust); the temperature that
                       calibrates the probabilities is in config.json's vit_studio.calibration
    CANCEL             present when a cancel was requested

Every write goes to a temporary file that is renamed into place, so a reader
never sees half a file and a crash never corrupts what was there before.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path

from vit import env
from vit.safety import on_spaces

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunState(StrEnum):
    """Where a run is in its life (status.json's "state"). A str: it is written and compared as its value."""
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class RunKind(StrEnum):
    """How a run starts: data the UI and the card read, never a display string searched."""
    QUICK = "quick model"      # only the head, fitted on frozen features
    FINE_TUNE = "fine-tune"    # from pretrained weights or an earlier run's
    SCRATCH = "from scratch"   # random weights


def kind_of(config: dict) -> RunKind:
    """The kind of run a TrainConfig (as a dict: job.json's, config.json's record) describes."""
    if config.get("quick"):
        return RunKind.QUICK
    return RunKind.FINE_TUNE if config.get("pretrained", True) or config.get("weights") else RunKind.SCRATCH


STATES = tuple(RunState)
ACTIVE_STATES = (RunState.QUEUED, RunState.RUNNING)
ENDED_STATES = (RunState.INTERRUPTED, RunState.CANCELLED, RunState.FAILED)  # can be resumed (with a job.json)


class Exit(IntEnum):
    """The exit code of a training process: `python -m vit train` and the app's child (vit.jobs.worker)."""
    OK = 0
    CANCELLED = 1
    FAILED = 2           # the input cannot be used, or training failed (the message says why)
    APP_GONE = 3         # the app that started the child exited
    DISK_FULL = 4


# the files of a run directory
CONFIG, WEIGHTS, RESUME, STATUS, METRICS_LOG, METRICS, CANCEL = (
    "config.json", "model.safetensors", "last.pt", "status.json", "metrics.jsonl", "metrics.json", "CANCEL")
JOB = "job.json"        # what the app's child trains: the config, the owner, where the data is
LOG = "train.log"       # the child's output
DATA_DIR = "data"       # the run's own copy of its dataset, with a labels.csv manifest
DATA_REPORT = "data_report.json"
TRAINED_ON = "trained_on.txt"     # the sha256 of each training image: a teacher's check (vit.train.teacher)
DIAGNOSTICS = "diagnostics.json"  # what the frozen features say about the data (vit.data.features)
OOD = "ood.safetensors"           # what the "none of these" check compares with (vit.trust)
FEATURES = ".features"  # under the runs' root: the frozen-feature cache, shared by the runs
CONFIG_KEY = "vit_studio"
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


DISK_FULL = ("The disk is full (no space left on device), so the run stopped and is marked failed. "
             "Free some space (delete runs you no longer need), then resume it.")
SPACES_PERSISTENT = Path("/data")  # where a Hugging Face Space mounts persistent storage


def default_root(persistent: Path | None = None) -> Path:
    """Where runs live: VIT_CHECKPOINTS if set; on a Space, its persistent storage when mounted;
    else checkpoints/ beside the code."""
    persistent = persistent or SPACES_PERSISTENT
    if env.read("VIT_CHECKPOINTS"):
        return Path(env.read("VIT_CHECKPOINTS"))
    if on_spaces() and persistent.is_dir() and os.access(persistent, os.W_OK):
        return persistent / "checkpoints"
    return DEFAULT_ROOT


def storage_note(persistent: Path | None = None) -> str:
    """A warning to show when runs will not survive a restart (a Space without persistent storage)."""
    if (on_spaces() and not env.read("VIT_CHECKPOINTS")
            and default_root(persistent) == DEFAULT_ROOT):
        return ("This Space has no persistent storage: trained runs are lost when it restarts or goes to sleep. "
                "Push the models you want to keep to the Hub, or enable persistent storage in the Space settings.")
    return ""


@dataclass
class RunInfo:
    run_dir: Path
    status: dict
    config: dict

    @property
    def id(self) -> str:
        return self.run_dir.name

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")


def create_run_dir(root: str | os.PathLike | None = None, model_name: str = "model") -> Path:
    """A new, empty run directory named <date>-<time>-<model>-<random>."""
    root = Path(root) if root else default_root()
    root.mkdir(parents=True, exist_ok=True)
    short = re.sub(r"[^A-Za-z0-9_]+", "-", model_name.split("/")[-1].split(".")[0])[:40].strip("-") or "model"
    run_dir = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{short}-{secrets.token_hex(2)}"
    run_dir.mkdir()
    return run_dir


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically."""
    with atomic(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)


def read_json(path: str | os.PathLike, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_status(run_dir: str | os.PathLike) -> dict:
    return read_json(Path(run_dir) / STATUS, {})


def update_status(run_dir: str | os.PathLike, state: str | None = None, **fields) -> dict:
    """Merge `fields` (and a new state) into status.json; stamps updated_at, started_at, finished_at."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    now = time.time()
    if state is not None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        if state == RunState.RUNNING and status.get("state") != RunState.RUNNING:
            status.setdefault("started_at", now)
        if state not in ACTIVE_STATES:
            status["finished_at"] = now
        status["state"] = state
    status.setdefault("created_at", now)
    status.update(fields)
    status["updated_at"] = now
    write_json(run_dir / STATUS, status)
    return status


def write_metrics_log(run_dir: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl with `rows` (atomically)."""
    with atomic(Path(run_dir) / METRICS_LOG) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r, default=_json_default) + "\n" for r in rows)


def read_metrics_log(run_dir: str | os.PathLike) -> list[dict]:
    rows = []
    try:
        for line in (Path(run_dir) / METRICS_LOG).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a torn last line from a crash
    except FileNotFoundError:
        pass
    return rows


def read_config(run_dir: str | os.PathLike) -> dict:
    return read_json(Path(run_dir) / CONFIG, {})


LOCAL_PATH_KEYS = ("data", "weights", "teacher")  # training settings that may name files of the machine that trained


def public_record(train_config: dict) -> dict:
    """Training settings fit to publish (config.json, the model card, a download): local paths become
    their last component, so nothing about the machine's folders leaves it."""
    record = dict(train_config)
    for key in LOCAL_PATH_KEYS:
        if record.get(key) and not str(record[key]).startswith("hf-hub:"):
            record[key] = Path(str(record[key])).name
    return record


def public_config(run_dir: str | os.PathLike) -> dict:
    """The run's config.json as it may be published (see public_record)."""
    config = read_config(run_dir)
    if isinstance(config.get(CONFIG_KEY), dict):
        config[CONFIG_KEY] = public_record(config[CONFIG_KEY])
    return config


def public_report(report: dict) -> dict:
    """The health report without the local path of the upload it was read from."""
    return {**report, "source": Path(str(report["source"])).name} if report.get("source") else report


def save_model(run_dir: str | os.PathLike, model, label_names: list[str], train_config: dict,
               data_config: dict | None = None) -> None:
    """Write config.json and model.safetensors in timm's Hub format, each atomically."""
    from timm.models import save_for_hf

    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".save-") as tmp:
        save_for_hf(model, tmp, model_config={"label_names": list(label_names)}, safe_serialization=True,
                    data_config=data_config)
        config = json.loads(Path(tmp, CONFIG).read_text())
        if (train_config.get("built") or {}).get("weights") == "from scratch":  # no pretrained weights' tag
            config.get("pretrained_cfg", {}).pop("tag", None)
        config[CONFIG_KEY] = public_record(train_config)
        write_json(Path(tmp, CONFIG), config)
        os.replace(Path(tmp, WEIGHTS), run_dir / WEIGHTS)
        os.replace(Path(tmp, CONFIG), run_dir / CONFIG)


def save_resume_state(run_dir: str | os.PathLike, state: dict) -> None:
    import torch  # here, not at the top: the web page lists runs without torch
    with atomic(Path(run_dir) / RESUME) as tmp:
        torch.save(state, tmp)


def load_resume_state(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / RESUME
    if not path.is_file():
        return None
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def request_cancel(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / CANCEL).touch()


def cancel_requested(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / CANCEL).exists()


def clear_cancel(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / CANCEL).unlink(missing_ok=True)


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """Every run directory under root, newest first."""
    return RunIndex(Path(root) if root else default_root()).runs()


class RunIndex:
    """The run directories under root, each read again only when its status.json or config.json changed: listing
    thousands of runs costs one directory scan and two stats a run, not reading their files. `only(name)` picks
    the runs wanted before anything of theirs is read (a visitor's own, by an index of owners)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._seen: dict[str, tuple[tuple, RunInfo]] = {}
        self._lock = threading.Lock()
        self._scanned: tuple[tuple | None, list[str]] = (None, [])  # (root's stamp, its folders), replaced whole

    def runs(self, only=None) -> list[RunInfo]:
        """The runs, newest first (RunInfo's dicts are shared with the index: read them, do not change them)."""
        names = self._names()
        found = []
        with self._lock:
            for gone in self._seen.keys() - set(names):
                del self._seen[gone]
            base = str(self.root)
            for name in names:
                if only is not None and not only(name):
                    continue
                folder = os.path.join(base, name)
                key = (stamp(os.path.join(folder, STATUS)), stamp(os.path.join(folder, CONFIG)))
                if key == (None, None):
                    continue
                hit = self._seen.get(name)
                if hit is None or hit[0] != key:
                    d = self.root / name
                    hit = self._seen[name] = (key, RunInfo(d, read_status(d), read_config(d)))
                found.append(hit[1])
        found.sort(key=lambda r: (r.status.get("created_at", 0), r.id), reverse=True)
        return found

    def _names(self) -> list[str]:
        """The folders under root, scanned again only when root changed (a folder made, renamed or removed)."""
        seen, scanned = stamp(self.root), self._scanned  # (one read: another thread may replace it)
        if seen is not None and seen == scanned[0]:
            return scanned[1]
        try:
            with os.scandir(self.root) as entries:
                names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            names = []
        self._scanned = (seen, names)
        return names


def stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """What changes when a file is replaced (every write here is a rename): its inode and modification time."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns


def run_path(root: str | os.PathLike | None, run_id: str) -> Path:
    """The directory of run `run_id` under root; ValueError for a name that is not one of its runs."""
    root = Path(root) if root else default_root()
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(f"{str(run_id)[:80]!r} is not a run id (like 20260101-120000-vit_tiny-ab12).")
    run_dir = root / run_id
    if run_dir.is_symlink() or not run_dir.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{run_id} is not a run directory of {root.name}/.")
    if not ((run_dir / STATUS).is_file() or (run_dir / CONFIG).is_file()):
        raise ValueError(f"There is no run {run_id} in {root.name}/. It may have been deleted; refresh the list.")
    return run_dir


def process_identity() -> dict:
    """Who is writing this run: enough for another process to tell later whether it still runs."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _process_start(os.getpid())}


def writer_alive(status: dict, stale_after_s: float = 900.0) -> bool:
    """Whether the process that marked a run `running` is still there.

    On this machine: its pid exists, is not a zombie and started when it said
    it did (pids are reused). A run written from another machine (a shared
    folder) counts as alive while it keeps writing.
    """
    age = time.time() - status.get("updated_at", 0)
    if status.get("host") not in (None, socket.gethostname()):
        return age < stale_after_s
    pid = status.get("pid")
    if not pid:
        return age < 60  # a process that is starting and has not written its pid yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    start = _process_start(pid)
    if start == "zombie":
        return False
    return status.get("pid_start") is None or start is None or start == status["pid_start"]


def remove_partial_files(run_dir: str | os.PathLike) -> None:
    """Remove the temporary files a killed writer can leave behind (never a finished file)."""
    for p in Path(run_dir).glob(".*"):
        if p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)
        elif p.name.startswith(".save-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


ARCHIVED = (WEIGHTS, CONFIG, OOD, METRICS, METRICS_LOG, DATA_REPORT, DIAGNOSTICS, STATUS)


def archive(run_dir: str | os.PathLike, dest_dir: str | os.PathLike,
            extra: dict[str, Path] | None = None) -> Path:
    """A zip of the run for download: its model, config, metrics, status and health report, and the `extra`
    files (name in the zip -> file: the model card, the ONNX file). Nothing that names a visitor or the
    machine goes in: no job description (it records the owner), no log, no copy of the data or resume state;
    local paths in the config and report are cut to names."""
    import zipfile
    run_dir = Path(run_dir)
    out = Path(dest_dir) / f"{run_dir.name}.zip"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in (extra or {}).items():
            zf.write(path, f"{run_dir.name}/{name}")
        for name in ARCHIVED:
            p = run_dir / name
            if not p.is_file() or p.is_symlink():
                continue
            arcname = f"{run_dir.name}/{name}"
            if name == CONFIG:
                zf.writestr(arcname, json.dumps(public_config(run_dir), indent=2, default=_json_default))
            elif name == DATA_REPORT:
                zf.writestr(arcname, json.dumps(public_report(read_json(p, {})), indent=2, default=_json_default))
            elif name == STATUS:
                status = {k: v for k, v in read_status(run_dir).items() if k not in ("pid", "host", "pid_start")}
                zf.writestr(arcname, json.dumps(status, indent=2, default=_json_default))
            else:
                zf.write(p, arcname)
    return out


def disk_full(error: BaseException | None) -> bool:
    """Whether an error is the file system running out of space (or of the user's quota): an OSError, or an error of
    a library that writes in native code and says so only in words (safetensors' SafetensorError, torch's
    RuntimeError)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    words = str(error) if error is not None else ""
    return any(w in words for w in ("No space left on device", "Disk quota exceeded", "StorageFull"))


def delete_run(run_dir: str | os.PathLike, state: str | None = None) -> None:
    """Remove a run directory; refuses a run that is queued or running (`state`: as known to the caller,
    else as recorded)."""
    run_dir = Path(run_dir)
    state = state or read_status(run_dir).get("state")
    if state in ACTIVE_STATES:
        raise ValueError(f"Run {run_dir.name} is {state}; cancel it before deleting it.")
    shutil.rmtree(run_dir)


@contextlib.contextmanager
def atomic(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _process_start(pid: int):
    """The start time of a process in clock ticks since boot ("zombie" for one that has exited), where
    /proc tells; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may contain spaces
    return "zombie" if fields[0] in ("Z", "X") else int(fields[19])


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
