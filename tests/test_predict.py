"""Classification (predict.py), heatmaps (explain.py) and `python -m vit predict`."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from helpers import image_bytes, tiny
from vit import cli, explain, models, predict, runs
from vit.data import load_dataset
from vit.models import CATALOG
from vit.samples import make_shapes_dataset
from vit.train import train

# Every token layout explain.py must handle, as tiny random timm models: (architecture, arguments).
LAYOUTS = {
    "class token": ("vit_tiny_patch16_224", dict(img_size=64)),
    "distillation token": ("deit_tiny_distilled_patch16_224", dict(img_size=64)),
    "4 registers, patch 14": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, embed_dim=64, num_heads=2)),
    "no class token (average pooling)": ("vit_tiny_patch16_224", dict(img_size=64, class_token=False,
                                                                       global_pool="avg")),
    "non-square input": ("vit_tiny_patch16_224", dict(img_size=(48, 80))),
}
GRIDS = {"class token": (4, 4), "distillation token": (4, 4), "4 registers, patch 14": (4, 4),
         "no class token (average pooling)": (4, 4), "non-square input": (3, 5)}


def _tiny_model(arch, **kw):
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=3, depth=2, **kw).eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    data = make_shapes_dataset(tmp / "shapes", per_class=12, size=32)
    with load_dataset(data) as ds:
        train(ds, tiny(), tmp / "run")
    return tmp / "run"


# ---------------------------------------------------------------- explain: every layout, every method


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", list(explain.METHODS))
def test_maps_have_the_patch_grid_shape_and_are_normalised(layout, method):
    arch, kw = LAYOUTS[layout]
    model = _tiny_model(arch, **kw)
    size = kw["img_size"] if isinstance(kw["img_size"], tuple) else (kw["img_size"],) * 2
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    e = explain.explain(model, x, method)
    assert e.heatmap.shape == GRIDS[layout] and e.heatmap.dtype == np.float32
    assert np.isfinite(e.heatmap).all() and e.heatmap.min() == 0.0 and e.heatmap.max() == 1.0
    assert e.probs.shape == (3,) and abs(e.probs.sum() - 1) < 1e-5 and e.target == int(e.probs.argmax())
    if method == "attention":
        assert e.heads.shape == (model.blocks[-1].attn.num_heads, *GRIDS[layout])
    assert all(getattr(b.attn, "fused_attn", False) == b.attn.fused_attn for b in model.blocks)
    if "average pooling" in layout:
        assert any("global average pooling" in n for n in e.notes)


def test_token_layouts_say_which_tokens_the_head_reads():
    def layout(name):
        arch, kw = LAYOUTS[name]
        return explain.token_layout(_tiny_model(arch, **kw), (64, 64) if "14" not in name else (56, 56))
    assert layout("class token").readers == [0] and layout("class token").prefix == 1
    assert layout("distillation token").readers == [0, 1] and layout("distillation token").prefix == 2
    reg = layout("4 registers, patch 14")
    assert reg.prefix == 5 and reg.readers == [0] and "4 register tokens" in reg.note
    assert layout("no class token (average pooling)").readers is None


def test_a_chosen_class_changes_the_class_specific_map_and_an_unknown_one_is_refused():
    model = _tiny_model("vit_tiny_patch16_224", img_size=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps = [explain.explain(model, x, "chefer", target=t).heatmap for t in range(3)]
    assert not np.allclose(maps[0], maps[1]) or not np.allclose(maps[1], maps[2])
    with pytest.raises(explain.ExplainError, match="out of range"):
        explain.explain(model, x, "chefer", target=7)
    with pytest.raises(explain.ExplainError, match="Unknown method"):
        explain.explain(model, x, "saliency")
    fused = [b.attn.fused_attn for b in model.blocks]
    explain.explain(model, x, "rollout", head_fusion="max", discard_ratio=0.5)
    assert [b.attn.fused_attn for b in model.blocks] == fused  # restored


def _attentions(model, x, target=None):
    """Each block's attention probabilities [heads, T, T] for one image, recorded by hand (not by explain.py);
    with a target, also their gradients of that class's logit, and the tokens entering the last block's attention
    (the last block's norm1 output, [T, D]) with theirs."""
    attentions, tokens = [], []
    hooks = [b.attn.attn_drop.register_forward_hook(lambda _m, _i, out: attentions.append(out)) for b in model.blocks]
    hooks.append(model.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: tokens.append(out)))
    for b in model.blocks:
        b.attn.fused_attn = False
    with torch.enable_grad() if target is not None else torch.no_grad():
        logits = model(x.clone().requires_grad_(target is not None))
        grads = torch.autograd.grad(logits[0, target], attentions + tokens) if target is not None else None
    for h in hooks:
        h.remove()
    if grads is None:
        return [a[0].detach() for a in attentions]
    return ([a[0].detach() for a in attentions], [g[0] for g in grads[:-1]], tokens[0][0].detach(), grads[-1][0])


