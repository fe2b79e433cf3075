"""Do the data diagnostics cry wolf (issue 22)? Likely label errors (confident learning, cleanlab) and
near-duplicates (the threshold calibrated on copies of the dataset's own images), read from a quick model's
frozen features, as the app shows them.

- Planted label flips, 1% and 5%, in new drawings of shapes and of digit glyphs, read with a backbone trained on
  that generator (the app's from-scratch recipe): precision and recall in the first 2k listed (k flipped), and
  how many are listed in all. Ten resized or re-encoded copies are added: the near-duplicate pairs found.
- Clean photo-like images (two classes that differ only subtly) read with a weak backbone (a ViT-Tiny with
  random weights at 64 px): the share of images flagged (target <= 2.5%) and the near-duplicate pairs, which
  must be the real copies added or none.
- Baseline, in the same runs: the rule it replaces (every image that a head fitted without it finds more like
  another class: the cross-validated mistakes, (1 - cv accuracy) x images).

    python bench/diagnose_bench.py          # about 5 minutes on 2 cores
"""
from __future__ import annotations

import io
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vit import runs, samples  # noqa: E402
from vit.data import load_dataset  # noqa: E402
from vit.train import TrainConfig, recipe, train  # noqa: E402
from vit.train.recipe import DataFacts  # noqa: E402

DIGITS = tuple("01234567")


def source_model(work: Path, kind: str) -> Path:
    """A backbone that knows the generator: the app's from-scratch recipe on its images."""
    data = (samples.make_shapes_dataset(work / f"{kind}-source", per_class=200, size=32, seed=1) if kind == "shapes"
            else samples.make_glyphs_dataset(work / f"{kind}-source", per_class=150, chars=DIGITS, seed=1))
    t0 = time.perf_counter()
    with load_dataset(data) as ds:
        m = train(ds, recipe.choose(TrainConfig(pretrained=False), DataFacts.of(ds)), work / f"{kind}-run")
    print(f"source ({kind}): {m['accuracy_estimate']['value']:.1%} accuracy in {time.perf_counter() - t0:.0f} s")
    return work / f"{kind}-run"


def weak_backbone(work: Path) -> Path:
    """ViT-Tiny with random weights at 64 px, saved in timm's format: features that know nothing."""
    import timm
    from timm.models import save_for_hf
    folder = work / "random-vit-tiny"
    torch.manual_seed(0)
    save_for_hf(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=2), folder,
                safe_serialization=True)
    return folder


def photo(rng: np.random.Generator, brighter: bool) -> Image.Image:
    """A photo-like image: gradients, a blob a little brighter in one class than in the other, noise."""
    w, h = int(rng.integers(160, 320)), int(rng.integers(120, 240))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = rng.uniform(40, 200, 3) + xx[..., None] / w * rng.uniform(-80, 80, 3) + yy[..., None] / h * rng.uniform(
        -80, 80, 3)
    cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.15, 0.3) * min(w, h)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += rng.uniform(10, 50, 3) * (1 if brighter else -1)
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def add_copies(folder: Path, rng: random.Random, n: int = 10) -> set:
    """n near-duplicates: resized or re-encoded copies of images in the folder; the pairs, by name."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    pairs = set()
    for k, f in enumerate(rng.sample(files, n)):
        img = Image.open(f).convert("RGB")
        if k % 2:
            img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=75)
        dest = f.parent / f"copy-{f.stem}.jpg"
        dest.write_bytes(buf.getvalue())
        pairs.add(frozenset({f"{f.parent.name}/{f.name}", f"{f.parent.name}/{dest.name}"}))
    return pairs


def flip(folder: Path, classes: tuple, share: float, rng: random.Random) -> set:
    files = sorted(folder.rglob("*.png"))
    moved = set()
    for f in rng.sample(files, max(1, round(share * len(files)))):
        other = rng.choice([c for c in classes if c != f.parent.name])
        dest = folder / other / f"flipped-{f.parent.name}-{f.name}"
        f.rename(dest)
        moved.add(f"{other}/{dest.name}")
    return moved


def quick(data: Path, weights: Path, out: Path) -> tuple[dict, dict, int]:
    with load_dataset(data) as ds:
        m = train(ds, TrainConfig(weights=str(weights), quick=True), out)
        n = len(ds.items)
    return runs.read_json(out / runs.DIAGNOSTICS), m, n


def pairs_line(report: dict, copies: set) -> str:
    found = [frozenset({p["a"], p["b"]}) for p in report["near_duplicates"]]
    real = sum(p in copies for p in found)
    judged = report["judged"]["near_duplicates"]
    return (f"near-duplicates: {len(found)} pairs shown, {real} of the {len(copies)} copies added (precision "
            f"{real / max(len(found), 1):.2f}, recall {real / len(copies):.2f}); threshold {judged['threshold']}"
            + ("" if judged["ok"] else f" - withheld: {judged['why']}"))


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'GPU' if torch.cuda.is_available() else 'CPU only'}\n")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind, classes, per_class in (("shapes", ("circle", "square", "triangle"), 300), ("glyphs", DIGITS, 120)):
            source = source_model(work, kind)
            for share in (0.01, 0.05):
                rng = random.Random(int(share * 100))
                data = work / f"{kind}-{share}"
                shutil.rmtree(data, ignore_errors=True)
                if kind == "shapes":
                    samples.make_shapes_dataset(data, per_class=per_class, size=32, seed=7)
                else:
                    samples.make_glyphs_dataset(data, per_class=per_class, chars=DIGITS, seed=7)
                moved = flip(data, classes, share, rng)
                copies = add_copies(data, rng)
                report, m, n = quick(data, source, work / f"q-{kind}-{share}")
                listed = [e["name"] for e in report["label_errors"]]
                top = listed[:2 * len(moved)]
                hits = sum(name in moved for name in top)
                cv = report["judged"]["labels"]["cv_acc"]
                print(f"{kind}, {share:.0%} flipped ({len(moved)} of {n}): the first {len(top)} listed hold {hits}: "
                      f"precision {hits / max(len(top), 1):.2f}, recall {hits / len(moved):.2f}; "
                      f"{report['suspects']} listed in all; probe cv accuracy {cv:.1%}; old rule: "
                      f"{round((1 - cv) * n)} flagged")
                print(f"  {pairs_line(report, copies)}")
        weak = weak_backbone(work)
        rng, gen = random.Random(3), np.random.default_rng(3)
        data = work / "photos"
        for cls, brighter in (("ants", True), ("bees", False)):
            (data / cls).mkdir(parents=True)
            for k in range(200):
                photo(gen, brighter).save(data / cls / f"{k:03d}.jpg", quality=90)
        copies = add_copies(data, rng)
        report, m, n = quick(data, weak, work / "q-photos")
        cv = report["judged"]["labels"]["cv_acc"]
        flagged = report["suspects"]
        print(f"clean photo-like images, weak backbone ({n} images, quick model "
              f"{m['accuracy_estimate']['value']:.1%}): {flagged} flagged ({flagged / n:.1%}; target <= 2.5%: "
              f"{'met' if flagged / n <= 0.025 else 'NOT met'}); probe cv accuracy {cv:.1%}; old rule: "
              f"{round((1 - cv) * n)} flagged ({1 - cv:.1%})"
              + ("" if report["judged"]["labels"]["ok"] else f"; the app says: {report['judged']['labels']['why']}"))
        print(f"  {pairs_line(report, copies)}")
    print(f"\nwall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
