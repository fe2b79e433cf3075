"""What every run starts from, a fine-tune or a quick model alike: the device, threads and seed, the dataset
checked (its health report recorded), the model as asked, its preprocessing, and the images decoded into
memory once."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.utils import random_seed
from torch import nn

from vit import runs
from vit.data import Dataset, DecodeCache
from vit.models import ModelSpec, create_model, data_config
from vit.train.config import TrainConfig, TrainError
from vit.train.distributed import Distributed
from vit.train.events import Emitter


@dataclass
class Prepared:
    device: torch.device
    model: nn.Module          # on the device
    dcfg: dict                # timm's preprocessing for it, crop_pct as the config asks
    cache: DecodeCache        # every image of the dataset, decoded for the model's input size
    labels: list[int]         # the class index of every image


def prepare(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: Emitter, ddp: Distributed,
            resume: bool = False, epochs: int | None = None) -> Prepared:
    """The model (a resumed run is rebuilt from its own config.json: no download, same architecture) and the
    data. `epochs` is what the status says the run will take (default: the config's)."""
    device = ddp.device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    random_seed(config.seed % 2 ** 31, ddp.rank)  # python, numpy and torch
    if not dataset.report.ok:
        raise TrainError(dataset.report.refusal())
    if ddp.is_main and not resume:
        runs.write_json(run_dir / runs.DATA_REPORT, runs.public_report(dataset.report.to_dict()))
    resizing = {"dynamic_img_size": True} if config.progressive else {}  # smaller inputs, pos. embeddings resampled
    if resume:
        spec = ModelSpec(f"local-dir:{run_dir}", pretrained=False, model_args=resizing)
    else:
        spec = ModelSpec(config.model, pretrained=config.pretrained, weights=config.weights,
                         img_size=config.img_size, patch_size=config.patch_size,
                         model_args={**config.model_args, **resizing})
    for line in ([] if resume else config.recipe):
        emit.event(type="recipe", text=line)
    emit.status("running", message="Creating the model", epoch=0, epochs=epochs or config.epochs,
                **runs.process_identity())
    model = create_model(spec, num_classes=len(dataset.classes)).to(device)
    dcfg = data_config(model)
    if config.crop_pct:
        dcfg["crop_pct"] = config.crop_pct
    emit.status("running", message=f"Decoding {len(dataset.items)} images into memory")
    cache = DecodeCache(dataset.items, short_side=math.ceil(dcfg["input_size"][-1] / dcfg.get("crop_pct", 0.875)),
                        max_bytes=config.cache_max_bytes)
    cache.fill(progress=lambda done, total: emit.event(type="cache", done=done, total=total))
    return Prepared(device, model, dcfg, cache, dataset.labels(range(len(dataset.items))))
