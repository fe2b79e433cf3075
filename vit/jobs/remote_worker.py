"""The training job on Hugging Face: `python -m vit.jobs.remote_worker`, started in a job by vit.jobs.remote.

Its environment says what to do: VIT_DATA_REPO (the private dataset repo: data/ with its labels.csv, and
job.json), VIT_MODEL_REPO (the private model repo it pushes to), VIT_RESUME ("1": continue from the checkpoint
pushed there) and the secret HF_TOKEN. It trains exactly as the app's own child does (vit.train.train on the same
checked data), prints each status change and finished epoch as a JSON line the app reads from the job's log
(EVENT), pushes the run directory after each epoch (a checkpoint: in the background, the newest wins) and at the
end, and exits 0 completed, 1 cancelled (SIGTERM: the job was cancelled), 2 failed.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from vit import env, runs

EVENT = "@vit "          # a line of the log that carries an event: EVENT + JSON
STEP_EVERY_S = 10.0      # a status line during an epoch at most this often
PUSHED = ("config.json", "model.safetensors", "last.pt", "status.json", "metrics.jsonl", "metrics.json",
          "data_report.json", "trained_on.txt", "diagnostics.json", "ood.safetensors")
NOT_STATUS = ("pid", "host", "pid_start")  # the job machine's process: nothing the app can check


def main() -> int:
    from huggingface_hub import HfApi, snapshot_download
    from vit.data import load_dataset
    from vit.train import TrainConfig, TrainError, train

    data_repo, model_repo = env.read("VIT_DATA_REPO"), env.read("VIT_MODEL_REPO")
    work = Path(env.read("VIT_JOB_WORK") or tempfile.mkdtemp(prefix="vit-job-"))
    run_dir, given = work / "run", work / "in"
    run_dir.mkdir(parents=True, exist_ok=True)
    say({"type": "status", "status": {"message": "Downloading the data"}})
    snapshot_download(data_repo, repo_type="dataset", local_dir=str(given), allow_patterns=["data/**", "job.json"])
    job = json.loads((given / "job.json").read_text())
    config = TrainConfig.from_dict({**job["config"], "data": str(given / "data"), "device": "auto"})
    if env.read("VIT_RESUME") == "1":
        snapshot_download(model_repo, repo_type="model", local_dir=str(run_dir), allow_patterns=list(PUSHED))
        shutil.rmtree(run_dir / ".cache", ignore_errors=True)
    resume = (run_dir / runs.RESUME).is_file()
    stop = {"reason": None}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(reason="the job was cancelled"))
    pusher = Pusher(HfApi(), model_repo, run_dir)
    teller = Teller(run_dir, pusher)
    dataset = load_dataset(given / "data", val_fraction=config.val_fraction, seed=config.seed)
    if job.get("source"):
        dataset.report.source = str(job["source"])
    with dataset:
        try:
            result = train(dataset, None if resume else config, run_dir, on_event=teller,
                           should_stop=lambda: stop["reason"] is not None, resume=resume)
        except TrainError as e:
            print(f"failed: {e}", flush=True)
            pusher.push_now("failed")
            return runs.Exit.FAILED
    pusher.push_now("final")
    say({"type": "end", "status": _status(run_dir), "cancelled": bool(result.get("cancelled"))})
    return runs.Exit.CANCELLED if result.get("cancelled") else runs.Exit.OK


def say(event: dict) -> None:
    """One event as a line of the job's log."""
    print(EVENT + json.dumps(event, default=str), flush=True)


class Teller:
    """on_event: status changes, recipe lines and epochs as log lines (steps: a status line every STEP_EVERY_S);
    each finished epoch is pushed."""

    def __init__(self, run_dir: Path, pusher: "Pusher"):
        self.run_dir, self.pusher, self._last = run_dir, pusher, 0.0

    def __call__(self, e: dict) -> None:
        kind = e.get("type")
        if kind == "step" and time.monotonic() - self._last < STEP_EVERY_S:
            return
        self._last = time.monotonic()
        if kind == "epoch":
            row = {k: v for k, v in e.items() if k not in ("type", "epochs")}
            say({"type": "epoch", "row": row, "status": _status(self.run_dir)})
            self.pusher.soon()
        elif kind == "recipe":
            say({"type": "recipe", "text": e.get("text")})
        elif kind in ("status", "step"):
            say({"type": "status", "status": _status(self.run_dir)})


class Pusher:
    """The run directory pushed to the model repo: after an epoch in a thread of its own (a copy first, so that a
    file replaced meanwhile cannot tear the upload; a push asked for during one is done once it ends), and at the
    end in the foreground."""

    def __init__(self, api, repo_id: str, run_dir: Path):
        self.api, self.repo_id, self.run_dir = api, repo_id, run_dir
        self._wanted = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._forever, daemon=True).start()

    def soon(self) -> None:
        self._idle.clear()
        self._wanted.set()

    def push_now(self, why: str) -> None:
        self._idle.wait(timeout=600)
        self._push(why)

    def _forever(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self._push("checkpoint")
            except Exception as e:  # a failed checkpoint push: the next epoch (or the end) pushes again
                print(f"warning: the checkpoint could not be pushed ({type(e).__name__}); training goes on",
                      flush=True)
            if not self._wanted.is_set():
                self._idle.set()

    def _push(self, why: str) -> None:
        with tempfile.TemporaryDirectory(prefix="vit-push-") as tmp:
            for name in PUSHED:
                if (self.run_dir / name).is_file():
                    shutil.copyfile(self.run_dir / name, Path(tmp) / name)
            epoch = _status(self.run_dir).get("epoch")
            self.api.upload_folder(repo_id=self.repo_id, repo_type="model", folder_path=tmp,
                                   commit_message=f"ViT Studio job: {why} (epoch {epoch})")
        say({"type": "pushed", "why": why, "epoch": epoch})


def _status(run_dir: Path) -> dict:
    return {k: v for k, v in runs.read_status(run_dir).items() if k not in NOT_STATUS}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # (exit 1 would read as cancelled)
        import traceback
        traceback.print_exc()
        sys.exit(runs.Exit.FAILED)
