"""The app as a user meets it: how long `python app.py` takes to answer, and how long a first training run
takes from clicking Start (sample data, default settings on a CPU machine without Hub access) to finished.
Targets: the page answers in at most 1.5x the time a bare Gradio Blocks app with one textbox takes, started the
same way (issue 16; the two are started in alternation, medians of --starts each), and under 10 s; a first run
in at most 60 s on the 2-core development machine.

    python bench/app_bench.py [--per-class 500] [--starts 3]
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
import statistics
import time
from pathlib import Path

from _serve import wait_until_up

ROOT = Path(__file__).resolve().parents[1]
BARE_APP = """import gradio as gr
with gr.Blocks() as demo:
    gr.Textbox()
demo.launch()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=500, help="sample images per class (the app's default)")
    ap.add_argument("--starts", type=int, default=3, help="timed starts of each app")
    ap.add_argument("--skip-run", action="store_true", help="only the start times")
    args = ap.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRADIO_SERVER_PORT=str(port), VIT_CHECKPOINTS=str(Path(tmp) / "checkpoints"),
                   HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        bare = Path(tmp) / "bare_app.py"
        bare.write_text(BARE_APP)
        times = {"bare": [], "app": []}
        for _ in range(args.starts):  # in alternation, so that machine drift hits both alike
            for name, script in (("bare", bare), ("app", "app.py")):
                proc, seconds = _start([sys.executable, str(script)], env, url)
                _stop(proc)
                times[name].append(seconds)
        bare_s, app_s = statistics.median(times["bare"]), statistics.median(times["app"])
        print(f"python app.py -> page answers: {app_s:.1f} s; a bare Gradio Blocks app (one textbox): {bare_s:.1f} s "
              f"(medians of {args.starts}); ratio {app_s / bare_s:.2f} (target <= 1.5: "
              f"{'met' if app_s / bare_s <= 1.5 else 'NOT met'})")
        if args.skip_run:
            return
        app, seconds = _start([sys.executable, "app.py"], env, url)
        try:
            print(f"python app.py -> page answers (for the run below): {seconds:.1f} s")
            from gradio_client import Client
            client = Client(url, verbose=False)
            client.predict(args.per_class, api_name="/sample_dataset")
            # the Train tab's defaults: the catalog default, from scratch (offline), every other field empty
            t1 = time.perf_counter()
            _, picker = client.predict(model="vit_tiny_patch16_224.augreg_in21k_ft_in1k", scratch=True, owner="bench",
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
            print(f"SIGTERM -> app stopped: {_stop(app):.1f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], env: dict, url: str) -> tuple[subprocess.Popen, float]:
    """`command` started, and the seconds until its page answered (stopped again if it never did)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(url, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, time.perf_counter() - t0


def _stop(proc: subprocess.Popen) -> float:
    """SIGTERM, as docker and Spaces stop an app; the seconds until it exited."""
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
