"""The app as a user meets it: how long `python app.py` takes to answer, and how long a first training run
takes from clicking Start (sample data, default settings on a CPU machine without Hub access) to finished.
Targets (issue 7): under 10 s and under 2 minutes on the 2-core development machine.

    python bench/app_bench.py [--per-class 500]
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve import wait_until_up

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=500, help="sample images per class (the app's default)")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRADIO_SERVER_PORT=str(port), VIT_CHECKPOINTS=str(Path(tmp) / "checkpoints"),
                   HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        t0 = time.perf_counter()
        app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            wait_until_up(url, app)
            started = time.perf_counter() - t0
            print(f"python app.py -> page answers: {started:.1f} s (target < 10 s)")
            from gradio_client import Client
            client = Client(url, verbose=False)
            client.predict(args.per_class, api_name="/sample_dataset")
            # the Train tab's defaults: the catalog default, from scratch (offline), every other field empty
            t1 = time.perf_counter()
            _, picker = client.predict("vit_tiny_patch16_224.augreg_in21k_ft_in1k", True, None, None, None, "bench",
                                       api_name="/start_training")
            run_id = picker["value"]
            while True:
                table, _ = client.predict(run_id, "bench", api_name="/list_runs")
                row = next(r for r in table["data"] if r[-1] == run_id)
                if row[1] not in ("queued", "running"):
                    break
                time.sleep(0.5)
            took = time.perf_counter() - t1
            print(f"Start -> finished run ({args.per_class * 3} sample images, from scratch, the recipe's "
                  f"epochs): {took:.1f} s (target <= 60 s); state {row[1]}, best val acc {row[4]}, epochs {row[3]}")
        finally:
            t2 = time.perf_counter()
            app.send_signal(signal.SIGTERM)
            app.wait(60)
            print(f"SIGTERM -> app stopped: {time.perf_counter() - t2:.1f} s")


if __name__ == "__main__":
    main()
