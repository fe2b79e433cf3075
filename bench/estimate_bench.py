"""Does the accuracy estimate deliver (issue 22)? Each run trains on a generated dataset (shapes or glyphs, so
fresh images without end can be drawn), then the delivered model (model.safetensors, through vit.predict from
the files, as Classify and the CLI read them) is measured on FRESH_IMAGES new images. The estimate's 95% Wilson
interval should cover that fresh accuracy in at least 90% of the runs.

Baseline, measured in the same runs: the old headline, the best validation accuracy over the epochs with a
Wilson interval on all the validation images (peak-picked on them). Printed: each run's figures, the coverage of
both, and their mean error against the fresh accuracy.

Runs alternate the three ways an estimate is made: a test split ("test"), half of a large validation split held
out ("holdout"), and a validation split too small to hold half out, where nothing is chosen ("unselected").

    python bench/estimate_bench.py              # 24 runs, about 5 minutes on 2 cores
    python bench/estimate_bench.py --runs 6     # a quick look
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vit import predict, samples  # noqa: E402
from vit.data import load_dataset  # noqa: E402
from vit.train import TrainConfig, train  # noqa: E402
from vit.train.metrics import wilson  # noqa: E402

FRESH_IMAGES = 600
# A small ViT from scratch at 32 px, shaped as the app's recipe makes one (no class token, global max pooling):
# a few epochs on a few hundred images land between chance and perfect, where an interval has something to cover.
CONFIG = dict(model="vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
              model_args={"depth": 4, "embed_dim": 64, "num_heads": 2, "class_token": False, "global_pool": "max"},
              batch_size=32, lr=2e-3, warmup_epochs=1, early_stopping=4)
# (generator, way the estimate is made, images per class in one folder or in train/val/test, epochs)
KINDS = [("shapes", "holdout", dict(per_class=90), 15), ("glyphs", "test", dict(train=40, val=12, test=25), 30),
         ("shapes", "unselected", dict(per_class=40), 15), ("glyphs", "holdout", dict(per_class=70), 30)]
GLYPHS = ("0", "1", "2", "3", "4", "5", "6", "7")


def draw(kind: str, dest: Path, per_class: int, seed: int) -> Path:
    if kind == "shapes":
        return samples.make_shapes_dataset(dest, per_class=per_class, size=32, seed=seed)
    return samples.make_glyphs_dataset(dest, per_class=per_class, chars=GLYPHS, seed=seed)


def dataset(kind: str, layout: dict, dest: Path, seed: int) -> Path:
    if "per_class" in layout:
        return draw(kind, dest, layout["per_class"], seed)
    for k, split in enumerate(("train", "val", "test")):
        draw(kind, dest / split, layout[split], seed * 10 + k)
    return dest


def fresh_accuracy(run_dir: Path, kind: str, dest: Path, seed: int) -> float:
    """The delivered model on new images, from the files, as Classify reads them."""
    classes = 3 if kind == "shapes" else len(GLYPHS)
    folder = draw(kind, dest, FRESH_IMAGES // classes, seed)
    loaded = predict.load_model(run_dir)
    files = sorted(p for p in folder.rglob("*.png"))
    right = 0
    for start in range(0, len(files), 64):
        chunk = files[start:start + 64]
        probs = loaded.probabilities([predict.read_image(str(p)) for p in chunk])
        right += sum(loaded.labels[int(i)] == p.parent.name for i, p in zip(probs.argmax(1), chunk))
    return right / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'GPU' if torch.cuda.is_available() else 'CPU only'}; {FRESH_IMAGES} fresh images per run\n")
    print("| run | data | estimate from | images | estimate (95% interval) | fresh | covered | "
          "old: best val (interval) | covered |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            kind, way, layout, epochs = KINDS[k % len(KINDS)]
            root = Path(tmp) / f"r{k}"
            data = dataset(kind, layout, root / "data", seed=100 + k)
            with load_dataset(data, seed=k) as ds:
                n_val = len(ds.val)
                metrics = train(ds, TrainConfig(**CONFIG, epochs=epochs, seed=k), root / "run")
            e = metrics["accuracy_estimate"]
            assert e["from"] == way, (e["from"], way)
            fresh = fresh_accuracy(root / "run", kind, root / "fresh", seed=10_000 + k)
            best = max(r["val_acc"] for r in metrics["history"])  # the old headline, on all validation images
            old = wilson(round(best * n_val), n_val)
            covered, old_covered = e["low"] <= fresh <= e["high"], old[0] <= fresh <= old[1]
            rows.append((e["value"], fresh, covered, best, old_covered))
            print(f"| {k + 1} | {kind} | {e['from']} | {e['images']} | {e['value']:.1%} ({e['low']:.1%}-"
                  f"{e['high']:.1%}) | {fresh:.1%} | {'yes' if covered else 'NO'} | {best:.1%} ({old[0]:.1%}-"
                  f"{old[1]:.1%}) | {'yes' if old_covered else 'NO'} |", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    n = len(rows)
    coverage = sum(r[2] for r in rows) / n
    old_coverage = sum(r[4] for r in rows) / n
    error = sum(r[0] - r[1] for r in rows) / n
    old_error = sum(r[3] - r[1] for r in rows) / n
    print(f"\ncoverage of the fresh accuracy by the estimate's 95% interval: {coverage:.0%} of {n} runs "
          f"(target >= 90%); old headline's: {old_coverage:.0%} (ratio {coverage / max(old_coverage, 1e-9):.2f})")
    print(f"mean (figure - fresh accuracy): estimate {error:+.1%}, old headline {old_error:+.1%}")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
