"""Heatmaps: how faithful each method is, and what it costs on top of classifying.

1. Faithfulness (the perturbation test of Chefer et al. 2021). A ViT is trained from scratch by
   our engine on the generated shapes (or --run gives a trained run). On fresh shape images, each
   map ranks the pixels; removing the top 0-90% (positive perturbation, "deletion") should make the
   probability of the explained class fall fast: lower area is better. Removing the least relevant
   first (negative perturbation) should keep it up: higher area is better. A random map is the
   baseline every method must beat. The shapes' masks give a third figure: the share of images on
   which the map's heat per unit of area is higher on the shape than on the background.
2. Latency on CPU at batch 1, 224 px, random-init vit_tiny and vit_small: classify alone against
   explain() with each method (which classifies in the same pass), as ratios.
   Targets (issue 5): rollout 1.3x or less, gradient methods 3.5x or less.

    python bench/explain_bench.py [--images 60] [--run checkpoints/<run-id>] [--skip-latency]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vit import explain, predict  # noqa: E402
from vit.data import load_dataset  # noqa: E402
from vit.samples import SHAPES, draw_shape_with_mask, make_shapes_dataset  # noqa: E402
from vit.train import TrainConfig, train  # noqa: E402

# (label, method, options): the four methods at their defaults, two rollout variants, and random
VARIANTS = [
    ("chefer (default)", "chefer", {}),
    ("rollout mean", "rollout", {}),
    ("rollout max, discard 0.9", "rollout", {"head_fusion": "max", "discard_ratio": 0.9}),
    ("attention (last layer)", "attention", {}),
    ("gradcam", "gradcam", {}),
    ("random", None, {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run directory (default: train one on the generated shapes)")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--images", type=int, default=60, help="fresh images for the perturbation test")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per latency figure")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-faithfulness", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if not args.skip_faithfulness:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(args.run) if args.run else _train(Path(tmp), args)
            _faithfulness(run, args.images)
    if not args.skip_latency:
        for name in ("vit_tiny_patch16_224", "vit_small_patch16_224"):
            _latency(name, args.repeats)


def _train(tmp: Path, args) -> Path:
    t = time.perf_counter()
    data = make_shapes_dataset(tmp / "shapes", per_class=args.per_class, size=args.img_size, seed=1)
    config = TrainConfig(model="vit_tiny_patch16_224", pretrained=False, img_size=args.img_size,
                         patch_size=args.patch_size, model_args={"depth": 4, "embed_dim": 192, "num_heads": 3},
                         epochs=args.epochs, batch_size=32, lr=5e-4, crop_scale_min=0.6, color_jitter=0.0,
                         early_stopping=None)
    with load_dataset(data) as ds:
        metrics = train(ds, config, tmp / "run")
    print(f"\ntrained a 4-block ViT from scratch on {args.per_class} shapes per class at {args.img_size} px, "
          f"patch {args.patch_size}: val acc {metrics['val_acc']:.1%} ({time.perf_counter() - t:.0f} s)")
    return tmp / "run"


def _faithfulness(run: Path, n: int) -> None:
    loaded = predict.load_model(run)
    grid = explain.token_layout(loaded.model, tuple(loaded.data_config["input_size"][-2:])).grid
    print(f"\nfaithfulness on {n} fresh images, patch grid {grid[0]}x{grid[1]}, explaining the predicted class")
    rng = random.Random(1234)
    scores = {label: {"deletion": [], "negative": [], "on_shape": []} for label, _, _ in VARIANTS}
    correct = 0
    for i in range(n):
        image, mask = draw_shape_with_mask(SHAPES[i % len(SHAPES)], loaded.data_config["input_size"][-1], rng)
        x = loaded.preprocess(image)
        left, top, right, bottom = (round(v) for v in loaded.input_box(image.size))
        inside = torch.from_numpy(mask[top:bottom, left:right].astype(np.float32))[None, None]
        share = F.adaptive_avg_pool2d(inside, grid)[0, 0].numpy()
        for label, method, options in VARIANTS:
            if method is None:
                e = explain.explain(loaded.model, x, "attention")
                heatmap = np.random.default_rng(i).random(grid).astype(np.float32)
            else:
                e = explain.explain(loaded.model, x, method, **options)
                heatmap = e.heatmap
            s = scores[label]
            s["deletion"].append(explain.area(explain.perturbation_curve(loaded.model, x, heatmap, e.target)))
            s["negative"].append(explain.area(explain.perturbation_curve(loaded.model, x, heatmap, e.target,
                                                                         most_relevant_first=False)))
            on = (heatmap * share).sum() / max(share.sum(), 1e-6)
            off = (heatmap * (1 - share)).sum() / max((1 - share).sum(), 1e-6)
            s["on_shape"].append(float(on > off))
        correct += int(e.target == i % len(SHAPES))
    print(f"(the model is right on {correct}/{n} of these images)")
    rand = scores["random"]
    print(f"\n{'method':26s} {'deletion AUC (lower better)':>28s} {'negative AUC (higher better)':>29s} "
          f"{'heat on shape':>14s}  beats random")
    for label, _, _ in VARIANTS:
        s = scores[label]
        beats = (np.mean(s["deletion"]) < np.mean(rand["deletion"]) and
                 np.mean(s["negative"]) > np.mean(rand["negative"]))
        print(f"{label:26s} {_mean_sem(s['deletion']):>28s} {_mean_sem(s['negative']):>29s} "
              f"{np.mean(s['on_shape']):>13.0%}  {'' if label == 'random' else ('yes' if beats else 'NO')}")


def _latency(name: str, repeats: int) -> None:
    import timm
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)

    @torch.inference_mode()
    def classify():
        return model(x).softmax(-1)

    for _ in range(3):
        classify()
    print(f"\n{name} at 224, batch 1 (classify and each method timed alternately, median of {repeats} pairs)")
    targets = {"rollout": 1.3, "attention": 1.3, "chefer": 3.5, "gradcam": 3.5}
    for method in explain.METHODS:
        base, ms = _time_pair(classify, lambda m=method: explain.explain(model, x, m), repeats)
        ratio = ms / base
        print(f"  classify {base:6.1f} ms   classify + {method:9s} {ms:7.1f} ms   ratio {ratio:.2f}  "
              f"(target <= {targets[method]}: {'met' if ratio <= targets[method] else 'NOT met'})")


def _time_pair(first, second, repeats: int) -> tuple[float, float]:
    """Medians of two functions timed in alternation, so that machine drift hits both alike."""
    second()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((first, a), (second, b)):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000)
    return statistics.median(a), statistics.median(b)


def _mean_sem(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)):.3f}"


if __name__ == "__main__":
    main()
