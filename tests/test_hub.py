"""Sharing: model card, push to a local fake of the Hub and load back with stock timm, ONNX, Spaces."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fake_hub import FakeHub
from helpers import image_bytes, tiny
from vit import hub, predict, runs
from vit.data import load_dataset
from vit.samples import make_shapes_dataset
from vit.train import train

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_write_alice"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    # (validation images enough for a temperature and a "none of these" threshold: vit.trust)
    with load_dataset(make_shapes_dataset(tmp / "shapes", per_class=12, size=32), val_fraction=0.6) as ds:
        train(ds, tiny(), tmp / "run")
    return tmp / "run"


@pytest.fixture
def fake_hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE at import; in-process calls to the fake need it off."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _env(fake: FakeHub, tmp_path: Path, token: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return dict(env, HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=token)


STOCK_TIMM = """
import json, sys, timm, torch
from PIL import Image
model = timm.create_model("hf-hub:alice/shapes-vit", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
with torch.no_grad():
    logits = [model(transform(Image.open(p).convert("RGB")).unsqueeze(0))[0].tolist() for p in sys.argv[1:]]
print(json.dumps({"labels": model.pretrained_cfg["label_names"], "logits": logits}))
"""


@pytest.mark.slow
def test_push_then_stock_timm_loads_it_and_predicts_exactly_as_the_app(run_dir, fake_hub, tmp_path):
    env = _env(fake_hub, tmp_path, TOKEN)
    pushed = subprocess.run([sys.executable, "-m", "vit", "push", "--run", str(run_dir), "--repo", "alice/shapes-vit"],
                            env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    assert f"{fake_hub.url}/alice/shapes-vit" in pushed.stdout
    assert TOKEN not in pushed.stdout + pushed.stderr
    files = fake_hub.repos["alice/shapes-vit"]["files"]
    assert {"config.json", "model.safetensors", "ood.safetensors", "README.md", "confusion_matrix.png",
            "learning_curves.png", "reliability.png"} <= set(files)
    assert "last.pt" not in files and "status.json" not in files
    assert fake_hub.validated and fake_hub.validated[-1]["library_name"] == "timm"  # the card's YAML passed

    images = []
    for i, size in enumerate([(32, 32), (64, 48), (40, 90)]):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(image_bytes(seed=20 + i, size=size))
        images.append(str(p))
    loaded = subprocess.run([sys.executable, "-c", STOCK_TIMM, *images], env=_env(fake_hub, tmp_path), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    theirs = json.loads(loaded.stdout.strip().splitlines()[-1])
    ours = predict.load_model(run_dir)
    with torch.inference_mode():
        mine = [ours.model(ours.preprocess(predict.read_image(p)))[0].tolist() for p in images]
    assert theirs["labels"] == ours.labels
    assert np.abs(np.array(theirs["logits"]) - np.array(mine)).max() <= 1e-5

    # ours loads it too (hf-hub: in predict), and a second push updates the same repo
    ours_from_hub = subprocess.run(
        [sys.executable, "-m", "vit", "predict", "--model", "hf-hub:alice/shapes-vit", "--image", images[0], "--json"],
        env=_env(fake_hub, tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ours_from_hub.returncode == 0, ours_from_hub.stderr
    said = json.loads(ours_from_hub.stdout)
    top = said["results"][0]["top"]
    assert top[0]["label"] == ours.classify(images[0])[0][0][0]
    # ... calibrated, with its "none of these" check: the files travelled with the push and the download
    assert top[0]["probability"] == pytest.approx(ours.classify(images[0])[0][0][1], abs=1e-5)
    (answer,) = ours.answers([predict.read_image(images[0])])
    assert said["temperature"] == ours.trust.temperature != 1.0 and said["threshold"] == pytest.approx(
        ours.trust.threshold()) and said["results"][0]["ood_score"] == pytest.approx(answer.ood_score, abs=1e-4)
    commits = len(fake_hub.repos["alice/shapes-vit"]["commits"])
    again = subprocess.run([sys.executable, "-m", "vit", "push", "--run", str(run_dir), "--repo", "shapes-vit"],
                           env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(fake_hub.repos["alice/shapes-vit"]["commits"]) == commits + 1


@pytest.mark.parametrize("token, repo, message", [
    (None, "alice/x", "No Hugging Face token"),
    ("  ", "alice/x", "No Hugging Face token"),
    ("hf_bogus_token_123", "alice/x", "rejected the token"),
    ("hf_read_alice", "alice/x", "can only read"),
    (TOKEN, "bob/x", "would belong to 'bob'"),
    (TOKEN, "alice/bad name!", "not a valid repo name"),
])
def test_push_problems_get_clear_messages_without_the_token(run_dir, fake_hub, online, token, repo, message):
    with pytest.raises(hub.HubError, match=message) as info:
        hub.push_run(run_dir, repo, token, endpoint=fake_hub.url)
    if token and token.strip():
        assert token.strip() not in str(info.value)
    assert not fake_hub.repos  # nothing was created


def test_push_with_the_network_down_says_so(run_dir, online):
    with pytest.raises(hub.HubError, match="Cannot reach the Hugging Face Hub") as info:
        hub.push_run(run_dir, "alice/x", TOKEN, endpoint="http://127.0.0.1:9")
    assert TOKEN not in str(info.value)


def test_a_private_push_is_private_and_a_run_without_a_model_is_refused(run_dir, fake_hub, online, tmp_path):
    pushed = hub.push_run(run_dir, "alice/secret", TOKEN, private=True, include_resume=True, endpoint=fake_hub.url)
    assert pushed.url.endswith("/alice/secret") and pushed.space_id is None and pushed.dataset_id is None
    assert fake_hub.repos["alice/secret"]["private"]
    assert set(fake_hub.repos) == {"alice/secret"}  # (demo and data: only when asked)
    assert "last.pt" in fake_hub.repos["alice/secret"]["files"]  # asked for
    assert all(h == f"Bearer {TOKEN}" for h in fake_hub.auth_headers)
    empty = runs.create_run_dir(tmp_path, "x")
    with pytest.raises(hub.HubError, match="no trained model"):
        hub.push_run(empty, "alice/x", TOKEN, endpoint=fake_hub.url)


def test_model_card_metadata_text_and_pictures(run_dir, tmp_path):
    from huggingface_hub import ModelCard
    files = hub.write_card(run_dir, tmp_path / "card", "alice/shapes-vit")
    assert sorted(f.name for f in files) == ["README.md", "confusion_matrix.png", "learning_curves.png",
                                             "reliability.png"]
    card = ModelCard.load(tmp_path / "card" / "README.md")
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert {"image-classification", "vision-transformer"} <= set(card.data.tags)
    assert card.data.base_model is None  # trained from scratch
    assert card.data.eval_results[0].metric_type == "accuracy"
    text = card.text
    assert 'timm.create_model("hf-hub:alice/shapes-vit", pretrained=True)' in text
    assert "| circle |" in text and "95% interval" in text and "## Intended use and limitations" in text
    assert "trained from scratch" in text and "`circle`, `square`, `triangle`" in text
    for name in ("confusion_matrix.png", "learning_curves.png", "reliability.png"):
        assert Image.open(tmp_path / "card" / name).size[0] > 200
    calibration = runs.read_config(run_dir)["vit_studio"]["calibration"]
    assert (f"divided by a temperature of {calibration['temperature']:.2f}, fitted on {calibration['images']} "
            f"held-out images. Expected calibration error {calibration['ece_before']:.3f} before, "
            f"{calibration['ece_after']:.3f} after") in text
    assert f"temperature = {calibration['temperature']}" in text and '### "None of these"' in text
    meta = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", (tmp_path / "card" / "README.md").read_text(), re.S).group(1))
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"


def test_the_card_names_the_base_model_and_the_health_warnings(run_dir, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = runs.read_config(copy)
    config["vit_studio"].update(model="vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=True)
    runs.write_json(copy / runs.CONFIG, config)
    report = runs.read_json(copy / runs.DATA_REPORT)
    report["leakage"] = [["circle/1.png", "circle/9.png"]]
    runs.write_json(copy / runs.DATA_REPORT, report)
    card = hub.model_card(copy, "alice/x")
    assert card.data.base_model == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert "validation accuracy may be optimistic" in card.text


@pytest.mark.slow  # (seconds: an ONNX export, or a quick model's features computed)
def test_onnx_export_matches_pytorch_for_any_batch(run_dir, tmp_path):
    import onnxruntime as ort
    (tmp_path / "out").mkdir()
    path, diff = hub.export_onnx(run_dir, tmp_path / "out" / "m.onnx")
    assert diff < 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]  # no weights file beside it
    moved = tmp_path / "elsewhere.onnx"
    path.rename(moved)  # handed to someone else: it runs by itself
    session = ort.InferenceSession(str(moved), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    ours = predict.load_model(run_dir).model
    with torch.inference_mode():
        assert np.abs(session.run(None, {"pixel_values": x.numpy()})[0] - ours(x).numpy()).max() < 1e-4


@pytest.mark.slow
def test_the_onnx_file_says_its_labels_and_preprocessing_and_they_reproduce_predict(run_dir, tmp_path):
    """Its metadata alone (labels, input name and size, mean, std, resize and crop) is enough: preprocessing an
    oblong photo by hand from it, the ONNX file gives predict's probabilities."""
    import json as _json
    import onnxruntime as ort
    path, _ = hub.export_onnx(run_dir, tmp_path / "m.onnx")
    blob = path.read_bytes()
    assert b"site-packages" not in blob and str(Path.cwd()).encode() not in blob, "no paths of this machine"
    meta = hub.onnx_metadata(path)
    loaded = predict.load_model(run_dir)
    assert _json.loads(meta["labels"]) == loaded.labels and meta["input_name"] == "pixel_values"
    assert _json.loads(meta["input_size"]) == [3, 32, 32] and meta["interpolation"] == "bicubic"
    assert _json.loads(meta["mean"]) == pytest.approx(list(loaded.data_config["mean"]))
    assert "crop the centre 32x32" in meta["preprocessing"]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (61, 97, 3), dtype=np.uint8)).save(photo)
    img = predict.read_image(str(photo))
    size, crop = _json.loads(meta["input_size"])[-1], float(meta["crop_pct"])
    short = int(size / crop)
    w, h = img.size
    resized = img.resize((round(w * short / h), short) if w >= h else (short, round(h * short / w)), Image.BICUBIC)
    left, top = int(round((resized.width - size) / 2.0)), int(round((resized.height - size) / 2.0))
    x = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    x = ((x - np.array(_json.loads(meta["mean"]))) / np.array(_json.loads(meta["std"]))).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {meta["input_name"]: x.transpose(2, 0, 1)[None]})[0][0]
    logits = logits / float(meta["temperature"])  # (the calibration, from the metadata too)
    assert float(meta["temperature"]) == pytest.approx(loaded.trust.temperature, rel=1e-5)
    theirs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    ours = loaded.probabilities([img])[0].numpy()
    assert np.abs(theirs - ours).max() < 1e-3


