"""Training engine speed and memory, each against a baseline measured in the same run.

1. Steady-state throughput of the engine (real JPEG files -> decode cache -> timm
   augmentation -> model) against a bare loop on ready tensors with the same timm
   model, batch, image size and optimizer. The two alternate step by step: after each
   engine step (full batches after the first epoch, each timed from the end of the
   bare step before it, an epoch's first step left out) one bare step is timed, so
   that machine drift hits both alike; medians. Target (issue 16): ratio 0.97 or better.
2. Peak RSS of an engine run of vit_tiny on 1,000 images against the bare loop's,
   each in its own process.
3. With --device cuda: bf16 training throughput and the fraction of the GPU's bf16
   peak it reaches (FLOPs counted by torch's FlopCounterMode; --peak-tflops sets the peak).

    python bench/train_bench.py                      # CPU: vit_tiny at 224, batch 32
    python bench/train_bench.py --device cuda --model vit_base_patch16_224 --batch-size 128
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vit import samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=320, help="JPEGs for the throughput comparison")
    ap.add_argument("--epochs", type=int, default=4, help="engine epochs; the first is warm-up")
    ap.add_argument("--rss-images", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="engine data loader workers (default: the engine's)")
    ap.add_argument("--child", choices=["engine", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(f"model {args.model} (random init), image {args.img_size}, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_jpegs(Path(tmp) / "data", args.images)
        engine, bare, pairs = paired_throughput(args, data, Path(tmp) / "run")
        print(f"bare loop (ready tensors):        {bare:8.1f} images/s")
        print(f"engine (JPEG -> cache -> augment): {engine:8.1f} images/s   (medians of {pairs} alternating steps)")
        met = "met" if engine / bare >= 0.97 else "NOT met"
        print(f"ratio engine / bare loop: {engine / bare:.3f}   (target >= 0.97: {met})")
        if args.device == "cuda":
            flops = train_flops_per_image(args)
            achieved = bare * flops / 1e12
            print(f"bf16 training: {flops / 1e9:.1f} GFLOP per image, {achieved:.0f} TFLOP/s = "
                  f"{achieved / args.peak_tflops:.1%} of a {args.peak_tflops:g} TFLOP/s peak (bare loop); "
                  f"engine {engine * flops / 1e12:.0f} TFLOP/s")
        if not args.skip_rss:
            rss_data = _write_jpegs(Path(tmp) / "rss", args.rss_images)
            engine_mb = _child_peak_rss(args, "engine", rss_data)
            bare_mb = _child_peak_rss(args, "bare", rss_data)
            print(f"peak RSS, engine run on {args.rss_images} JPEGs (1 epoch): {engine_mb:7.0f} MiB")
            print(f"peak RSS, bare loop on one ready batch:           {bare_mb:7.0f} MiB")
            print(f"ratio engine / bare loop RSS: {engine_mb / bare_mb:.2f}")


def paired_throughput(args, data: Path, run_dir: Path) -> tuple[float, float, int]:
    """Engine and bare-loop images/s, one bare step after each engine step (see the module's docstring)."""
    from vit.data import load_dataset
    from vit.train import train
    config = _engine_config(args)
    bare_step = _bare_stepper(args)
    engine_s, bare_s, last = [], [], [time.perf_counter()]

    def on_event(e):
        if e["type"] != "step":
            return
        took = time.perf_counter() - last[0]
        if e["epoch"] >= 1 and e["step"] > 1 and e["images"] == args.batch_size:
            engine_s.append(took)
            bare_s.append(bare_step())
        last[0] = time.perf_counter()

    with load_dataset(data, val_fraction=config.val_fraction) as ds:
        train(ds, config, run_dir, on_event=on_event)
    if not engine_s:
        sys.exit("no steady-state steps: give more --images or --epochs")
    return (args.batch_size / statistics.median(engine_s), args.batch_size / statistics.median(bare_s),
            len(engine_s))


def _bare_stepper(args):
    """One timed step of the bare loop (seconds) per call, on its own model and ready tensors."""
    model, optimizer = _model_and_optimizer(args)
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 3, (args.batch_size,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up
        step()
    return step


def _engine_config(args):
    from vit.train import TrainConfig
    return TrainConfig(model=args.model, pretrained=False, img_size=args.img_size, epochs=args.epochs,
                       batch_size=args.batch_size, early_stopping=None, val_fraction=0.05, device=args.device,
                       workers=args.workers)


def train_flops_per_image(args) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model, _ = _model_and_optimizer(args)
    x = torch.randn(2, 3, args.img_size, args.img_size, device=args.device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def _model_and_optimizer(args):
    import timm
    import timm.optim
    model = timm.create_model(args.model, pretrained=False, num_classes=3, img_size=args.img_size).to(args.device)
    model.train()
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    return model, optimizer


def _child(args) -> None:
    """Run one side of the memory comparison in this process and print its peak RSS."""
    if args.child == "engine":
        from vit.data import load_dataset
        from vit.train import train
        args.epochs = 1
        config = _engine_config(args)
        with load_dataset(Path(args.data), val_fraction=config.val_fraction) as ds:
            train(ds, config, Path(tempfile.mkdtemp()))
    else:
        _bare_stepper(args)()  # two warm-up steps and a timed one
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _child_peak_rss(args, which: str, data: Path) -> float:
    cmd = [sys.executable, __file__, "--child", which, "--data", str(data), "--model", args.model,
           "--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the {which} memory run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def _write_jpegs(root: Path, count: int) -> Path:
    rng = random.Random(0)
    for k in range(count):
        shape = samples.SHAPES[k % len(samples.SHAPES)]
        (root / shape).mkdir(parents=True, exist_ok=True)
        samples.draw_shape(shape, (500, 375), rng).save(root / shape / f"{k:04d}.jpg", quality=90)
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


if __name__ == "__main__":
    main()
