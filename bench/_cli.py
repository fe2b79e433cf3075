"""What the benchmarks share for the command line: a `python -m vit train` run, timed start to end."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vit import runs

ROOT = Path(__file__).resolve().parents[1]


def cli_train(data: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    """`python -m vit train --data DATA --out OUT FLAGS...`: the run's validation accuracy and the wall time,
    process start included."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vit", "train", "--data", str(data), "--out", str(out), *flags],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"training failed: {done.stderr[-2000:]}")
    return runs.read_json(out / runs.METRICS)["val_acc"], seconds