@pytest.mark.slow  # (seconds: two ONNX files and a comparison)
def test_int8_onnx_keeps_the_metadata_says_its_precision_and_answers_as_float32(run_dir, tmp_path):
    import onnxruntime as ort
    fp32, _ = hub.export_onnx(run_dir, tmp_path / "m.onnx")
    int8 = hub.quantize_onnx(fp32, tmp_path / "m.int8.onnx")
    meta, meta8 = hub.onnx_metadata(fp32), hub.onnx_metadata(int8)
    assert meta.pop("precision") == "float32" and meta8.pop("precision").startswith("int8")
    assert meta8 == meta  # labels, preprocessing, temperature: all of it
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size  # (a tiny model: the graph is much of the file)
    import onnx
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops  # really quantised
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
            for p in (fp32, int8))
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.1 * np.abs(a).max()


@pytest.mark.slow  # (seconds: a run trained with its data copy, two ONNX files and a comparison)
def test_compare_measures_each_model_on_the_runs_validation_images(tmp_path):
    from vit.data import export_dataset
    with load_dataset(make_shapes_dataset(tmp_path / "shapes", per_class=10, size=32), val_fraction=0.5) as ds:
        train(ds, tiny(), tmp_path / "run")
        export_dataset(ds, tmp_path / "run" / runs.DATA_DIR)
        val = [ds.items[i] for i in ds.val]
    run = tmp_path / "run"
    fp32, _ = hub.export_onnx(run, tmp_path / "m.onnx")
    compared = hub.compare(run, {"ONNX float32": fp32, "ONNX int8": hub.quantize_onnx(fp32, tmp_path / "i8.onnx")})
    assert compared["images"] == len(val) == len(hub.validation_images(run))
    loaded = predict.load_model(run)
    expected = np.mean([loaded.classify(item.path, 1)[0][0][0] == item.label for item in val])
    rows = {r["name"]: r for r in compared["rows"]}
    assert list(rows) == ["PyTorch (float32)", "ONNX float32", "ONNX int8"]
    assert rows["PyTorch (float32)"]["accuracy"] == pytest.approx(expected)
    assert rows["ONNX float32"]["accuracy"] == pytest.approx(expected) and rows["ONNX float32"]["agree"] == 1.0
    assert all(r["ms"] > 0 for r in rows.values()) and rows["ONNX int8"]["mb"] < rows["ONNX float32"]["mb"]
    assert len(hub.validation_images(run, limit=3)) == 3


