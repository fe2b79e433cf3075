"""A useful model in seconds (issue 15): the quick model, LP-FT and the data diagnostics, on a transfer case
built here (no pretrained weights can be downloaded on this machine).

- source weights: a small ViT trained from scratch (the app's recipe) on 8 digit glyphs x 180;
- target: 8 letters x 50 = 400 images of a different family, drawn the same way;
- quick model (a head fitted on the source's frozen features): accuracy and wall time, in process (cold
  and warm feature cache, and with mirror images), and `python -m vit train --quick` start to end; the same
  command with ViT-Tiny at 224 px and at 64 px (random weights saved here: time only, accuracy meaningless).
  Target: 400 images in <= 30 s on 2 cores, feature extraction included;
- full fine-tuning from the source weights (the fine-tuning recipe) with and without LP-FT, 3 seeds each;
- diagnostics on a copy of the target (and of new drawings of the source's own digits) with 5% of the
  labels flipped and 10 near-duplicates added: the label-error finder's precision and recall in its top
  2x-flipped ranks (target recall >= 0.8), and the near-duplicate pairs found.

    python bench/probe_bench.py                 # about 6 minutes on 2 cores
    python bench/probe_bench.py --keep /tmp/pb  # keep (and reuse) the source model and datasets there
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vit import runs, samples  # noqa: E402
from vit.data import load_dataset  # noqa: E402
from vit.train import TrainConfig, recipe, train  # noqa: E402

from _cli import cli_train  # noqa: E402

LETTERS = tuple("ABCDEFGH")
DIGITS = tuple("01234567")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="a folder to keep the source model and datasets in (reused when there)")
    ap.add_argument("--part", choices=["quick", "lpft", "diagnose", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per arm")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.keep) if args.keep else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        source = _source(work)
        target = work / "letters"
        if not target.is_dir():
            samples.make_glyphs_dataset(target, 50, chars=LETTERS, seed=1)
        if args.part in ("quick", "all"):
            quick(work, source, target)
        if args.part in ("lpft", "all"):
            lp_ft(work, source, target, args.seeds)
        if args.part in ("diagnose", "all"):
            diagnose(work, source, target, LETTERS, "letters (another family)")
            digits = work / "digits-new"
            if not digits.is_dir():
                samples.make_glyphs_dataset(digits, 50, chars=DIGITS, seed=2)
            diagnose(work, source, digits, DIGITS, "new drawings of the source's digits")


def _source(work: Path) -> Path:
    run = work / "source"
    if (run / runs.METRICS).is_file():
        print(f"source: reused {run}")
        return run
    shutil.rmtree(run, ignore_errors=True)
    data = samples.make_glyphs_dataset(work / "digits", 180, chars=DIGITS)
    t0 = time.perf_counter()
    with load_dataset(data) as ds:
        config = recipe.choose(TrainConfig(pretrained=False), recipe.DataFacts.of(ds))
        metrics = train(ds, config, run)
    print(f"source: from scratch on 8 digits x 180 (the recipe: {config.epochs} epochs at {config.img_size} px): "
          f"{metrics['val_acc']:.1%} in {time.perf_counter() - t0:.0f} s")
    return run


def quick(work: Path, source: Path, target: Path) -> None:
    root = work / "quick"
    shutil.rmtree(root, ignore_errors=True)
    with load_dataset(target) as ds:
        for name, flip in (("cold feature cache", False), ("warm feature cache", False),
                           ("with mirror images", True)):
            t0 = time.perf_counter()
            m = train(ds, TrainConfig(weights=str(source), quick=True, probe_flip=flip), root / name.split()[0])
            print(f"quick model in process, {name}: validation accuracy {m['val_acc']:.1%} in "
                  f"{time.perf_counter() - t0:.1f} s ({len(ds.items)} images)")
    shapes = work / "shapes"  # a family a mirror image does not change
    if not shapes.is_dir():
        samples.make_shapes_dataset(shapes, 133, size=32, seed=3)
    with load_dataset(shapes) as ds:
        for flip in (False, True):
            m = train(ds, TrainConfig(weights=str(source), quick=True, probe_flip=flip), root / f"shapes-{flip}")
            print(f"quick model on 3 shapes x 133 (mirror-symmetric classes), {'with' if flip else 'without'} "
                  f"mirror images: validation accuracy {m['val_acc']:.1%}")
    acc, seconds = _cli(target, work / "cli" / "quick", ["--weights", str(source), "--quick"])
    print(f"quick model, `python -m vit train --quick --weights SOURCE`, start to end: {acc:.1%} in {seconds:.1f} s "
          f"(target <= 30 s: {'met' if seconds <= 30 else 'NOT met'})")
    for size in (224, 64):
        folder = _random_vit_tiny(work, size)
        acc, seconds = _cli(target, work / "cli" / f"tiny{size}", ["--weights", str(folder), "--quick"])
        print(f"quick model, ViT-Tiny at {size} px (random weights: time only), start to end: {seconds:.1f} s "
              f"(target <= 30 s: {'met' if seconds <= 30 else 'NOT met'})")


SETTINGS = {"the fine-tuning recipe": {},  # TrainConfig's defaults: lr 1e-4, 10 epochs, early stopping 5
            "lr 1e-3, 20 epochs, no early stopping, no flips": dict(lr=1e-3, epochs=20, early_stopping=None,
                                                                    hflip=0.0)}


def lp_ft(work: Path, source: Path, target: Path, seeds: int) -> None:
    root = work / "lpft"
    shutil.rmtree(root, ignore_errors=True)
    with load_dataset(target) as ds:
        for k, (setting, over) in enumerate(SETTINGS.items()):
            results = {}
            for arm, flag in (("fine-tuning", False), ("LP-FT", True)):
                accs, times = [], []
                for seed in range(seeds):
                    t0 = time.perf_counter()
                    m = train(ds, TrainConfig(weights=str(source), lp_ft=flag, seed=seed, **over),
                              root / f"{k}-{arm}-{seed}")
                    accs.append(m["val_acc"])
                    times.append(time.perf_counter() - t0)
                results[arm] = (statistics.mean(accs), statistics.mean(times))
                print(f"{arm} from the source weights, {setting} (seeds 0-{seeds - 1}): validation accuracy "
                      f"{', '.join(f'{a:.1%}' for a in accs)} (mean {results[arm][0]:.1%}), mean "
                      f"{results[arm][1]:.0f} s")
            (ft, ft_s), (lp, lp_s) = results["fine-tuning"], results["LP-FT"]
            print(f"LP-FT against fine-tuning, {setting}: accuracy {lp - ft:+.1%} (ratio {lp / max(ft, 1e-9):.2f}), "
                  f"time ratio {lp_s / ft_s:.2f}; {'no worse' if lp >= ft - 0.005 else 'WORSE'}")


def diagnose(work: Path, source: Path, target: Path, classes: tuple, title: str) -> None:
    print(f"diagnostics on {title}:")
    noisy = work / f"{target.name}-noisy"
    shutil.rmtree(noisy, ignore_errors=True)
    shutil.copytree(target, noisy)
    rng = random.Random(5)
    files = sorted(noisy.rglob("*.png"))
    flipped = rng.sample(files, round(0.05 * len(files)))
    moved = set()
    for f in flipped:  # a wrong label: the file moved into another class's folder
        other = rng.choice([c for c in classes if c != f.parent.name])
        dest = noisy / other / f"flipped-{f.parent.name}-{f.name}"
        f.rename(dest)
        moved.add(f"{other}/{dest.name}")
    from PIL import Image
    copies = set()
    for f in rng.sample([f for f in files if f not in flipped], 10):  # near-duplicates: resized, re-encoded
        img = Image.open(f).convert("L").resize((30, 30)).resize((32, 32))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        dest = f.parent / f"copy-{f.stem}.jpg"
        dest.write_bytes(buf.getvalue())
        copies.add(frozenset({f"{f.parent.name}/{f.name}", f"{f.parent.name}/{dest.name}"}))
    with load_dataset(noisy) as ds:
        t0 = time.perf_counter()
        m = train(ds, TrainConfig(weights=str(source), quick=True), work / "diagnose" / noisy.name)
        seconds = time.perf_counter() - t0
    report = runs.read_json(work / "diagnose" / noisy.name / runs.DIAGNOSTICS)
    top = [e["name"] for e in report["label_errors"][:2 * len(moved)]]
    hits = sum(name in moved for name in top)
    print(f"label errors: {len(moved)} of {len(files)} labels flipped; the top {2 * len(moved)} suspects hold {hits}: "
          f"recall {hits / len(moved):.2f} (target >= 0.8: {'met' if hits / len(moved) >= 0.8 else 'NOT met'}), "
          f"precision {hits / max(len(top), 1):.2f} of the {len(top)} listed; {len(report['label_errors'])} "
          f"flagged in all (quick model with diagnostics: {m['val_acc']:.1%} in {seconds:.1f} s)")
    flagged = report["label_errors"]
    found = sum(e["name"] in moved for e in flagged)
    print(f"label errors, every image flagged (another class more likely; {report['suspects']} in all, the first "
          f"{len(flagged)} kept): precision {found / max(len(flagged), 1):.2f}, recall {found / len(moved):.2f}")
    pairs = [frozenset({p["a"], p["b"]}) for p in report["near_duplicates"]]
    true_pairs = sum(p in copies for p in pairs)
    print(f"near-duplicates: {len(copies)} added (resized and re-encoded copies); {len(pairs)} pairs flagged, "
          f"{true_pairs} of them added ones (recall {true_pairs / len(copies):.2f}, precision "
          f"{true_pairs / max(len(pairs), 1):.2f}); {sum(p['leak'] for p in report['near_duplicates'])} cross "
          f"from train into validation; learning curve: "
          + ", ".join(f"{p['images']} images {p['val_acc']:.1%}" for p in report["learning_curve"]["points"]))


def _random_vit_tiny(work: Path, size: int) -> Path:
    """ViT-Tiny with random weights, saved in timm's format (as a pretrained download would be)."""
    import timm
    from timm.models import save_for_hf
    folder = work / f"vit-tiny-{size}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size, num_classes=8)
        save_for_hf(model, folder, safe_serialization=True)
    return folder


def _cli(data: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    """cli_train with a cold feature cache and a fresh run directory."""
    shutil.rmtree(out.parent / runs.FEATURES, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return cli_train(data, out, flags)


if __name__ == "__main__":
    main()