def _scaled(m: torch.Tensor, grid=(4, 4)) -> np.ndarray:
    m = m.reshape(grid)
    return ((m - m.min()) / (m.max() - m.min())).numpy()


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.0), ("mean", 0.5)])
def test_rollout_is_the_textbook_product_of_the_layers(fusion, discard):
    """Abnar & Zuidema: the product of the layers' 0.5 A + 0.5 I (rows normalised), read at the class token.
    explain() carries only the class token's row, and for the default skips the normalising: same map."""
    model = _tiny_model("vit_tiny_patch16_224", img_size=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    product = torch.eye(17)
    for a in _attentions(model, x):
        fused = a.mean(0) if fusion == "mean" else a.amax(0)
        if discard:
            flat = fused.flatten().clone()
            flat[flat.argsort()[:int(flat.numel() * discard)]] = 0
            fused = torch.where(torch.arange(fused.shape[1]) == 0, fused, flat.view_as(fused))  # class column kept
        mixed = 0.5 * fused + 0.5 * torch.eye(fused.shape[0])
        product = (mixed / mixed.sum(-1, keepdim=True)) @ product
    got = explain.explain(model, x, "rollout", head_fusion=fusion, discard_ratio=discard).heatmap
    np.testing.assert_allclose(got, _scaled(product[0, 1:]), atol=1e-4)


def test_rollout_without_a_class_token_is_what_the_patches_draw_from_the_others():
    """Average pooling: every patch is a reader. The rollout product, less each patch's path to itself, averaged
    over the patch rows."""
    arch, kw = LAYOUTS["no class token (average pooling)"]
    model = _tiny_model(arch, **kw)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    product = torch.eye(16)
    for a in _attentions(model, x):
        mixed = 0.5 * a.mean(0) + 0.5 * torch.eye(16)
        product = (mixed / mixed.sum(-1, keepdim=True)) @ product
    expected = (product * (1 - torch.eye(16))).mean(0)
    np.testing.assert_allclose(explain.explain(model, x, "rollout").heatmap, _scaled(expected), atol=1e-4)


@pytest.mark.parametrize("target", [0, 2])
def test_gradient_weighted_attention_is_chefers_relevance_for_the_class(target):
    """Chefer et al. 2021b (eqs. 5-6): R = I; for each layer R += mean over heads of (grad A * A)^+, times R; the
    map is the class token's row of R over the patches."""
    model = _tiny_model("vit_tiny_patch16_224", img_size=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    attentions, grads, _, _ = _attentions(model, x, target)
    relevance = torch.eye(17)
    for a, g in zip(attentions, grads):
        relevance = relevance + (g * a).clamp(min=0).mean(0) @ relevance
    e = explain.explain(model, x, "chefer", target=target)
    assert e.target == target
    np.testing.assert_allclose(e.heatmap, _scaled(relevance[0, 1:]), atol=1e-4)


@pytest.mark.parametrize("target", [0, 1])
def test_grad_cam_is_the_gradient_weighted_sum_of_the_token_channels(target):
    """Grad-CAM (Selvaraju et al.) on the patch tokens entering the last block: each channel weighted by its
    gradient averaged over the patches, summed, negative parts cut."""
    model = _tiny_model("vit_tiny_patch16_224", img_size=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    _, _, tokens, grad = _attentions(model, x, target)
    weights = grad[1:].mean(0)
    cam = (tokens[1:] * weights).sum(-1).clamp(min=0)
    assert (cam == 0).any() and (cam > 0).any()  # (the cut matters for this image)
    np.testing.assert_allclose(explain.explain(model, x, "gradcam", target=target).heatmap, _scaled(cam), atol=1e-4)


def test_raw_attention_is_the_class_tokens_row_of_the_chosen_layer():
    model = _tiny_model("vit_tiny_patch16_224", img_size=64)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    attentions = _attentions(model, x)
    for layer in (0, -1):
        e = explain.explain(model, x, "attention", layer=layer)
        rows = attentions[layer][:, 0, 1:]  # [heads, patches]
        np.testing.assert_allclose(e.heatmap, _scaled(rows.mean(0)), atol=1e-5)
        for h in range(rows.shape[0]):
            np.testing.assert_allclose(e.heads[h], _scaled(rows[h]), atol=1e-5)
        np.testing.assert_allclose(explain.explain(model, x, "attention", layer=layer, head=1).heatmap,
                                   _scaled(rows[1]), atol=1e-5)


def test_overlay_has_the_original_size_and_dims_what_the_model_did_not_see():
    img = Image.new("RGB", (300, 200), (200, 200, 200))
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    box = predict.input_box(img.size, {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"})
    assert box[1] == pytest.approx(12.5) and box[3] == pytest.approx(187.5)  # 175 of 200 rows, centred
    assert box[2] - box[0] == pytest.approx(175)
    out = explain.overlay(img, heat, box=box, opacity=0.6)
    assert out.size == img.size
    arr = np.asarray(out).astype(int)
    assert (arr[2, 2] < 120).all()  # outside the box: dimmed
    assert tuple(arr[100, 150]) != tuple(arr[60, 80])  # hot corner and cold centre differ
    for cmap in explain.COLORMAPS:
        assert explain.overlay(img, heat, colormap=cmap).size == img.size


def test_perturbation_curves_reward_a_map_that_points_at_the_evidence():
    """A model whose logit is the mean of the top-left quarter: a map on that quarter must beat its inverse."""
    class QuarterModel(torch.nn.Module):
        def forward(self, x):
            s = x[:, :, :16, :16].mean((1, 2, 3)) * 20
            return torch.stack([s, -s], 1)

    x = torch.ones(1, 3, 32, 32)
    good = np.zeros((2, 2), np.float32)
    good[0, 0] = 1.0
    bad = 1.0 - good
    model = QuarterModel()
    good_del = explain.area(explain.perturbation_curve(model, x, good, 0))
    bad_del = explain.area(explain.perturbation_curve(model, x, bad, 0))
    good_ins = explain.area(explain.perturbation_curve(model, x, good, 0, most_relevant_first=False))
    bad_ins = explain.area(explain.perturbation_curve(model, x, bad, 0, most_relevant_first=False))
    assert good_del < bad_del and good_ins > bad_ins


# ---------------------------------------------------------------- predict


def test_classify_a_run_and_two_loads_give_identical_predictions(run_dir, tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(image_bytes(seed=5, size=(50, 40)))
    predict.clear_cache()
    first = predict.load_model(run_dir)
    assert predict.load_model(run_dir) is first  # cached
    top = first.classify(str(img), topk=2)[0]
    assert [lb for lb, _ in top][0] in ("circle", "square", "triangle") and len(top) == 2
    assert top[0][1] >= top[1][1]
    probs_a = first.probabilities([predict.read_image(str(img))])
    predict.clear_cache()
    second = predict.load_model(f"local-dir:{run_dir}")
    assert second is not first
    assert torch.equal(probs_a, second.probabilities([predict.read_image(str(img))]))
    assert first.labels == ["circle", "square", "triangle"]
    os.utime(run_dir / runs.WEIGHTS, ns=(1, 10 ** 18))  # retrained: the cache must not serve the old weights
    assert predict.load_model(run_dir) is not second


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_any_colour_mode_is_classified(run_dir, mode):
    loaded = predict.load_model(run_dir)
    arr = np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img = img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("I;16", "CMYK") else "PNG")
    (top,) = loaded.classify(buf.getvalue(), topk=3)
    assert abs(sum(p for _, p in top) - 1) < 1e-4


@pytest.mark.parametrize("data, message", [
    (b"", r"empty \(0 bytes\)"),
    (b"this is not an image", "not an image"),
    (image_bytes(size=(60, 60))[:80], "truncated|corrupt|cannot"),
])
def test_bad_images_get_a_clear_message(run_dir, data, message):
    with pytest.raises(predict.PredictError, match=message):
        predict.load_model(run_dir).classify(data)


def test_a_16_bit_picture_handed_over_by_the_ui_is_scaled_not_clipped():
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    rgb = predict.read_image(Image.fromarray(arr))  # uint16 -> mode I;16
    assert rgb.mode == "RGB" and 100 < np.asarray(rgb).mean() < 160  # a ramp, not a white square


def test_a_decompression_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(bomb)  # a small file of 72 million pixels
    with pytest.raises(predict.PredictError, match="too many pixels"):
        predict.read_image(str(bomb))


def test_models_that_cannot_be_loaded_are_refused_with_the_reason(run_dir, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((run_dir / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(predict.PredictError, match="Pickle weights can run code"):
        predict.load_model(pickled)
    with pytest.raises(predict.PredictError, match="pickle file"):
        predict.load_model(pickled / "pytorch_model.bin")
    with pytest.raises(predict.PredictError, match="no config.json"):
        predict.load_model(tmp_path)
    with pytest.raises(predict.PredictError, match="No model at"):
        predict.load_model(tmp_path / "missing")
    with pytest.raises(predict.PredictError, match="downloads are switched off \\(HF_HUB_OFFLINE is set\\)"):
        predict.load_model("hf-hub:someone/some-model")


# ---------------------------------------------------------------- the CLI, on every catalog family


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.name)
def test_cli_draws_an_overlay_for_every_catalog_model(entry, tmp_path):
    from timm.models import save_for_hf
    arch = entry.name.split(".")[0]
    patch = 14 if "patch14" in arch else 16
    model = timm.create_model(arch, pretrained=False, num_classes=2, img_size=patch * 4, depth=2)
    folder = tmp_path / "model"
    save_for_hf(model, folder, model_config={"label_names": ["ant", "bee"]}, safe_serialization=True)
    img = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(img)
    for method in explain.METHODS:
        out = tmp_path / f"{method}.png"
        code = cli.main(["predict", "--model", str(folder), "--image", str(img), "--explain", method,
                         "--out", str(out), "--topk", "2"])
        assert code == 0 and Image.open(out).size == (120, 90)


def test_cli_predict_json_and_errors(run_dir, tmp_path, capsys):
    img = tmp_path / "a.png"
    img.write_bytes(image_bytes(seed=9, size=(40, 40)))
    assert cli.main(["predict", "--model", str(run_dir), "--image", str(img), "--json", "--explain", "rollout",
                     "--out", str(tmp_path / "maps") + "/"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels"] == ["circle", "square", "triangle"]
    (r,) = result["results"]
    assert len(r["top"]) == 3 and (tmp_path / "maps" / "a.rollout.png").is_file()
    assert cli.main(["predict", "--model", str(run_dir), "--image", str(img), "--explain", "chefer",
                     "--target", "hexagon"]) == 2
    assert "not a class of this model" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    assert cli.main(["predict", "--model", str(run_dir), "--image", str(broken)]) == 2
    assert "broken.png" in capsys.readouterr().err




# ---------------------------------------------------------------- on a model that learned


def test_the_default_map_puts_more_heat_on_the_shape_than_on_the_background(trained_shapes):
    """On fresh shapes (with their masks), per unit of area, on most images."""
    import random as rnd
    from vit.samples import SHAPES, draw_shape_with_mask
    loaded = predict.load_model(trained_shapes)
    rng = rnd.Random(123)
    wins = []
    for i in range(30):
        image, mask = draw_shape_with_mask(SHAPES[i % 3], 32, rng)
        e = explain.explain(loaded.model, loaded.preprocess(image))  # the default method
        left, top, right, bottom = (round(v) for v in loaded.input_box(image.size))
        inside = torch.from_numpy(mask[top:bottom, left:right].astype(np.float32))[None, None]
        share = torch.nn.functional.adaptive_avg_pool2d(inside, e.heatmap.shape)[0, 0].numpy()  # shape per patch
        on = (e.heatmap * share).sum() / share.sum()
        off = (e.heatmap * (1 - share)).sum() / (1 - share).sum()
        wins.append(on > off)
    assert explain.DEFAULT_METHOD == "chefer"
    assert np.mean(wins) >= 0.6, f"heat on the shape on only {np.mean(wins):.0%} of images"


HUB_CAUSES = """
import sys
from vit import predict
for repo in sys.argv[1:]:
    try:
        predict.load_model("hf-hub:" + repo)
    except predict.PredictError as e:
        print(e)
"""


@pytest.mark.slow
def test_a_failed_hub_download_says_why_not_just_offline(tmp_path):
    """Not found, private, network and offline each get their own words; any OSError is not the network."""
    from fake_hub import FakeHub
    from vit.models import hub_failure
    fake = FakeHub()
    fake.repos["alice/secret"] = {"private": True, "commits": ["0" * 40], "files": {"config.json": b"{}"}}
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base.update(HF_HOME=str(tmp_path / "hf"))
    answers = {}
    try:
        for name, env in (("online", dict(HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0")),
                          ("network down", dict(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")),
                          ("offline", dict(HF_HUB_OFFLINE="1"))):
            out = subprocess.run([sys.executable, "-c", HUB_CAUSES, "alice/missing", "alice/secret"],
                                 env={**base, **env}, capture_output=True, text=True, timeout=120)
            answers[name] = out.stdout.strip().splitlines()
    finally:
        fake.close()
    assert answers["online"] == ["There is no model hf-hub:alice/missing on the Hub, or it is private (a private one "
                                 "needs a token of its owner)."] + [answers["online"][0].replace("missing", "secret")]
    assert all("Cannot reach the Hugging Face Hub" in a for a in answers["network down"]), answers
    assert all("downloads are switched off (HF_HUB_OFFLINE is set)" in a for a in answers["offline"]), answers
    disk = hub_failure(OSError(28, "No space left on device"), "hf-hub:a/b")
    assert "network" not in disk and "No space left on device" in disk
    assert not models.is_network_error(OSError(28, "No space left on device"))


def test_the_figure_shows_the_image_and_its_map_side_by_side_with_a_colour_bar():
    image = Image.new("RGB", (100, 50), (0, 200, 0))
    heat = np.zeros((2, 4), np.float32)
    heat[0, 0] = 1.0
    fig = explain.figure(image, heat, box=(10.0, 0.0, 60.0, 50.0), height=100)
    assert fig.size == (2 * 200 + 12, 100 + 14 + 22 + 8)
    assert fig.getpixel((100, 50)) == (0, 200, 0)  # the left panel is the image itself
    assert fig.getpixel((20, 0)) in ((0, 0, 0), (255, 255, 255))  # with the seen region outlined
    low, high = fig.getpixel((213, 110)), fig.getpixel((410, 110))
    assert low[2] > low[0] and high[0] > high[2]  # turbo: blue for less, red for more
