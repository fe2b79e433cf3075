"""One image pipeline: what the engine validates on is what every inference path gives for the same file
(predict from the files, the model card's stock-timm snippet, the quick model's features)."""
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from helpers import tiny
from vit import predict
from vit.data import load_dataset
from vit.data.pixels import EvalPixels, read_for_model
from vit.hub import model_card
from vit.train import TrainConfig, train


def _photo(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """Something like a photo: smooth colour gradients, a blob, sensor noise (drawn small, then enlarged)."""
    rng = np.random.default_rng(seed)
    w, h = size
    sw, sh = max(8, w // 8), max(8, h // 8)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-80, 80, (2, 3))
    img = base + xx[..., None] / sw * slope[0] + yy[..., None] / sh * slope[1]
    cx, cy, r = rng.uniform(0.3, 0.7) * sw, rng.uniform(0.3, 0.7) * sh, rng.uniform(0.15, 0.3) * min(sw, sh)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += rng.uniform(-90, 90, 3)
    big = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
    noise = rng.integers(-8, 9, big.shape, dtype=np.int16)
    out = Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))
    if mode == "RGBA":
        alpha = np.full((h, w), 255, np.uint8)
        alpha[: h // 3] = 90  # a see-through band: composited on white
        out = out.convert("RGBA")
        out.putalpha(Image.fromarray(alpha))
        return out
    return out.convert(mode)


def _save(img: Image.Image, path, orientation: int | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    if path.suffix == ".jpg":
        kw["quality"] = 88
    img.save(path, **kw)


# (name, size, mode, orientation): several sizes, non-square both ways, EXIF-rotated, grey, RGBA, and two over
# the 2048 px a read keeps (one reduced after decoding, one JPEG decoded at half scale first)
VALIDATION = [("wide.jpg", (640, 400), "RGB", None), ("tall.jpg", (300, 520), "RGB", None),
              ("rotated.jpg", (480, 360), "RGB", 6), ("mirrored.jpg", (400, 300), "RGB", 2),
              ("grey.jpg", (350, 350), "L", None), ("clear.png", (260, 180), "RGBA", None),
              ("small.png", (40, 30), "RGB", None), ("big.jpg", (2600, 1700), "RGB", None),
              ("huge.jpg", (4200, 2900), "RGB", 8)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "d"
    for k, cls in enumerate(("ant", "bee")):
        for n in range(6):
            _save(_photo((320 + 40 * n, 240), seed=100 * k + n), root / "train" / cls / f"{n}.jpg")
        for n, (name, size, mode, orientation) in enumerate(VALIDATION):
            _save(_photo(size, seed=1000 * k + n, mode=mode), root / "val" / cls / name, orientation)
    return root


def _snippet_read(card_text: str):
    """The `read` function of the model card's stock-timm snippet, as a user would paste it."""
    code = re.search(r"```python\n(.*?)```", card_text, re.S).group(1)
    namespace = {}
    exec(code[:code.index("model = timm.create_model")], namespace)
    return namespace["read"]


@pytest.mark.parametrize("img_size, patch", [(32, 8), pytest.param(224, 32, marks=pytest.mark.slow)])
def test_predict_and_the_cards_snippet_repeat_the_engines_validation(photos, tmp_path, img_size, patch, monkeypatch):
    """...calibrated alike: the run's temperature (fitted here on few images) is in the card's snippet."""
    from vit import trust
    monkeypatch.setattr(trust, "MIN_CALIBRATION", 4)
    with load_dataset(photos) as ds:
        assert len(ds.val) == 2 * len(VALIDATION)
        metrics = train(ds, tiny(img_size=img_size, patch_size=patch, epochs=1), tmp_path / "run")
        files = {ds.items[i].name: ds.items[i].path for i in ds.val}
    loaded = predict.load_model(tmp_path / "run")
    card = model_card(tmp_path / "run", "alice/ants").text
    read = _snippet_read(card)
    temperature = float(re.search(r"\ntemperature = ([0-9.]+)", card).group(1))
    assert temperature == pytest.approx(loaded.trust.temperature, abs=1e-4) and temperature != 1.0
    stock = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True).eval()
    stock_transform = timm.data.create_transform(**timm.data.resolve_data_config(model=stock))
    assert len(metrics["predictions"]) == len(files)
    for row in metrics["predictions"]:
        path = files[row["name"]]
        labels = loaded.labels
        probs = loaded.probabilities([predict.read_image(str(path))])[0]
        assert labels[int(probs.argmax())] == row["predicted"], row["name"]
        assert float(probs.max()) == pytest.approx(row["confidence"], abs=1e-4), row["name"]
        assert float(probs[labels.index(row["true"])]) == pytest.approx(row["p_true"], abs=1e-4), row["name"]
        with torch.no_grad():
            theirs = (stock(stock_transform(read(path)).unsqueeze(0)) / temperature).softmax(-1)[0]
        assert torch.allclose(theirs, probs, atol=1e-4), row["name"]


def test_the_cards_read_gives_the_apps_pixels(photos):
    """Byte for byte, for every kind of file above (EXIF-rotated, grey, RGBA, large)."""
    from vit.hub.card import TEMPLATE
    read = _snippet_read(TEMPLATE.read_text())
    for path in sorted(photos.glob("val/*/*")):
        ours, theirs = read_for_model(path), read(path)
        assert ours.size == theirs.size and np.array_equal(np.asarray(ours), np.asarray(theirs)), path.name


@pytest.mark.slow
def test_the_quick_models_features_are_the_inference_pixels(photos, tmp_path):
    """A quick model's reported validation results (from cached, cropped images) are what predict gets from
    the files: its features saw the same pixels."""
    with load_dataset(photos) as ds:
        train(ds, tiny(epochs=1), tmp_path / "source")
        metrics = train(ds, TrainConfig(weights=str(tmp_path / "source"), quick=True), tmp_path / "quick")
        files = {ds.items[i].name: ds.items[i].path for i in ds.val}
    loaded = predict.load_model(tmp_path / "quick")
    for row in metrics["predictions"]:
        probs = loaded.probabilities([predict.read_image(str(files[row["name"]]))])[0]
        assert float(probs[loaded.labels.index(row["true"])]) == pytest.approx(row["p_true"], abs=1e-4)


def test_the_eval_crop_kept_as_uint8_gives_the_whole_transforms_tensor():
    pixels = EvalPixels({"input_size": (3, 32, 32), "crop_pct": 0.9, "crop_mode": "center",
                         "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4)})
    img = _photo((97, 61), seed=3)
    kept = Image.fromarray(np.asarray(pixels.crop(img)).copy())
    assert torch.equal(pixels.tensor(kept), pixels(img))
