"""Training from scratch (issue 14): what the from-scratch recipe reaches and how fast, each against a baseline
run in the same process.

1. sample: the app's own code path with its defaults (ui.sample_dataset, then ui.start_training with From
   scratch and every field empty, through the job manager), Start to finished. Baseline: the previous
   default (40 shapes per class, 10 epochs, 64-px inputs, patch 8, 4 blocks, lr 5e-4). Targets: >= 95%
   validation accuracy, <= 60 s on 2 CPU cores.
2. glyphs: digits drawn in the machine's fonts at random size, stroke, rotation and position, reduced to
   16 px and enlarged to 32 (like low-resolution scans), 10 classes x 180, trained with
   `python -m vit train --data D --no-pretrained` and nothing else. Baseline (--baseline): the command of
   the issue (--no-pretrained --img-size 32 --patch-size 4 --epochs 12, the fine-tuning recipe otherwise).
   Target: >= 95% within 10 minutes. With scikit-learn installed, its 8x8 digit scans (1,797 images,
   enlarged to 32 px) are trained the same way and reported too.
3. progressive: progressive resizing against a fixed size on the glyphs, with an 8x8 grid of tokens
   (--patch-size 4 --epochs 30; the recipe's own 4x4 grid is not shrunk, see vit.train.progressive_sizes):
   the time each reaches the fixed run's best accuracy, and the final accuracy of each. Target: 1.3x.

    python bench/scratch_bench.py                       # all three
    python bench/scratch_bench.py --part sample --repeat 3
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vit import runs, samples  # noqa: E402

from _cli import cli_train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["sample", "glyphs", "progressive", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the sample flow (each a fresh seed)")
    ap.add_argument("--baseline", action="store_true", help="glyphs: also run the issue's command (~4 min)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.part in ("sample", "all"):
            sample_flow(tmp, args.repeat)
        if args.part in ("glyphs", "all"):
            glyphs(tmp, args.baseline)
        if args.part in ("progressive", "all"):
            progressive(tmp)


def sample_flow(tmp: Path, repeat: int) -> None:
    from vit import jobs, ui
    from vit.train import TrainConfig
    manager = jobs.JobManager(tmp / "checkpoints", gpus=0)
    try:
        results = []
        for k in range(repeat):
            *_, state, _ = ui.sample_dataset()  # the Data tab's button, at its default size
            seed = {"seed": k} if k else {}
            t0 = time.perf_counter()
            ui.start_training(manager, state, ui.DEFAULT_MODEL, True, None, None, None, "bench", **seed)
            run_id = manager.list()[0]["id"]  # the newest
            final = manager.wait(run_id, 900)
            seconds = time.perf_counter() - t0
            metrics = runs.read_json(manager.root / run_id / runs.METRICS)
            results.append((metrics["val_acc"], seconds))
            config = runs.read_config(manager.root / run_id)["vit_studio"]
            print(f"sample flow, app defaults (seed {k}): {state['name']}, {config['epochs']} epochs at "
                  f"{config['img_size']} px, patch {config['patch_size']}: {final}, validation accuracy "
                  f"{metrics['val_acc']:.1%}, Start to finished {seconds:.1f} s")
        old = TrainConfig(pretrained=False, img_size=64, patch_size=8, model_args={"depth": 4}, lr=5e-4,
                          crop_scale_min=0.6, epochs=10, batch_size=32)
        *_, old_state, _ = ui.sample_dataset(40)
        t0 = time.perf_counter()
        run_id = manager.submit(old_state["path"], old, owner="bench", source_name="old default")
        manager.wait(run_id, 900)
        old_seconds = time.perf_counter() - t0
        old_acc = runs.read_json(manager.root / run_id / runs.METRICS)["val_acc"]
        print(f"baseline, the previous default (40 per class, 10 epochs, 64 px): validation accuracy "
              f"{old_acc:.1%}, Start to finished {old_seconds:.1f} s")
        worst_acc, worst_s = min(a for a, _ in results), max(s for _, s in results)
        print(f"sample flow: worst of {repeat}: {worst_acc:.1%} in {worst_s:.1f} s; accuracy ratio new/old "
              f"{worst_acc / max(old_acc, 1e-9):.2f}; targets >= 95% ({'met' if worst_acc >= 0.95 else 'NOT met'})"
              f", <= 60 s ({'met' if worst_s <= 60 else 'NOT met'})")
    finally:
        manager.shutdown(grace_s=2)


def glyphs(tmp: Path, baseline: bool) -> None:
    data = samples.make_glyphs_dataset(tmp / "glyphs", 180)
    acc, seconds = cli_train(data, tmp / "glyphs-run", ["--no-pretrained"])
    print(f"glyphs (10 digits x 180, 16-px scans at 32 px), --no-pretrained only: validation accuracy {acc:.1%} "
          f"in {seconds:.0f} s (target >= 95% within 600 s: {'met' if acc >= 0.95 and seconds <= 600 else 'NOT met'})")
    if baseline:
        old_acc, old_s = cli_train(data, tmp / "glyphs-old", ["--no-pretrained", "--img-size", "32",
                                                               "--patch-size", "4", "--epochs", "12",
                                                               "--lr", "1e-4", "--crop-scale-min", "0.25"])
        print(f"baseline, the issue's command (fine-tuning recipe, 12 blocks, 12 epochs): {old_acc:.1%} in "
              f"{old_s:.0f} s; ratio new/old accuracy {acc / max(old_acc, 1e-9):.2f}, time {seconds / old_s:.2f}")
    digits = _sklearn_digits(tmp / "digits")
    if digits:
        d_acc, d_s = cli_train(digits, tmp / "digits-run", ["--no-pretrained"])
        print(f"scikit-learn digits (1,797 real 8x8 scans at 32 px), --no-pretrained only: {d_acc:.1%} in {d_s:.0f} s")


def progressive(tmp: Path) -> None:
    data = tmp / "glyphs"
    if not data.exists():
        samples.make_glyphs_dataset(data, 180)
    curves = {}
    for name, flag in (("fixed size", "--no-progressive"), ("progressive", "--progressive")):
        out = tmp / f"prog-{name.split()[0]}"
        acc, seconds = cli_train(data, out, ["--no-pretrained", "--patch-size", "4", "--epochs", "30", flag])
        history = runs.read_json(out / runs.METRICS)["history"]
        clock, curve = 0.0, []
        for row in history:
            clock += row["epoch_time"]
            curve.append((clock, row["val_acc"], row.get("img_size")))
        curves[name] = curve
        sizes = sorted({s for _, _, s in curve if s})
        print(f"{name}: final validation accuracy {history[-1]['val_acc']:.1%} (best {acc:.1%}), training "
              f"{clock:.0f} s over {len(history)} epochs, image sizes {sizes}")
    target = max(a for _, a, _ in curves["fixed size"])
    reach = {name: next((t for t, a, _ in curve if a >= target), None) for name, curve in curves.items()}
    if reach["progressive"] is None:
        print(f"progressive resizing never reached the fixed run's best ({target:.1%}): ratio 0 (target 1.3x)")
        return
    ratio = reach["fixed size"] / reach["progressive"]
    print(f"time to reach {target:.1%} (the fixed run's best): fixed {reach['fixed size']:.0f} s, progressive "
          f"{reach['progressive']:.0f} s; speed-up {ratio:.2f}x (target 1.3x: {'met' if ratio >= 1.3 else 'NOT met'})")


def _sklearn_digits(dest: Path) -> Path | None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("(scikit-learn is not installed: its digit scans are skipped)")
        return None
    import numpy as np
    from PIL import Image
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        (dest / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR).save(
            dest / str(label) / f"{i}.png")
    return dest


if __name__ == "__main__":
    main()
