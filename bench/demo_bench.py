"""The demo Space's app (issue 28): start to first answer, and per-image latency, on this machine's CPU.

A ViT-Tiny@224 (random weights: none can be downloaded here; the timing does not depend on them) is saved as a run,
pushed to the fake Hub (tests/fake_hub.py), and the demo app ViT Studio writes for it (vit.hub.share.write_demo)
is started as a Space would start it (`python app.py`), with an empty Hugging Face cache, so that its start
includes the model's download. A client (gradio_client) then classifies one image (the first answer) and 20 more.

Baselines, measured in the same run:
- start: the imports alone (`python -c "import gradio, timm, torch"`): what any such app pays before its model;
- per image: the bare model's forward in PyTorch (timm's eval transform included) in this process: what the app
  adds is Gradio's round trip, the image's upload and the heatmap.

    python bench/demo_bench.py
"""
from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_hub import FakeHub  # noqa: E402

IMAGES = 20


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fake = FakeHub()
        try:
            run = save_model(tmp / "run")
            from huggingface_hub import constants
            constants.HF_HUB_OFFLINE = False
            from vit import hub
            hub.push_run(run, "alice/tiny224", "hf_write_alice", endpoint=fake.url)
            folder = hub.share.write_demo(tmp / "space", "alice/tiny224")
            photos = [photo(tmp / f"{k}.jpg", k) for k in range(IMAGES + 1)]
            time_imports(fake.url, tmp)  # (once cold: the disk cache filled, as on a Space that has started before)
            imports = time_imports(fake.url, tmp)
            first, latencies = run_demo(folder, fake.url, tmp, photos)
            bare = bare_forward(run, photos)
            inside = in_process(folder, fake.url, tmp, photos)
        finally:
            fake.close()
    print(f"\nstart to first answer: {first:.1f} s (imports alone: {imports:.1f} s; the app adds "
          f"{first - imports:.1f} s: the model's download and build, Gradio's start, the first answer)")
    app, base = statistics.median(latencies), statistics.median(bare)
    print(f"per image (median of {IMAGES}): {app * 1000:.0f} ms through the app, against {base * 1000:.0f} ms for "
          f"the bare forward ({app / base:.2f}x); of which the app's classify() (forward without fused attention, "
          f"rollout, overlay): {statistics.median(inside) * 1000:.0f} ms, the rest Gradio's round trip and the upload")


def save_model(dest: Path) -> Path:
    import timm

    from vit import runs
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
    dest.mkdir(parents=True)
    runs.save_model(dest, model, ["ant", "bee", "wasp", "fly", "moth"], {"model": "vit_tiny_patch16_224"})
    return dest


def photo(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
    return path


def demo_env(endpoint: str, tmp: Path, port: int = 0) -> dict:
    """The environment the demo app runs in (and the imports' baseline, the same)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIT_", "GRADIO_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf-home"), GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    return env


def time_imports(endpoint: str, tmp: Path) -> float:
    """From the process's start to its imports done (not to its exit: a Python holding torch and gradio takes
    seconds to shut down)."""
    t = time.time()
    done = subprocess.run([sys.executable, "-c", "import gradio, timm, torch, time; print(time.time())"], check=True,
                          env=demo_env(endpoint, tmp), capture_output=True, text=True)
    return float(done.stdout.split()[-1]) - t


def run_demo(folder: Path, endpoint: str, tmp: Path, photos: list[Path]) -> tuple[float, list[float]]:
    from gradio_client import Client, handle_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = demo_env(endpoint, tmp, port)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit("the demo app stopped")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(0.2)
        client.predict(handle_file(str(photos[0])), api_name="/classify")
        first = time.perf_counter() - t0
        latencies = []
        for p in photos[1:]:
            t = time.perf_counter()
            client.predict(handle_file(str(p)), api_name="/classify")
            latencies.append(time.perf_counter() - t)
        return first, latencies
    finally:
        proc.kill()
        proc.wait()


def in_process(folder: Path, endpoint: str, tmp: Path, photos: list[Path]) -> list[float]:
    """The demo app's classify() called in this process, on the same images."""
    import importlib.util

    from huggingface_hub import constants
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    spec = importlib.util.spec_from_file_location("demo_app", folder / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    app.classify(Image.open(photos[0]))
    times = []
    for p in photos[1:]:
        image = Image.open(p)
        t = time.perf_counter()
        app.classify(image)
        times.append(time.perf_counter() - t)
    import timm
    timm.layers.set_fused_attn(True)  # (the app turned it off for every model of this process)
    return times


def bare_forward(run: Path, photos: list[Path]) -> list[float]:
    import timm
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    times = []
    with torch.inference_mode():
        for p in photos[1:]:
            t = time.perf_counter()
            model(transform(Image.open(p).convert("RGB")).unsqueeze(0)).softmax(-1)
            times.append(time.perf_counter() - t)
    return times


if __name__ == "__main__":
    main()
