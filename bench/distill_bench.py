"""Distillation from a teacher (issue 26): what a CNN teacher gives a ViT trained from scratch on small data, how
much of a larger teacher a small student keeps, and what a teacher costs per training step.

Data: the glyphs (digits drawn in the machine's fonts, 16-px scans at 32 px) at --per-class images per class for
training (the run holds out 20% of them to choose its epoch), and a fresh set drawn with another seed (--fresh per
class) on which every model is measured: no run has seen or chosen on those images.

1. small data: a CNN teacher from scratch (resnet18, the from-scratch recipe; --teacher-epochs), the recipe's ViT
   alone, and the same ViT distilled from the teacher (hard, DeiT's default; soft too with --soft). Target: the
   distilled ViT at least 3 points above the ViT alone, or above its teacher.
2. compression: the CNN teacher into the recipe's ViT (smaller than ViT-Tiny): the student keeps >= 97% of the
   teacher's accuracy and classifies >= 3x faster on the CPU (one image at a time, as the app does).
3. cost: seconds per training step of the ViT with a teacher of its own size (the ViT alone, finished) against none,
   the same epochs, in the same process. Target <= 1.5x.

    python bench/distill_bench.py                   # about 15 minutes on 2 CPU cores
    python bench/distill_bench.py --per-class 30 --soft
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

from vit import predict, runs, samples  # noqa: E402

from _cli import cli_train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40, help="training images per class (the run holds out 20%%)")
    ap.add_argument("--fresh", type=int, default=100, help="fresh images per class to measure on")
    ap.add_argument("--teacher-model", default="resnet18")
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--student-epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--soft", action="store_true", help="also soft distillation")
    ap.add_argument("--cost-epochs", type=int, default=4)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = samples.make_glyphs_dataset(tmp / "glyphs", args.per_class, seed=0)
        fresh = samples.make_glyphs_dataset(tmp / "fresh", args.fresh, seed=1)
        print(f"data: glyphs, 10 classes x {args.per_class} to train (20% held out to choose the epoch); measured on "
              f"10 x {args.fresh} fresh glyphs (another seed)")
        teacher, t_s = run(data, tmp / "teacher", ["--model", args.teacher_model, "--no-pretrained", "--epochs",
                                                  str(args.teacher_epochs)])
        vit = ["--no-pretrained"] + (["--epochs", str(args.student_epochs)] if args.student_epochs else [])
        alone, a_s = run(data, tmp / "alone", vit)
        student, s_s = run(data, tmp / "hard", vit + ["--teacher", str(teacher), "--distill", "hard"])
        found = {name: measure(folder, fresh) for name, folder in
                 (("teacher", teacher), ("alone", alone), ("hard", student))}
        seconds = {"teacher": t_s, "alone": a_s, "hard": s_s}
        if args.soft:
            soft, seconds["soft"] = run(data, tmp / "soft", vit + ["--teacher", str(teacher), "--distill", "soft"])
            found["soft"] = measure(soft, fresh)
        for name, (acc, ms, batched, what) in found.items():
            print(f"  {name:8s} {acc:6.1%} on the fresh glyphs; {ms:6.2f} ms per image one at a time, {batched:5.2f} "
                  f"in batches of 64; trained in {seconds[name]:.0f} s; {what}")
        small_data(found)
        compression(found)
        cost(data, tmp, alone, args.cost_epochs)


def run(data: Path, out: Path, flags: list[str]) -> tuple[Path, float]:
    _, seconds = cli_train(data, out, flags)
    return out, seconds


def measure(folder: Path, fresh: Path) -> tuple[float, float, float, str]:
    """Accuracy on the fresh images, milliseconds per image classified one at a time and in batches of 64 (the
    model's forward on the CPU, after warm-up), and the model as built."""
    loaded = predict.load_model(folder)
    images = sorted(p for p in fresh.rglob("*.png"))
    correct = 0
    for k in range(0, len(images), 64):
        batch = images[k:k + 64]
        probs = loaded.probabilities([predict.read_image(p) for p in batch])
        correct += sum(loaded.labels[int(i)] == p.parent.name for i, p in zip(probs.argmax(1), batch))
    x = [loaded.preprocess(predict.read_image(p)) for p in images[:200]]
    with torch.inference_mode():
        for xi in x[:20]:
            loaded.model(xi)
        t0 = time.perf_counter()
        for xi in x:
            loaded.model(xi)
        ms = (time.perf_counter() - t0) / len(x) * 1000
        batch = torch.cat(x[:64])
        loaded.model(batch)
        t0 = time.perf_counter()
        for _ in range(5):
            loaded.model(batch)
        batched = (time.perf_counter() - t0) / (5 * len(batch)) * 1000
    built = runs.read_config(folder).get(runs.CONFIG_KEY, {}).get("built") or {}
    from vit.models import built_text
    return correct / len(images), ms, batched, built_text(built)


def small_data(found: dict) -> None:
    t, a = found["teacher"][0], found["alone"][0]
    for mode in ("hard", "soft"):
        if mode in found:
            d = found[mode][0]
            met = d - a >= 0.03 or d > t
            print(f"1. small data, {mode}: distilled {d:.1%}, alone {a:.1%} ({(d - a) * 100:+.1f} points), teacher "
                  f"{t:.1%} (target: >= +3 points, or above the teacher: {'met' if met else 'NOT met'})")


def compression(found: dict) -> None:
    t, t_ms, t_batched, _ = found["teacher"]
    for mode in ("hard", "soft"):
        if mode in found:
            d, d_ms, d_batched, _ = found[mode]
            keeps, faster, faster_b = d / max(t, 1e-9), t_ms / max(d_ms, 1e-9), t_batched / max(d_batched, 1e-9)
            print(f"2. compression, {mode}: the student keeps {keeps:.1%} of the teacher's accuracy (target >= 97%: "
                  f"{'met' if keeps >= 0.97 else 'NOT met'}) and classifies {faster:.2f}x faster one image at a time "
                  f"({d_ms:.2f} against {t_ms:.2f} ms), {faster_b:.2f}x in batches of 64 ({d_batched:.2f} against "
                  f"{t_batched:.2f} ms per image) (target >= 3x: {'met' if min(faster, faster_b) >= 3 else 'NOT met'} "
                  "both ways)")


def cost(data: Path, tmp: Path, same_size_teacher: Path, epochs: int) -> None:
    """Seconds per step without and with a teacher of the student's size (the ViT alone, finished), each the
    median of its epochs after the first."""
    flags = ["--no-pretrained", "--epochs", str(epochs)]
    per_step = {}
    for name, more in (("none", []), ("teacher", ["--teacher", str(same_size_teacher)])):
        out = tmp / f"cost-{name}"
        cli_train(data, out, flags + more)
        rows = runs.read_metrics_log(out)
        rates = sorted(r["images_per_s"] for r in rows[1:] or rows)
        per_step[name] = rates[len(rates) // 2]
    ratio = per_step["none"] / per_step["teacher"]
    print(f"3. cost: {per_step['none']:.0f} images/s without a teacher, {per_step['teacher']:.0f} with one of the "
          f"student's size: {ratio:.2f}x the time per step (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
