"""Sharing beyond the model (issue 28): the demo Space, the dataset version and its content hash, training data
from the Hub (hf-dataset:, imagefolder and parquet), served by the fake Hub."""
import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from fake_hub import FakeHub
from helpers import image_bytes, tiny
from vit import data, hub, predict, runs
from vit.data import DataError, Limits, load_dataset
from vit.samples import make_shapes_dataset

TOKEN = "hf_write_alice"


@pytest.fixture
def fake_hub(monkeypatch):
    h = FakeHub()
    h.as_the_hub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # this machine's token (the CLI's); a visitor's is passed explicitly
    yield h
    h.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run with its copy of its data (as the app keeps one)."""
    from vit.train import train
    tmp = tmp_path_factory.mktemp("share")
    with load_dataset(make_shapes_dataset(tmp / "shapes", per_class=10, size=32), val_fraction=0.4) as ds:
        train(ds, tiny(), tmp / "run")
        data.export_dataset(ds, tmp / "run" / runs.DATA_DIR)
    return tmp / "run"


def _png(seed: int, size=(24, 24)) -> bytes:
    return image_bytes(size=size, seed=seed)


# ---------------------------------------------------------------- the content hash

def test_the_content_hash_is_the_images_and_labels_whatever_the_names_and_the_split(tmp_path):
    for name, files in (("a", {"cat/1.png": 1, "cat/2.png": 2, "dog/3.png": 3, "dog/4.png": 4}),
                        ("b", {"train/cat/x.png": 1, "val/cat/y.png": 2, "train/dog/z.png": 3, "test/dog/w.png": 4}),
                        ("c", {"cat/1.png": 1, "cat/2.png": 2, "dog/3.png": 3, "cat/4.png": 4}),  # one relabelled
                        ("d", {"cat/1.png": 1, "cat/2.png": 2, "dog/3.png": 3, "dog/4.png": 5})):  # one changed
        for rel, seed in files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_bytes(_png(seed))
    hashes = {}
    for name in "abcd":
        with load_dataset(tmp_path / name) as ds:
            hashes[name] = ds.report.content_sha256
            assert f"Content hash: {hashes[name][:16]}" in ds.report.to_markdown()
    assert hashes["a"] == hashes["b"] and len({hashes["a"], hashes["c"], hashes["d"]}) == 3


# ---------------------------------------------------------------- hf-dataset: imagefolder and parquet

def _parquet(rows: list[tuple[bytes, int]], names: list[str], with_features: bool = True) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"image": [{"bytes": b, "path": f"{k}.png"} for k, (b, _) in enumerate(rows)],
                      "label": pa.array([lb for _, lb in rows], pa.int64())})
    if with_features:
        features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=5)
    return buf.getvalue()


def test_a_parquet_dataset_gives_its_class_names_and_keeps_its_splits(fake_hub, tmp_path):
    train_rows = [(_png(k), k % 2) for k in range(12)]
    test_rows = [(_png(100 + k), k % 2) for k in range(6)]
    fake_hub.add("datasets/bob/beans", {"data/train-00000-of-00001.parquet": _parquet(train_rows, ["healthy", "rust"]),
                                        "data/test-00000-of-00001.parquet": _parquet(test_rows, ["healthy", "rust"]),
                                        "README.md": b"---\nlicense: mit\n---\n# beans\n"})
    with load_dataset("hf-dataset:bob/beans", val_fraction=0.25) as ds:
        r = ds.report
        assert ds.classes == ["healthy", "rust"] and r.ok, r.errors
        assert r.split_counts["test"] == {"healthy": 3, "rust": 3}  # the dataset's own test split
        assert sum(r.split_counts["train"].values()) + sum(r.split_counts["val"].values()) == 12
        assert "parquet" in r.layout and r.source == "hf-dataset:bob/beans"
        from_hub = r.content_sha256
    for k, (blob, label) in enumerate(train_rows + test_rows):  # the same images from a folder: the same hash
        (tmp_path / "f" / ["healthy", "rust"][label]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / ["healthy", "rust"][label] / f"{k}.png").write_bytes(blob)
    with load_dataset(tmp_path / "f") as ds:
        assert ds.report.content_sha256 == from_hub


def test_an_imagefolder_dataset_at_a_revision_and_a_config(fake_hub):
    first = fake_hub.add("datasets/bob/leaves", {f"train/{c}/{k}.png": _png(10 * i + k)
                                                  for i, c in enumerate(["oak", "elm"]) for k in range(4)})
    fake_hub.add("datasets/bob/leaves", {"train/ash/0.png": _png(90), "train/ash/1.png": _png(91),
                                         "validation/oak/9.png": _png(92), "validation/elm/9.png": _png(93)})
    with load_dataset("hf-dataset:bob/leaves") as ds:
        assert ds.classes == ["ash", "elm", "oak"] and ds.report.split_counts["val"]["oak"] == 1
    with load_dataset(f"hf-dataset:bob/leaves@{first}") as ds:  # as it was then
        assert ds.classes == ["elm", "oak"] and len(ds.items) == 8
    readme = (b"---\nconfigs:\n- config_name: small\n  data_files:\n  - split: train\n    path: small/*/*.png\n"
              b"- config_name: default\n  data_files:\n  - split: train\n    path: train/*/*\n---\n")
    fake_hub.add("datasets/bob/leaves", {"README.md": readme, **{f"small/{c}/{k}.png": _png(200 + 10 * i + k)
                                                                 for i, c in enumerate(["x", "y"]) for k in range(3)}})
    with load_dataset("hf-dataset:bob/leaves:small") as ds:
        assert ds.classes == ["x", "y"] and len(ds.items) == 6
    with load_dataset("hf-dataset:bob/leaves") as ds:  # the default config: train/ only
        assert ds.classes == ["ash", "elm", "oak"] and "val" not in {it.split for it in ds.items}
    with pytest.raises(DataError, match="no config 'big'; it has: small, default"):
        load_dataset("hf-dataset:bob/leaves:big")


@pytest.mark.parametrize("spec, message", [
    ("hf-dataset:", "is not a Hub dataset"), ("hf-dataset:bob", "needs its owner"),
    ("hf-dataset:bob/x@../../etc", "is not a revision"), ("hf-dataset:bob/x:a/b", "is not a config name"),
    ("hf-dataset:bob/nope", "was not found on the Hub, or it is private"),
    ("hf-dataset:alice/secret", "was not found on the Hub, or it is private"),
    ("hf-dataset:bob/leaves@" + "f" * 40, "no revision"),
    ("hf-dataset:bob/text", "has no images and no parquet files"),
])
def test_a_hub_dataset_that_cannot_be_used_says_why(fake_hub, monkeypatch, spec, message):
    fake_hub.add("datasets/bob/leaves", {"train/oak/0.png": _png(0)})
    fake_hub.add("datasets/bob/text", {"data.txt": b"hello"})
    fake_hub.add("datasets/alice/secret", {"train/a/0.png": _png(0)}, private=True)
    monkeypatch.setenv("HF_TOKEN", "hf_read_carol")  # not alice: her private dataset is not there for carol
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


def test_the_upload_caps_apply_before_anything_big_is_read(fake_hub):
    fake_hub.add("datasets/bob/many", {f"train/{c}/{k}.png": _png(k) for c in "ab" for k in range(6)})
    with pytest.raises(DataError, match="12 images, over the cap of 10"):
        load_dataset("hf-dataset:bob/many", limits=Limits(max_files=10))
    with pytest.raises(DataError, match="over the cap of 0.00 GB"):
        load_dataset("hf-dataset:bob/many", limits=Limits(max_total_bytes=1000))
    assert not [r for r in fake_hub.requests if "/resolve/" in r], "nothing was downloaded"
    fake_hub.add("datasets/bob/rows", {"train-0.parquet": _parquet([(_png(k), k % 2) for k in range(12)], ["a", "b"])})
    with pytest.raises(DataError, match="12 rows, over the cap of 10"):
        load_dataset("hf-dataset:bob/rows", limits=Limits(max_files=10))
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, "PNG")  # small file, 25 megapixels: refused from its header
    fake_hub.add("datasets/bob/bomb", {"train/a/0.png": bomb.getvalue(), "train/a/1.png": _png(1),
                                       "train/b/0.png": _png(2), "train/b/1.png": _png(3)})
    with load_dataset("hf-dataset:bob/bomb", limits=Limits(max_pixels=10_000_000)) as ds:
        assert len(ds.items) == 3 and any("pixels" in s.reason for s in ds.report.skipped)


def test_hostile_names_in_a_hub_dataset_are_left_out_and_nothing_lands_outside(fake_hub, tmp_path):
    rows = [(_png(k), k % 3) for k in range(9)] + [(b"not an image", 0), (None, 1)]
    table = _parquet([(b or b"", lb) for b, lb in rows], ["ok", "../../escape", ".hidden"])
    fake_hub.add("datasets/bob/evil", {"train-0.parquet": table})
    folder, layout, skipped = data.fetch_hub_dataset("hf-dataset:bob/evil", tmp_path / "d", Limits())
    assert sorted(p.relative_to(tmp_path / "d").as_posix() for p in folder.rglob("*") if p.is_file())[0] \
        .startswith("train/ok/")
    assert {p.parent.name for p in folder.rglob("*.png")} == {"ok"}
    assert sum("row" in s.name for s in skipped) == 7 and not list(tmp_path.glob("escape*"))
    fake_hub.add("datasets/bob/evil2", {"train/../../x/0.png": _png(1), "train/.git/0.png": _png(2),
                                        "train/ok/0.png": _png(3), "train/0.png": _png(4)})
    folder, _, skipped = data.fetch_hub_dataset("hf-dataset:bob/evil2", tmp_path / "e", Limits())
    assert [p.relative_to(folder).parts[:2] for p in folder.rglob("*.png")] == [("train", "ok")]
    assert [s.name for s in skipped] == ["train/0.png"]


# ---------------------------------------------------------------- the push: demo Space and dataset version

@pytest.mark.slow  # (a tiny run trained)
def test_a_push_with_its_demo_space_and_its_data_links_them_and_the_data_trains_again(trained, fake_hub):
    pushed = hub.push_run(trained, "shapes", TOKEN, demo=True, data=True, endpoint=fake_hub.url)
    assert (pushed.repo_id, pushed.space_id, pushed.dataset_id) == ("alice/shapes", "alice/shapes-demo",
                                                                     "alice/shapes-data")
    space = fake_hub.repos["spaces/alice/shapes-demo"]
    assert set(space["files"]) == {"app.py", "requirements.txt", "README.md"} and space["sdk"] == "gradio"
    assert not space["private"] and b'MODEL_ID = "alice/shapes"' in space["files"]["app.py"]
    assert b"sdk: gradio" in space["files"]["README.md"] and b"- alice/shapes\n" in space["files"]["README.md"]
    assert b"timm==" in space["files"]["requirements.txt"] and b"gradio" not in space["files"]["requirements.txt"]
    ds_repo = fake_hub.repos["datasets/alice/shapes-data"]
    assert ds_repo["private"]  # always: a user's data
    report = runs.read_json(trained / runs.DATA_REPORT)
    card = fake_hub.repos["alice/shapes"]["files"]["README.md"].decode()
    assert "https://huggingface.co/spaces/alice/shapes-demo" in card and "datasets/alice/shapes-data" in card
    assert report["content_sha256"] in card and "datasets:\n- alice/shapes-data" in card
    assert report["content_sha256"].encode() in ds_repo["files"]["README.md"]
    with load_dataset("hf-dataset:alice/shapes-data") as ds:  # its owner trains on it again: the same data
        assert ds.report.content_sha256 == report["content_sha256"]
        assert ds.report.split_counts == report["split_counts"]  # the splits kept


def test_a_run_without_its_data_copy_cannot_push_a_dataset_version(tmp_path, fake_hub):
    run = runs.create_run_dir(tmp_path, "x")
    with pytest.raises(hub.HubError, match="no copy of its data"):
        hub.push_run(run, "alice/x", TOKEN, data=True, endpoint=fake_hub.url)
    assert not fake_hub.repos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # (a tiny run trained, the demo app started in a process of its own)
def test_the_demo_space_app_runs_with_stock_timm_and_answers_as_the_app(trained, tmp_path, monkeypatch):
    from gradio_client import handle_file
    import shutil
    run = shutil.copytree(trained, tmp_path / "run")  # calibrated (too few images here to fit a temperature)
    config = runs.read_json(run / runs.CONFIG)
    config[runs.CONFIG_KEY]["calibration"] = {**(config[runs.CONFIG_KEY].get("calibration") or {}), "temperature": 2.5}
    runs.write_json(run / runs.CONFIG, config)
    assert predict.load_model(run).trust.temperature == 2.5
    fake = FakeHub()
    fake.as_the_hub(monkeypatch)
    try:
        hub.push_run(run, "alice/shapes", TOKEN, endpoint=fake.url)
        folder = hub.share.write_demo(tmp_path / "space", "alice/shapes")
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIT_", "GRADIO_"))}
        env.update(HF_ENDPOINT=fake.url, HF_HOME=str(tmp_path / "hf-home"), GRADIO_SERVER_PORT=str(port),
                   GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH="")
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            client = _connect(f"http://127.0.0.1:{port}/", proc)
            photo = tmp_path / "photo.png"
            Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo)
            answer, heatmap = client.predict(handle_file(str(photo)), api_name="/classify")
            ours = predict.load_model(run).classify(str(photo), topk=3)[0]
            got = {c["label"]: c["confidence"] for c in answer["confidences"]}
            assert answer["label"] == ours[0][0]
            assert all(got[label] == pytest.approx(p, abs=1e-4) for label, p in ours)  # calibrated, as ours
            from vit.data.pixels import EvalPixels, read_for_model
            seen = EvalPixels(predict.load_model(trained).data_config).crop(read_for_model(photo))
            shown = np.asarray(Image.open(heatmap).convert("RGB"), dtype=int)
            assert shown.shape == (320, 320, 3)  # the part of the image the model saw (32 px), enlarged...
            tint = shown - np.asarray(seen.resize((320, 320), Image.BICUBIC), dtype=int)
            assert tint[..., 0].mean() > 5 and tint[..., 0].std() > 1  # ... with the heatmap, red, not uniform
        finally:
            proc.kill()
            out = proc.communicate()[0]
        app = folder.joinpath("app.py").read_text()
        assert "from vit" not in app and "import vit" not in app, out[-2000:]  # stock timm only
    finally:
        fake.close()


def _connect(url: str, proc: subprocess.Popen, timeout: float = 120):
    from gradio_client import Client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the demo app stopped: {proc.stdout.read()[-3000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:
            time.sleep(0.5)
    raise AssertionError("the demo app did not start")


def test_the_data_tab_loads_a_hub_dataset_with_the_visitors_token_never_the_hosts(fake_hub, tmp_path, monkeypatch):
    from vit import jobs, ui
    from vit.ui.data_tab import check_hub_dataset
    fake_hub.add("datasets/alice/private-leaves", {f"train/{c}/{k}.png": _png(10 * i + k)
                                                   for i, c in enumerate(["oak", "elm"]) for k in range(4)},
                 private=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the host's own token may read it...
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.delenv("VIT_SINGLE_USER", raising=False)
    manager = jobs.JobManager(tmp_path / "checkpoints", gpus=0)
    try:
        assert not manager.single_user
        with pytest.raises(Exception, match="not found on the Hub, or it is private"):  # ... a visitor may not
            check_hub_dataset(manager, "hf-dataset:alice/private-leaves", "")
        shown = check_hub_dataset(manager, "alice/private-leaves", "hf_read_alice")  # the visitor's own token
        assert shown.dataset["name"] == "hf-dataset:alice/private-leaves" and shown.dataset["labels"] == ["elm", "oak"]
        assert "Hub dataset, imagefolder, commit" in shown.report and "Content hash" in shown.report
        run_id = manager.submit(shown.dataset["path"], tiny(epochs=1), owner="alice-visitor-token-0001",
                                source_name=shown.dataset["name"])
        assert manager.wait(run_id, 120) == "completed"
        assert runs.read_json(manager.root / run_id / runs.JOB)["source"] == "hf-dataset:alice/private-leaves"
        with pytest.raises(Exception, match="is not a revision"):
            ui.check_hub_dataset(manager, "hf-dataset:alice/x@..", "")
    finally:
        manager.shutdown(grace_s=1)


def test_the_command_line_checks_a_hub_dataset(fake_hub, capsys):
    from vit import cli
    fake_hub.add("datasets/bob/leaves", {f"{c}/{k}.png": _png(10 * i + k) for i, c in enumerate(["oak", "elm"])
                                         for k in range(4)})
    assert cli.main(["data", "check", "hf-dataset:bob/leaves"]) == 0
    out = capsys.readouterr().out
    assert "Ready to train: 8 images in 2 classes (Hub dataset, imagefolder, commit" in out and "Content hash" in out


@pytest.mark.slow  # (two ONNX files and a comparison)
def test_the_command_line_exports_int8_and_compares(trained, tmp_path, capsys):
    from vit import cli
    assert cli.main(["export", "--run", str(trained), "--out", str(tmp_path / "m.onnx"), "--int8"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.int8.onnx").is_file() and "ONNX int8: " in out
    assert f"on {len(hub.validation_images(trained))} validation images, same answer as PyTorch" in out
