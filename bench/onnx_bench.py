"""int8 ONNX (issue 28): the int8 file the Share tab exports against the run's float32 PyTorch model on this
machine's CPU, ViT-Tiny at 224 px. Targets: at least 2x faster, at most 1 point of validation accuracy lost.

A ViT-Tiny@224 is trained from scratch on the sample shapes (no pretrained weights can be downloaded here; 40% of
the images held out for validation, so that one image is under a point of accuracy), exported to
ONNX (float32), then quantised two ways with onnxruntime:
- dynamic: the linear layers' weights in int8, activations quantised at run time (what the app ships);
- static: weights and activations in int8 (QDQ), the activations' ranges calibrated on 64 training images.
Each file and the PyTorch model classify the same validation images, each image given to each model in turn at
batch 1 (vit.hub.onnx.compare), then a batch of 8 is timed for throughput.

    python bench/onnx_bench.py                 # trains first (about 3 minutes on 2 cores)
    python bench/onnx_bench.py --run RUN_DIR   # a run of yours
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vit import hub, samples  # noqa: E402
from vit.hub import onnx as onnx_export  # noqa: E402

from _cli import cli_train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run directory with its data copy (default: train a ViT-Tiny@224)")
    ap.add_argument("--per-class", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    import onnxruntime
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else train(tmp, args.per_class, args.epochs)
        files = {"ONNX float32": tmp / "fp32.onnx", "ONNX int8 dynamic": tmp / "int8-dynamic.onnx",
                 "ONNX int8 static": tmp / "int8-static.onnx"}
        t0 = time.perf_counter()
        hub.export_onnx(run, files["ONNX float32"])
        t1 = time.perf_counter()
        hub.quantize_onnx(files["ONNX float32"], files["ONNX int8 dynamic"])
        t2 = time.perf_counter()
        static(run, files["ONNX float32"], files["ONNX int8 static"])
        t3 = time.perf_counter()
        print(f"export {t1 - t0:.1f} s, dynamic int8 {t2 - t1:.1f} s, static int8 (calibration included) "
              f"{t3 - t2:.1f} s")
        report = hub.compare(run, files)
        print(f"\n{report['images']} validation images, batch 1, median per image:")
        base = next(r for r in report["rows"] if r["name"].startswith("PyTorch"))
        for r in report["rows"]:
            print(f"  {r['name']:20s} accuracy {r['accuracy']:.1%} ({(r['accuracy'] - base['accuracy']) * 100:+.1f} "
                  f"points), same answer as PyTorch {r['agree']:.1%}, {r['ms']:.1f} ms/image "
                  f"({base['ms'] / r['ms']:.2f}x PyTorch), {r['mb']:.1f} MB")
        batch8(run, files)


def train(tmp: Path, per_class: int, epochs: int) -> Path:
    from vit.data import export_dataset, load_dataset
    data = samples.make_shapes_dataset(tmp / "shapes", per_class=per_class, size=224)
    out = tmp / "run"
    tiny = ["embed_dim=192", "depth=12", "num_heads=3"]  # ViT-Tiny as timm builds it (not the recipe's smaller model)
    acc, seconds = cli_train(data, out, ["--model", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "224",
                                         "--patch-size", "16", *[f"--model-arg={a}" for a in tiny],
                                         "--epochs", str(epochs), "--val-fraction", "0.4", "--seed", "0"])
    with load_dataset(data, val_fraction=0.4, seed=0) as ds:  # the same split: the run's copy of its data
        export_dataset(ds, out / "data")
    from safetensors.torch import load_file
    params = sum(t.numel() for t in load_file(out / "model.safetensors").values())
    print(f"trained ViT-Tiny@224 ({params / 1e6:.1f}M parameters) from scratch on {per_class * 3} shapes: "
          f"{acc:.1%} validation accuracy in {seconds:.0f} s")
    return out


def static(run: Path, fp32: Path, out: Path) -> None:
    """QDQ int8 with activation ranges from 64 training images (not the validation images it is measured on)."""
    import csv

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from vit.data.pixels import EvalPixels, read_for_model
    from vit.predict import load_model
    pixels = EvalPixels(load_model(run).data_config)
    with open(run / "data" / "labels.csv", newline="") as f:
        train_paths = [run / "data" / r["path"] for r in csv.DictReader(f) if r["split"] == "train"][:64]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(train_paths)

        def get_next(self):
            path = next(self.left, None)
            return None if path is None else {"pixel_values": pixels(read_for_model(path)).unsqueeze(0).numpy()}

    quantize_static(fp32, out, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=onnx_export.INT8_OPS,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)


def batch8(run: Path, files: dict[str, Path], rounds: int = 5) -> None:
    """Throughput at batch 8, the models in turn each round; median ms per image."""
    from vit.predict import load_model
    model = load_model(run).model
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    runners = {"PyTorch (float32)": lambda: model(torch.from_numpy(x))}
    for name, path in files.items():
        s = onnx_export.cpu_session(path)
        runners[name] = lambda s=s: s.run(None, {"pixel_values": x})
    times = {name: [] for name in runners}
    with torch.inference_mode():
        for fn in runners.values():
            fn()
        for _ in range(rounds):
            for name, fn in runners.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) / len(x) * 1000)
    base = statistics.median(times["PyTorch (float32)"])
    print("\nbatch 8, median per image:")
    for name, ts in times.items():
        print(f"  {name:20s} {statistics.median(ts):.1f} ms/image ({base / statistics.median(ts):.2f}x PyTorch)")


if __name__ == "__main__":
    main()