@pytest.mark.slow  # (seconds: an ONNX export, or a quick model's features computed)
def test_cli_export(run_dir, tmp_path, capsys):
    from vit import cli
    assert cli.main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 0
    assert "largest logit difference" in capsys.readouterr().out and (tmp_path / "x.onnx").is_file()


# ---------------------------------------------------------------- Spaces


def test_readme_front_matter_makes_a_gradio_space():
    import gradio
    text = (ROOT / "README.md").read_text()
    meta = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__  # the version requirements.txt pins
    assert meta["hf_oauth"] is True and {"write-repos", "manage-repos", "jobs"} <= set(meta["hf_oauth_scopes"])
    assert str(meta["python_version"]).startswith("3.") and meta["suggested_hardware"]
    assert "ZeroGPU" in text and "Duplicate" in text


def test_run_storage_on_a_space(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_CHECKPOINTS", raising=False)
    monkeypatch.setenv("SYSTEM", "spaces")
    data = tmp_path / "data"
    assert runs.default_root(persistent=data) == runs.DEFAULT_ROOT  # no persistent storage mounted
    assert "lost" in runs.storage_note(persistent=data)
    data.mkdir()
    assert runs.default_root(persistent=data) == data / "checkpoints"
    assert runs.storage_note(persistent=data) == ""
    monkeypatch.setenv("VIT_CHECKPOINTS", str(tmp_path / "mine"))
    assert runs.default_root(persistent=data) == tmp_path / "mine"
    monkeypatch.delenv("SYSTEM")
    monkeypatch.delenv("VIT_CHECKPOINTS")
    assert runs.default_root(persistent=data) == runs.DEFAULT_ROOT and runs.storage_note(persistent=data) == ""


# ---------------------------------------------------------------- the Share tab's endpoints


def test_share_endpoints_preview_push_and_export(app_url, app_manager, fake_hub, online, monkeypatch, tmp_path):
    from gradio_client import Client
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    run_id = app_manager.submit(make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32), tiny())
    assert app_manager.wait(run_id, 120) == "completed"
    client = Client(app_url, verbose=False)
    card = client.predict(run_id, "alice/from-app", api_name="/preview_card")
    assert 'timm.create_model("hf-hub:alice/from-app", pretrained=True)' in card
    with pytest.raises(Exception, match="No Hugging Face token") as info:
        client.predict(run_id, "alice/from-app", False, "", "me", api_name="/push")
    with pytest.raises(Exception, match="rejected the token") as info:
        client.predict(run_id, "alice/from-app", False, "hf_wrong_secret_42", "me", api_name="/push")
    assert "hf_wrong_secret_42" not in str(info.value)
    message = client.predict(run_id, "from-app", True, TOKEN, "me", api_name="/push")
    assert "alice/from-app" in message and TOKEN not in message
    pushed = fake_hub.repos["alice/from-app"]
    assert pushed["private"] and "model.safetensors" in pushed["files"]
    onnx, note = client.predict(run_id, "me", api_name="/export_onnx")
    assert [Path(p).name for p in onnx] == [f"{run_id}.onnx", f"{run_id}.int8.onnx"]
    assert all(Path(p).stat().st_size > 1000 for p in onnx) and "largest difference from PyTorch" in note
    assert "| ONNX int8 |" in note and "of the run's validation images" in note


