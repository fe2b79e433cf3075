"""Test helpers: generated images, zips and folders; a tiny training config."""
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(colour=(200, 30, 30), size=(40, 30), fmt="PNG", mode="RGB", seed=None, **save) -> bytes:
    """An encoded image; `seed` adds noise so that images differ (no accidental duplicates)."""
    if seed is not None:
        rng = np.random.default_rng(seed)
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
    else:
        img = Image.new("RGB", size, colour).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def write_zip(path: Path, members: dict) -> Path:
    """members: name -> bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def class_members(classes=("cat", "dog"), n=3, prefix="", fmt="PNG", seed0=0) -> dict:
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    out, seed = {}, seed0
    for c in classes:
        for i in range(n):
            out[f"{prefix}{c}/{i:03d}.{ext}"] = image_bytes(fmt=fmt, seed=seed)
            seed += 1
    return out


def write_tree(root: Path, members: dict) -> Path:
    for name, data in members.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


# A tiny ViT that runs in a second or two: 32x32 input, 4x4 patch grid, one block.
TINY = dict(model="vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
            model_args={"depth": 1, "embed_dim": 32, "num_heads": 2}, batch_size=8, epochs=2, lr=1e-3,
            early_stopping=None)


def wait_for(predicate, timeout=60.0, what="condition", every=0.05):
    """The first true value of `predicate()`, asked every `every` seconds; AssertionError after `timeout`."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def tiny(**over):
    from vit.train import TrainConfig
    return TrainConfig(**{**TINY, **over})


def flipped_shapes(dest: Path, per_class: int = 12, flips: int = 2, size: int = 32, seed: int = 0) -> tuple[Path, list]:
    """Sample shapes with `flips` labels wrong (files moved into another shape's folder); the moved names."""
    import random
    from vit.samples import SHAPES, make_shapes_dataset
    make_shapes_dataset(dest, per_class=per_class, size=size, seed=seed)
    rng, moved = random.Random(seed), []
    for f in rng.sample(sorted(dest.rglob("*.png")), flips):
        other = next(c for c in SHAPES if c != f.parent.name)
        f.rename(dest / other / f"wrong-{f.name}")
        moved.append(f"{other}/wrong-{f.name}")
    return dest, moved


ARTIFACTS = Path(__file__).parent / "e2e" / "artifacts"


def visible_text(page, text, timeout=30_000):
    """Wait until `text` (a string or a regex) shows on the page (browser tests)."""
    page.get_by_text(text).filter(visible=True).first.wait_for(timeout=timeout)


def use_sample_data(page, per_class: int = 20) -> None:
    """In the Data tab: generate the sample shapes and wait for their health report (browser tests)."""
    page.get_by_role("slider", name="Images per class (sample data)").fill(str(per_class))
    page.get_by_role("button", name="Use the sample dataset (generated shapes)").click()
    visible_text(page, f"Ready to train: {3 * per_class} images in 3 classes")


def on_new_models(monkeypatch, prepare_model) -> None:
    """Call prepare_model(model) on every model a run creates in this test (hooks, records), as it is made."""
    import vit.train.prepare as setup  # where every run creates its model
    real = setup.create_model

    def create(spec, num_classes):
        model = real(spec, num_classes)
        prepare_model(model)
        return model

    monkeypatch.setattr(setup, "create_model", create)
