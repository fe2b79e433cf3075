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
from vit.runs import RunState
from vit.data import Dataset, DecodeCache
from vit.data.pixels import EvalPixels, read_for_model
from vit.models import ModelSpec, architecture, built, built_text, create_model, data_config, weights_words
from vit.train.config import TrainConfig, TrainError
from vit.train.distributed import Distributed
from vit.train.events import Emitter


@dataclass
class Prepared:
    device: torch.device
    model: nn.Module          # on the device
    dcfg: dict                # timm's preprocessing for it, crop_pct as the config asks
    cache: DecodeCache        # the training images, decoded for the model's input size (augmentation follows)
    eval_cache: DecodeCache   # every image as validation and inference see it (EvalPixels' crop), made as needed
    pixels: EvalPixels        # the eval transform: eval_cache's images through pixels.tensor
    labels: list[int]         # the class index of every image
    built: dict               # what the model is (vit.models.built): config.json records it, pages show it


def prepare(dataset: Dataset, config: TrainConfig, run_dir: Path, emit: Emitter, ddp: Distributed,
            resume: bool = False, epochs: int | None = None, train_images: bool = True) -> Prepared:
    """The model (a resumed run is rebuilt from its own config.json: no download, same architecture) and the
    data: the training images decoded for augmentation (unless not `train_images`), the validation and test
    images as inference reads and crops them. `epochs` is what the status says the run will take (default: the
    config's)."""
    device = ddp.device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    random_seed(config.seed % 2 ** 31, ddp.rank)  # python, numpy and torch
    if not dataset.report.ok:
        raise TrainError(dataset.report.refusal())
    if ddp.is_main and not resume:
        runs.write_json(run_dir / runs.DATA_REPORT, runs.public_report(dataset.report.to_dict()))
        with runs.atomic(run_dir / runs.TRAINED_ON) as tmp:  # (a student of this run checks it holds none out)
            Path(tmp).write_text("".join(f"{dataset.items[i].sha256}\n" for i in dataset.train))
    if resume:
        spec = ModelSpec(f"local-dir:{run_dir}", pretrained=False)
    else:
        spec = ModelSpec(config.model, pretrained=config.pretrained, weights=config.weights,
                         img_size=config.img_size, patch_size=config.patch_size, model_args=dict(config.model_args))
    source = f"local-dir:{spec.weights}" if spec.weights and Path(spec.weights).is_dir() else spec.name
    if config.progressive and architecture(source).tokens:
        spec.model_args["dynamic_img_size"] = True  # smaller inputs, position embeddings resampled (a CNN takes any)
    for line in ([] if resume else config.recipe):
        emit.event(type="recipe", text=line)
    emit.status(RunState.RUNNING, message="Creating the model", epoch=0, epochs=epochs or config.epochs,
                **runs.process_identity())
    model = create_model(spec, num_classes=len(dataset.classes)).to(device)
    what = runs.read_config(run_dir).get(runs.CONFIG_KEY, {}).get("built") if resume else None
    what = what or built(model, weights_words(model, config.pretrained, config.weights))
    emit.status(RunState.RUNNING, arch=built_text(what))
    dcfg = data_config(model)
    if config.crop_pct:
        dcfg["crop_pct"] = config.crop_pct
    emit.status(RunState.RUNNING, message=f"Decoding {len(dataset.items)} images into memory")
    cache = DecodeCache(dataset.items, short_side=math.ceil(dcfg["input_size"][-1] / dcfg.get("crop_pct", 0.875)),
                        max_bytes=config.cache_max_bytes)
    pixels = EvalPixels(dcfg)
    eval_cache = DecodeCache(dataset.items, max_bytes=config.cache_max_bytes,
                             decode=lambda path: pixels.crop(read_for_model(path)))
    train, held = (dataset.train if train_images else []), [*dataset.val, *dataset.test]
    total = len(train) + len(held)

    def progress(base: int):
        return lambda done, _: emit.event(type="cache", done=base + done, total=total)
    cache.fill(progress=progress(0), indices=train)
    eval_cache.fill(progress=progress(len(train)), indices=held)
    return Prepared(device, model, dcfg, cache, eval_cache, pixels, dataset.labels(range(len(dataset.items))), what)