def test_on_a_space_the_app_is_multi_user_and_warns_when_runs_are_not_kept(tmp_path, monkeypatch):
    from vit.jobs import JobManager
    from vit.ui import build_app
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.delenv("VIT_SINGLE_USER", raising=False)
    monkeypatch.delenv("VIT_CHECKPOINTS", raising=False)
    monkeypatch.setattr(runs, "SPACES_PERSISTENT", tmp_path / "no-data")
    monkeypatch.setattr(runs, "DEFAULT_ROOT", tmp_path / "checkpoints")
    manager = JobManager(gpus=0)
    try:
        assert not manager.single_user and manager.root == tmp_path / "checkpoints"
        app = build_app(manager)  # no OAuth variables here: no login button, and no crash
        texts = [str(c.get("props", {}).get("value")) for c in app.config["components"]]
        assert any("no persistent storage" in t for t in texts)
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_a_run_downloads_as_a_zip_with_its_card_and_onnx_file_without_resume_state(run_dir, tmp_path):
    import zipfile
    from vit import jobs, ui
    manager = jobs.JobManager(tmp_path / "checkpoints", gpus=0)
    try:
        import shutil
        shutil.copytree(run_dir, manager.root / run_dir.name)
        zipped = zipfile.ZipFile(ui.download_run(manager, run_dir.name, None))
        names = zipfile.ZipFile(zipped.filename).namelist()
        assert {f"{run_dir.name}/{n}" for n in ("README.md", "model.onnx", "model.int8.onnx",
                                                "confusion_matrix.png")} <= set(names)
        card = zipped.read(f"{run_dir.name}/README.md").decode()
        assert "## Use it with timm" in card and "your-name/" in card
        exported = (manager.root / run_dir.name / "model.onnx").stat().st_mtime_ns
        ui.download_run(manager, run_dir.name, None)  # the same weights: the ONNX file is not made again
        assert (manager.root / run_dir.name / "model.onnx").stat().st_mtime_ns == exported
        served, said = ui.export_run(manager, run_dir.name, None)  # the Share tab says what the file needs
        labels = runs.read_config(run_dir)["label_names"]
        assert "Input `pixel_values`: float32 [batch, 3, 32, 32]" in said and ", ".join(labels) in said
        assert "Preprocessing: RGB; resize the shorter side to" in said
        assert [Path(p).name for p in served] == [f"{run_dir.name}.onnx", f"{run_dir.name}.int8.onnx"]
        assert "Accuracy not measured: the run has no copy of its validation images" in said
    finally:
        manager.shutdown(grace_s=1)
    names = zipfile.ZipFile(runs.archive(run_dir, tmp_path)).namelist()
    assert f"{run_dir.name}/model.safetensors" in names and f"{run_dir.name}/config.json" in names
    assert f"{run_dir.name}/ood.safetensors" in names  # the "none of these" check goes with the model
    assert not any(n.endswith("last.pt") for n in names)
