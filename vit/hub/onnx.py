"""Export a run's model as one ONNX file (dynamic batch, weights inside), checked against PyTorch."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vit.hub.push import HubError

INT8_OPS = ["MatMul", "Gemm"]  # what the int8 file quantises: the linear layers, where the time and the weights are
INT8_WORDS = ("int8: the weights of the linear layers (MatMul, Gemm) as 8-bit integers, their inputs quantised as "
              "they come (onnxruntime's dynamic quantisation); the rest in float32")


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                check_images: int = 4) -> tuple[Path, float]:
    """Write model.onnx (dynamic batch, weights embedded: one file to hand on) for the run; return its path
    and the largest logit difference from PyTorch on `check_images` random inputs (batch 1 and a batch of
    all of them), run from the file's bytes alone."""
    import torch

    from vit.predict import PredictError, load_model
    try:
        loaded = load_model(run_dir)
    except PredictError as e:
        raise HubError(str(e)) from None
    out = Path(out) if out else Path(run_dir) / "model.onnx"
    model = loaded.model
    shape = tuple(loaded.data_config["input_size"])
    example = torch.randn(2, *shape)
    try:
        import onnxruntime as ort
        torch.onnx.export(model, (example,), str(out), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
                          external_data=False)  # one self-contained file: the weights inside
    except ImportError as e:
        raise HubError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages ({e}); "
                       "they are in requirements.txt.") from None
    except Exception as e:
        raise HubError(f"ONNX export of {loaded.name} failed: {type(e).__name__}: {e}") from None
    # checked from its bytes alone: a file that needed anything beside it would fail here
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(max(1, check_images), *shape, generator=generator)
    with torch.inference_mode():
        reference = model(x).float().numpy()
    diffs = [np.abs(session.run(None, {"pixel_values": x[:1].numpy()})[0] - reference[:1]).max(),
             np.abs(session.run(None, {"pixel_values": x.numpy()})[0] - reference).max()]
    _describe(out, loaded.labels, loaded.data_config, loaded.trust.temperature)
    return out, float(max(diffs))


def quantize_onnx(fp32: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write an int8 copy of an ONNX file of ours (onnxruntime's dynamic quantisation of its linear layers), with
    the same metadata and its precision said. Dynamic, not static: on the 2-core benchmark machine static
    quantisation (calibrated on training images) was slower than the dynamic file and no more accurate
    (bench/onnx_bench.py)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    fp32, out = Path(fp32), Path(out)
    try:
        quantize_dynamic(fp32, out, op_types_to_quantize=INT8_OPS, weight_type=QuantType.QInt8)
    except Exception as e:
        raise HubError(f"int8 quantisation of {fp32.name} failed: {type(e).__name__}: {e}") from None
    _write_metadata(out, {**onnx_metadata(fp32), "precision": INT8_WORDS})
    return out


def metadata(labels: list[str], dcfg: dict, temperature: float = 1.0) -> dict[str, str]:
    """What a user of the ONNX file needs beside it, as its metadata: the labels in output order, the input's
    name and size, the preprocessing (timm's data config, and in words) and the temperature that calibrates the
    probabilities."""
    import json
    from vit.data.pixels import describe
    return {"labels": json.dumps(list(labels)), "input_name": "pixel_values",
            "input_size": json.dumps(list(dcfg["input_size"])), "mean": json.dumps(list(dcfg["mean"])),
            "std": json.dumps(list(dcfg["std"])), "interpolation": str(dcfg.get("interpolation", "bicubic")),
            "crop_pct": str(dcfg.get("crop_pct", 0.875)), "crop_mode": str(dcfg.get("crop_mode", "center")),
            "preprocessing": describe(dcfg), "temperature": f"{temperature:g}", "precision": "float32",
            "output": "logits (divide them by temperature, then softmax, for calibrated probabilities)"}


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """An ONNX file's metadata_props as a dict (metadata() for the files this app exports)."""
    import onnx
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _describe(path: Path, labels: list[str], dcfg: dict, temperature: float) -> None:
    """Write metadata() into the ONNX file's metadata_props, and strip what the exporter records of this machine
    (each node's stack trace and source locations: the paths of the installed packages)."""
    import onnx
    model = onnx.load(str(path))
    for graph in [model.graph, *[f for f in model.functions]]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    model.graph.doc_string = ""
    _write_metadata(path, metadata(labels, dcfg, temperature), model)


def _write_metadata(path: Path, values: dict[str, str], model=None) -> None:
    """Replace the ONNX file's metadata_props with `values`."""
    import onnx
    model = model if model is not None else onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))



