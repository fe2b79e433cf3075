"""What following a run on a Hugging Face GPU costs, against training the same run here.

The same run (the sample shapes, a ViT from scratch with what the recipe chooses, N epochs) is trained twice on this
machine: once by the job manager's own child process, once as a job of the fake Hub (tests/fake_hub.py), whose Jobs
service runs the job's command here too. The second pays for the whole protocol: the data uploaded to a dataset repo,
the job's worker downloading it, its status read from the log every VIT_JOB_POLL_S seconds, a push of the run
directory after each epoch, and the model fetched at the end. Printed: the time until Start returns, until the first
epoch shows in the app, and until the run has ended with its model here, for each, and the ratio remote / local.
No GPU is involved: this measures the protocol, not the hardware (a real job also waits for its machine and image).

    python bench/remote_bench.py [--per-class 20] [--epochs 5] [--poll 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_hub import FakeHub  # noqa: E402

from vit import runs, samples  # noqa: E402
from vit.data import load_dataset  # noqa: E402
from vit.jobs import JobManager, Remote  # noqa: E402
from vit.train import TrainConfig, recipe  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--poll", type=float, default=1.0, help="VIT_JOB_POLL_S for the remote run")
    args = p.parse_args()
    os.environ.update(VIT_JOB_POLL_S=str(args.poll), VIT_JOB_IMAGE="vit-studio:bench")
    from huggingface_hub import constants
    hub = FakeHub()
    constants.HF_HUB_OFFLINE = False
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.per_class} images per class, "
          f"{args.epochs} epochs, a poll every {args.poll:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        data = samples.make_shapes_dataset(Path(tmp) / "shapes", per_class=args.per_class)
        with load_dataset(data) as ds:
            config = recipe.choose(TrainConfig(pretrained=False, epochs=args.epochs), recipe.DataFacts.of(ds),
                                   given={"epochs": args.epochs})
        manager = JobManager(Path(tmp) / "checkpoints", gpus=0, poll_s=0.05)
        try:
            local = _timed(manager, lambda: manager.submit(data, config))
            remote = _timed(manager, lambda: manager.submit(data, config,
                                                            remote=Remote("t4-small", "hf_write_bench", hub.url)))
        finally:
            manager.shutdown()
            hub.close()
    print(f"{'':>22} {'local':>9} {'remote':>9} {'ratio':>7}")
    for key in ("start returns", "first epoch shown", "ended, model here"):
        print(f"{key:>22} {local[key]:8.1f}s {remote[key]:8.1f}s {remote[key] / max(local[key], 1e-9):6.2f}x")
    print(f"states: local {local['state']}, remote {remote['state']}")


def _timed(manager: JobManager, start) -> dict:
    t0 = time.perf_counter()
    run_id = start()
    out = {"start returns": time.perf_counter() - t0}
    while not manager.progress(run_id)["history"]:
        time.sleep(0.05)
    out["first epoch shown"] = time.perf_counter() - t0
    while manager.progress(run_id)["state"] in runs.ACTIVE_STATES:
        time.sleep(0.05)
    out["ended, model here"] = time.perf_counter() - t0
    out["state"] = manager.progress(run_id)["state"]
    assert (manager.root / run_id / runs.WEIGHTS).is_file()
    return out


if __name__ == "__main__":
    main()
