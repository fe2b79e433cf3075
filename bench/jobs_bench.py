"""How responsive the web process stays while a background run trains.

Measures the latency of classifying one image in this process (JPEG bytes ->
timm eval transform -> ViT-Tiny at 224 -> softmax, as the app's Classify tab
does) with no training, then while the job manager trains a ViT-Tiny at 224
in its child process, then with no training again. The idle baseline is the
mean of the two idle phases, so machine drift hits both sides. The ratio is
training / idle for the median and the 95th percentile.
Target (issue 4): ratio 2.0 or lower on the 2-core development machine.

The app's protections: the child trains with one thread fewer than there are
cores, at a lower priority, and the web process's classify handler uses the
cores left (JobManager.web_threads). With --compare the same is measured with
the handler keeping every core, and with a child using every core at normal
priority, to show what each protection buys.

    python bench/jobs_bench.py [--samples 150] [--compare]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vit import runs, samples  # noqa: E402
from vit.jobs import JobManager  # noqa: E402
from vit.models import ModelSpec, create_model, data_config  # noqa: E402
from vit.train import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=150, help="classifications per phase")
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--compare", action="store_true",
                    help="also measure without the web thread share, and with an unthrottled child")
    args = ap.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"web-process threads {torch.get_num_threads()}")
    classify, image = _classifier(args.model)
    settings = [("default: child 1 thread fewer than cores at lower priority, web handler uses the rest",
                 {}, True)]
    if args.compare:
        settings += [("web handler keeps every core (no web_threads)", {}, False),
                     ("unthrottled: child uses every core at normal priority, web keeps every core",
                      {"cpu_threads": os.cpu_count(), "niceness": 0}, False)]
    with tempfile.TemporaryDirectory() as tmp:
        data = samples.make_shapes_dataset(Path(tmp) / "shapes", per_class=60, size=128)
        job = TrainConfig(model=args.model, pretrained=False, epochs=1000, batch_size=16, early_stopping=None)
        for k, (name, kw, share) in enumerate(settings):
            manager = JobManager(Path(tmp) / f"checkpoints{k}", gpus=0, **kw)

            def handler(data, manager=manager, share=share):
                torch.set_num_threads(manager.web_threads() if share else os.cpu_count())
                return classify(data)  # the app's classify handler does the same

            print(f"\n{name}\n  ({manager.cpu_threads} training thread(s), niceness {manager.niceness})")
            for _ in range(10):
                handler(image)  # warm-up
            idle1 = _measure(handler, image, args.samples)
            run_id = manager.submit(data, job)
            steps0 = _wait_for_steps(manager, run_id)
            t0 = time.perf_counter()
            busy = _measure(handler, image, args.samples)
            elapsed = time.perf_counter() - t0
            steps1 = _steps(manager, run_id)
            manager.cancel(run_id, grace_s=5)
            manager.wait(run_id, 60)
            manager.shutdown()
            idle2 = _measure(handler, image, args.samples)
            idle = {q: (_q(idle1, q) + _q(idle2, q)) / 2 for q in (50, 95)}
            for label, values in (("idle (before)", idle1), ("training", busy), ("idle (after)", idle2)):
                print(f"  {label:14s} p50 {_q(values, 50):7.1f} ms   p95 {_q(values, 95):7.1f} ms")
            print(f"  training meanwhile: {steps1 - steps0} steps in {elapsed:.1f} s "
                  f"({(steps1 - steps0) * job.batch_size / elapsed:.1f} img/s)")
            print(f"  ratio training/idle: p50 {_q(busy, 50) / idle[50]:.2f}   p95 {_q(busy, 95) / idle[95]:.2f}   "
                  f"(target <= 2.0)")


def _classifier(model_name: str):
    """One image from JPEG bytes to class probabilities, the way the web process classifies."""
    from timm.data import create_transform
    model = create_model(ModelSpec(model_name, pretrained=False), num_classes=3).eval()
    transform = create_transform(**data_config(model), is_training=False)
    buf = io.BytesIO()
    samples.draw_shape("circle", 256, random.Random(0)).save(buf, "JPEG")
    jpeg = buf.getvalue()

    @torch.inference_mode()
    def classify(data: bytes):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return model(transform(img).unsqueeze(0)).softmax(-1)

    return classify, jpeg


def _measure(classify, image, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        classify(image)
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.02)  # requests arrive spaced out, not back to back
    return out


def _steps(manager: JobManager, run_id: str) -> int:
    status = runs.read_status(manager.root / run_id)
    return (status.get("epoch") or 0) * (status.get("steps_per_epoch") or 0) + (status.get("step") or 0)


def _wait_for_steps(manager: JobManager, run_id: str, timeout: float = 300) -> int:
    """Wait until the child is past start-up and the decode cache, in steady training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (runs.read_status(manager.root / run_id).get("step") or 0) >= 2:
            return _steps(manager, run_id)
        time.sleep(0.2)
    raise SystemExit(f"the training run did not start within {timeout:.0f} s: {manager.log_tail(run_id)}")


def _q(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q != 50 else statistics.median(values)


if __name__ == "__main__":
    main()
