"""Classify under load (issue 12): 20 visitors send /classify at once to the app. Served one at a time
(VIT_CLASSIFY_CONCURRENCY=1, the old behaviour) against several at once on model replicas (the default:
one per core, at most 4), both in this run: per-request latency p50/p95 and images/s, and their ratio.

    python bench/classify_bench.py [--requests 20] [--method chefer] [--img-size 224] [--also 4 8]

The model is a ViT-Tiny/16 at 224 px with random weights (3 classes): the compute of the catalog default,
with no download. Each request is one JPEG of 640x480, explained with the app's default heatmap method.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve import wait_until_up

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--method", default="chefer", help="heatmap method (chefer, rollout, attention, gradcam)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--also", type=int, nargs="*", default=[], help="other VIT_CLASSIFY_CONCURRENCY values to try")
    args = ap.parse_args()
    import torch
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.requests} concurrent /classify requests, method {args.method}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "checkpoints"
        run_id = _model_run(root, args.img_size)
        images = _images(Path(tmp), args.requests)
        results = {}
        settings = [("one at a time", "1"), ("concurrent (default)", "")]
        settings += [(f"concurrent, {n} at once", str(n)) for n in args.also]
        for label, concurrency in settings:
            results[label] = _measure(root, run_id, images, args.method, concurrency)
    base = results["one at a time"]
    print("\n| serving | concurrency | p50 | p95 | images/s |\n|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['concurrency']} | {r['p50']:.2f} s | {r['p95']:.2f} s | {r['rate']:.2f} |")
    new = results["concurrent (default)"]
    print(f"\nthroughput ratio (concurrent / one at a time): {new['rate'] / base['rate']:.2f}x; "
          f"p50 ratio {new['p50'] / base['p50']:.2f}, p95 ratio {new['p95'] / base['p95']:.2f}")


def _model_run(root: Path, img_size: int) -> str:
    """A finished run holding a ViT-Tiny/16 with random weights, as the app would find it."""
    import timm
    from vit import models, runs
    run_dir = runs.create_run_dir(root, "vit_tiny_patch16_224")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=img_size)
    runs.save_model(run_dir, model, ["circle", "square", "triangle"], {"model": "vit_tiny_patch16_224"},
                    data_config=models.data_config(model))
    runs.update_status(run_dir, "completed", message="bench model")
    return run_dir.name


def _images(folder: Path, n: int) -> list[str]:
    import random
    from vit import samples
    paths = []
    for i in range(n):
        path = folder / f"photo{i}.jpg"
        samples.draw_shape(samples.SHAPES[i % 3], (640, 480), random.Random(i)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _measure(root: Path, run_id: str, images: list[str], method: str, concurrency: str) -> dict:
    """Start `python app.py` with this concurrency (its own process, as in production: the client's threads
    must not share its interpreter lock) and send it every image at once."""
    from gradio_client import Client, handle_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), VIT_CHECKPOINTS=str(root), VIT_SINGLE_USER="1",
               VIT_CLASSIFY_CONCURRENCY=concurrency)
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, app)
        client = Client(url, verbose=False)
        for path in images[:2]:  # warm: load the model, first forward
            client.predict(run_id, handle_file(path), method, 0.5, None, -1, 0, "bench", api_name="/classify")
        started = time.perf_counter()
        submitted = [(time.perf_counter(), client.submit(run_id, handle_file(p), method, 0.5, None, -1, 0, "bench",
                                                         api_name="/classify")) for p in images]
        latencies = []
        for t0, job in submitted:
            job.result(timeout=600)
            latencies.append(_finished(job) - t0)
        wall = time.perf_counter() - started
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(60)
    latencies.sort()
    os.environ["VIT_CLASSIFY_CONCURRENCY"] = concurrency
    from vit.safety import HostLimits
    return {"concurrency": HostLimits.from_env().concurrency, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "rate": len(images) / wall}


def _finished(job) -> float:
    """When the job's result arrived (its status carries the time), in perf_counter seconds."""
    status = job.status()
    arrived = getattr(status, "time", None)
    if arrived is None:
        return time.perf_counter()
    return time.perf_counter() - (time.time() - arrived.timestamp())


if __name__ == "__main__":
    main()
