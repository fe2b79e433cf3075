"""Can the answers be trusted (issue 23)? Three parts, each on models trained here with the app's recipes, measured on
FRESH images drawn after training, read from files as Classify reads them (vit.predict).

- Calibration: the expected calibration error (15 bins) on fresh images before (softmax of the logits) and after
  the run's temperature, for a from-scratch model of the app's sample shapes, one of glyph digits 0-4, and a quick
  model (a head on the glyph model's frozen features) of digits 5-9. Target: after <= 0.03 and at most half of
  before.
- Out of distribution, for the glyph and the quick model: the threshold accepts 95% of the run's held-out images.
  in = fresh images of the training classes; near = unseen classes of the same kind (the other digits, letters);
  far = shapes, noise, blank images, photo-like drawings. Printed per score (mahalanobis: of the features and of
  the first block's tokens; knn: distance to the K-th nearest training feature; msp: max-softmax, the baseline):
  far flagged (target >= 95%), in accepted, near AUROC (target: the chosen score at least 0.05 above max-softmax).
- Imbalance: glyph digits 0-4 at 10:1 (150 to 15 training images per class), tested on balanced fresh images:
  balanced accuracy with class-balanced loss weights, with class-balanced sampling and with neither (target: on at
  least 5 points above off), over two seeds.

    python bench/trust_bench.py                 # about 10 minutes on 2 cores
    python bench/trust_bench.py --part ood      # one part: calibration, ood, imbalance
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diagnose_bench import photo  # noqa: E402

from vit import predict, samples, trust  # noqa: E402
from vit.data import load_dataset  # noqa: E402
from vit.train import TrainConfig, recipe, train  # noqa: E402
from vit.train.metrics import class_averages, holdout  # noqa: E402
from vit.train.recipe import DataFacts  # noqa: E402

FRESH = 120          # fresh images per class (out of distribution, imbalance)
FRESH_CAL = 300      # ... for the calibration error (15 bins need more)
SAMPLE = 500         # the app's sample dataset: shapes per class (vit.ui.common.SAMPLE_PER_CLASS), 96 px
IN, OTHER, LETTERS = tuple("01234"), tuple("56789"), tuple("ACEHKPX")


def trained(work: Path, name: str, data: Path, **settings) -> tuple[Path, Path]:
    """A run of the app's recipe on `data` (from scratch unless weights are given); its folder."""
    t0 = time.perf_counter()
    config = TrainConfig(pretrained=False, **settings) if "weights" not in settings else TrainConfig(**settings)
    with load_dataset(data) as ds:
        m = train(ds, recipe.choose(config, DataFacts.of(ds), given=settings), work / name)
    e = m["accuracy_estimate"]
    print(f"{name}: accuracy {e['value']:.1%} on {e['images']} {e['from']} images, temperature "
          f"{m['calibration']['temperature']}, in {time.perf_counter() - t0:.0f} s", flush=True)
    return work / name, data


def outputs(loaded, pictures: list[Image.Image]) -> tuple[dict, torch.Tensor]:
    """Features (vit.trust.Seen.features) and logits of RGB images, as Classify computes them."""
    batches = [(torch.cat([loaded.preprocess(p) for p in pictures[k:k + 128]]), None)
               for k in range(0, len(pictures), 128)]
    logits, feats = trust.collect(loaded.model, batches, "cpu", contextlib.nullcontext)
    return feats, logits


def files(folder: Path) -> list[Image.Image]:
    return [predict.read_image(p) for p in sorted(folder.rglob("*.png"))]


def labelled(folder: Path, labels: list[str]) -> tuple[list[Image.Image], torch.Tensor]:
    paths = sorted(folder.rglob("*.png"))
    return [predict.read_image(p) for p in paths], torch.tensor([labels.index(p.parent.name) for p in paths])


def calibration(run: Path, fresh: Path) -> tuple[float, float, float, float]:
    """ECE on the fresh images before and after the run's temperature, and with the best temperature there is
    (fitted on the fresh images themselves: the floor of temperature scaling); the fresh accuracy."""
    loaded = predict.load_model(run)
    pictures, y = labelled(fresh, loaded.labels)
    _, logits = outputs(loaded, pictures)
    oracle = trust.fit_temperature(logits, y)
    return (trust.ece(logits.softmax(-1), y), trust.ece(loaded.trust.probabilities(logits), y),
            trust.ece((logits / oracle).softmax(-1), y), float((logits.argmax(1) == y).double().mean()))