def validation_images(run_dir: str | os.PathLike, limit: int | None = None) -> list[tuple[Path, str]]:
    """(image, label) of the run's validation images (its test images when it has no validation split), from
    the run's own copy of its data; at most `limit`, spread over the classes in the manifest's order."""
    from vit import runs
    from vit.data import exported_rows
    rows = exported_rows(Path(run_dir) / runs.DATA_DIR)
    for split in ("val", "test"):
        chosen = [(path, label) for _, path, label, s in rows if s == split]
        if chosen:
            step = max(1, len(chosen) / limit) if limit else 1
            return [chosen[int(k * step)] for k in range(min(len(chosen), limit or len(chosen)))]
    return []


def cpu_session(path: str | os.PathLike):
    """An onnxruntime CPU session whose threads sleep between runs (by default they spin a while, which takes the
    cores from whatever runs next: PyTorch, in a comparison, or the app)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(run_dir: str | os.PathLike, files: dict[str, str | os.PathLike], limit: int | None = None) -> dict:
    """Accuracy and speed of the run's PyTorch model and each ONNX file of `files` (a name for each) on the same
    validation images (at most `limit`), each image given to each model in turn at batch 1 on this machine's CPU,
    so that a slower moment of the machine slows them all. Returns {"images", "rows": [{"name", "accuracy",
    "agree" (the share of answers equal to PyTorch's), "ms" (median per image), "mb"}]}."""
    import statistics
    import time

    import torch

    from vit.data.pixels import EvalPixels, read_for_model
    from vit.predict import load_model
    loaded = load_model(run_dir)
    pixels = EvalPixels(loaded.data_config)
    images = validation_images(run_dir, limit)
    index = {name: k for k, name in enumerate(loaded.labels)}
    runners = {"PyTorch (float32)": None}  # (a replica of the model of this thread's own, borrowed below)
    for name, path in files.items():
        session = cpu_session(path)
        runners[name] = lambda x, s=session: s.run(None, {"pixel_values": x})[0]
    answers = {name: [] for name in runners}
    times = {name: [] for name in runners}
    with loaded.borrow() as model, torch.inference_mode():  # (the app's classifications go on beside it)
        runners["PyTorch (float32)"] = lambda x: model(torch.from_numpy(x)).float().numpy()
        for path, _ in images:
            x = pixels(read_for_model(path)).unsqueeze(0).numpy()
            for name, run in runners.items():
                start = time.perf_counter()
                answers[name].append(int(run(x).argmax()))
                times[name].append(time.perf_counter() - start)
    truth = [index.get(label, -1) for _, label in images]
    sizes = {"PyTorch (float32)": Path(run_dir) / "model.safetensors", **{n: Path(p) for n, p in files.items()}}
    reference = answers["PyTorch (float32)"]
    rows = [{"name": name, "mb": sizes[name].stat().st_size / 1e6,
             "accuracy": sum(a == t for a, t in zip(got, truth)) / len(truth) if truth else None,
             "agree": sum(a == r for a, r in zip(got, reference)) / len(reference) if reference else None,
             "ms": statistics.median(times[name]) * 1000 if times[name] else None}
            for name, got in answers.items()]
    return {"images": len(images), "rows": rows}
