"""Export a run's model as one ONNX file (dynamic batch, weights inside), checked against PyTorch."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vit.hub.push import HubError


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
            "preprocessing": describe(dcfg), "temperature": f"{temperature:g}",
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
    del model.metadata_props[:]
    for key, value in metadata(labels, dcfg, temperature).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


# ---------------------------------------------------------------------------
# card pictures, drawn with Pillow