def far_images(rng: random.Random, n: int) -> dict[str, list[Image.Image]]:
    gen = np.random.default_rng(rng.randrange(2 ** 32))
    shapes = [samples.draw_shape(rng.choice(samples.SHAPES), 32, rng) for _ in range(n)]
    noise = [Image.fromarray(gen.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n // 2)] + \
        [Image.fromarray(gen.integers(0, 256, (32, 32), dtype=np.uint8)).convert("RGB") for _ in range(n - n // 2)]
    blanks = [Image.new("RGB", (32, 32), c) for c in ("white", "black", (128, 128, 128))] + [
        Image.new("RGB", (32, 32), tuple(int(v) for v in gen.integers(0, 256, 3))) for _ in range(n - 3)]
    photos = [photo(gen, bool(k % 2)) for k in range(n)]
    return {"shapes": shapes, "noise": noise, "blank": blanks, "photos": photos}


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score([0] * len(inside) + [1] * len(outside), torch.cat([inside, outside]).numpy()))


def ood(run: Path, data: Path, work: Path, tag: str, classes: tuple, near: dict[str, tuple]) -> None:
    """Each score's threshold fitted as a run fits it (training features, held-out images of the run's split),
    then measured on fresh in, near and far images."""
    loaded = predict.load_model(run)
    with load_dataset(data) as ds:
        split = holdout(ds, 0)
        items = ds.items
        train_pics = [predict.read_image(items[i].path) for i in trust.bank_sample(ds.labels(ds.train), ds.train)]
        train_y = torch.tensor([loaded.labels.index(items[i].label)
                                for i in trust.bank_sample(ds.labels(ds.train), ds.train)])
        held = split.select + split.estimate  # (as a run sets its threshold: every image not trained on)
        held_pics = [predict.read_image(items[i].path) for i in held]
        held_y = torch.tensor([loaded.labels.index(items[i].label) for i in held])
    train_f, _ = outputs(loaded, train_pics)
    held_f, held_logits = outputs(loaded, held_pics)
    sets = {"in": files(samples.make_glyphs_dataset(work / f"{tag}-in", FRESH, chars=classes, seed=901))}
    for name, chars in near.items():
        sets[name] = files(samples.make_glyphs_dataset(work / f"{tag}-{name}", FRESH, chars=chars, seed=902))
    sets.update(far_images(random.Random(903), 150))
    out = {name: outputs(loaded, pics) for name, pics in sets.items()}
    print(f"\n{tag}: {len(train_y)} training images compared with, threshold on {len(held_y)} validation images "
          f"({split.source})")
    print("| score | in accepted | " + " | ".join(f"{n} flagged" for n in sets if n != "in") + " | far flagged | "
          + " | ".join(f"{n} AUROC" for n in near) + " |")
    print("|---" * (3 + len(sets) + len(near)) + "|")
    results = {}
    for method in trust.METHODS:
        fitted, _ = trust.fit(train_f, train_y, held_logits, held_f, held_y, len(loaded.labels), method=method,
                              chose=len(split.select))
        fitted.temperature = loaded.trust.temperature
        threshold = fitted.threshold()
        scores = {n: fitted.score(f, lg) for n, (f, lg) in out.items()}
        flagged = {n: float((s > threshold).double().mean()) for n, s in scores.items()}
        far = torch.cat([scores[n] for n in ("shapes", "noise", "blank", "photos")])
        far_flagged = float((far > threshold).double().mean())
        aurocs = {n: auroc(scores["in"], scores[n]) for n in near}
        results[method] = (far_flagged, aurocs)
        print(f"| {method}{' (chosen)' if method == trust.METHOD else ''} | {1 - flagged['in']:.1%} | "
              + " | ".join(f"{v:.1%}" for n, v in flagged.items() if n != "in") + f" | {far_flagged:.1%} | "
              + " | ".join(f"{v:.3f}" for v in aurocs.values()) + " |", flush=True)
    chosen, base = results[trust.METHOD], results["msp"]
    print(f"{tag}, {trust.METHOD}: far flagged {chosen[0]:.1%} (target >= 95%); near AUROC "
          + ", ".join(f"{n} {chosen[1][n]:.3f} vs max-softmax {base[1][n]:.3f} ({chosen[1][n] - base[1][n]:+.3f})"
                      for n in near) + " (target >= +0.05)")
    again = trust.fit(train_f, train_y, held_logits, held_f, held_y, len(loaded.labels), chose=len(split.select))[0]
    print(f"(the run's own saved threshold: {loaded.trust.threshold():.4f}; refitted here: {again.threshold():.4f})")


def imbalance(work: Path) -> None:
    counts = dict(zip(IN, (150, 15, 150, 15, 150)))
    fresh = samples.make_glyphs_dataset(work / "imb-fresh", FRESH, chars=IN, seed=905)
    rows = {}
    for seed in (0, 1):
        data = work / f"imb-{seed}"
        for char, n in counts.items():  # 150:15 per class, validation drawn from the same shares
            samples.make_glyphs_dataset(data, n + n // 4, chars=(char,), seed=910 + seed * 10 + IN.index(char))
        for mode in ("off", "weights", "sampling"):
            run, _ = trained(work, f"imb-{seed}-{mode}", data, class_balance=mode, seed=seed)
            loaded = predict.load_model(run)
            pictures, y = labelled(fresh, loaded.labels)
            _, logits = outputs(loaded, pictures)
            balanced, macro = class_averages(list(zip(y.tolist(), logits.argmax(1).tolist())))
            acc = float((logits.argmax(1) == y).double().mean())
            rows.setdefault(mode, []).append((balanced, macro, acc))
    print("\n| class balance | balanced accuracy (seeds) | mean | macro F1 | accuracy |\n|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {', '.join(f'{b:.1%}' for b, _, _ in r)} | {np.mean([b for b, _, _ in r]):.1%} | "
              f"{np.mean([m for _, m, _ in r]):.3f} | {np.mean([a for _, _, a in r]):.1%} |")
    off = np.mean([b for b, _, _ in rows["off"]])
    for mode in ("weights", "sampling"):
        print(f"{mode}: balanced accuracy {np.mean([b for b, _, _ in rows[mode]]) - off:+.1%} over no balancing "
              "(target >= +5 points)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["calibration", "ood", "imbalance"], action="append")
    args = parser.parse_args()
    parts = args.part or ["calibration", "ood", "imbalance"]
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'GPU' if torch.cuda.is_available() else 'CPU only'}; {FRESH} fresh images per class\n")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if {"calibration", "ood"} & set(parts):
            shapes = trained(work, "shapes", samples.make_shapes_dataset(work / "shapes-data", SAMPLE, seed=1))
            glyphs = trained(work, "glyphs", samples.make_glyphs_dataset(work / "glyphs-data", 120, chars=IN, seed=2))
            quick = trained(work, "quick", samples.make_glyphs_dataset(work / "quick-data", 60, chars=OTHER, seed=3),
                            weights=str(glyphs[0]), quick=True)
        if "calibration" in parts:
            print("\n| model | fresh accuracy | ECE before | ECE after | after / before | floor (best temperature on "
                  "the fresh images) |\n|---|---|---|---|---|---|")
            for name, (run, _), fresh in (
                    ("the sample shapes, from scratch", shapes, samples.make_shapes_dataset(work / "s-fresh",
                                                                                            FRESH_CAL, seed=11)),
                    ("glyphs 0-4, from scratch", glyphs, samples.make_glyphs_dataset(work / "g-fresh", FRESH_CAL,
                                                                                     chars=IN, seed=12)),
                    ("glyphs 5-9, quick model", quick, samples.make_glyphs_dataset(work / "q-fresh", FRESH_CAL,
                                                                                   chars=OTHER, seed=13))):
                before, after, floor, acc = calibration(run, fresh)
                print(f"| {name} | {acc:.1%} | {before:.4f} | {after:.4f} | {after / max(before, 1e-9):.2f} | "
                      f"{floor:.4f} |", flush=True)
        if "ood" in parts:
            ood(*glyphs, work, "glyphs 0-4 (from scratch)", IN, {"digits 5-9": OTHER, "letters": LETTERS})
            ood(*quick, work, "glyphs 5-9 (quick model)", OTHER, {"digits 0-4": IN, "letters": LETTERS})
        if "imbalance" in parts:
            imbalance(work)
    print(f"\nwall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
