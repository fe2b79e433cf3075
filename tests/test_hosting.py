"""Hostile visitors of a shared app (issue 12): each attack is reproduced through the app's API, or the
function behind it, and shown to be refused or contained, with nothing already saved lost.

The shared app here runs in multi-user mode with its runs in a folder outside the working directory and
the temp dir (as /data/checkpoints is on a Space with persistent storage), a 1 MB upload cap and a zero
temp-file age, so every limit is hit cheaply.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from fake_hub import FakeHub
from helpers import image_bytes, tiny, write_zip
from test_app import assert_refused
from vit import data, hub, jobs, predict, runs, ui
from vit.jobs import JobError, JobManager
from vit.safety import owner_hash
from vit.samples import make_shapes_dataset

ALICE, BOB = "alice-visitor-token-0001", "bob-visitor-token-00002"
LIMITS = {"VIT_MAX_UPLOAD_MB": "1", "VIT_TEMP_MAX_AGE_S": "0", "VIT_CLASSIFY_CONCURRENCY": "2"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "d", per_class=12, size=32)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, shapes):
    """The app as a public Space runs it, and one finished run of Alice's."""
    outside = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path.home()
    store = Path(tempfile.mkdtemp(prefix="vit-hosting-", dir=outside))  # not under cwd or the temp dir
    saved = {k: os.environ.get(k) for k in LIMITS}
    os.environ.update(LIMITS)
    manager = JobManager(store / "checkpoints", single_user=False, gpus=0)
    app = ui.build_app(manager)
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **ui.launch_options())
    run_id = manager.submit(shapes, tiny(epochs=1), owner=ALICE, source_name="shapes")
    assert manager.wait(run_id, 120) == "completed"
    yield SimpleNamespace(url=url, manager=manager, run_id=run_id, store=store, app=app)
    app.close()
    manager.shutdown(grace_s=2)
    shutil.rmtree(store, ignore_errors=True)
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _png(tmp_path, name="photo.png", size=(48, 40), seed=3) -> str:
    path = tmp_path / name
    path.write_bytes(image_bytes(seed=seed, size=size))
    return str(path)


# 1 ------------------------------------------------------------- names that become paths


@pytest.mark.slow
def test_manifest_labels_and_polyglot_names_cannot_write_outside_the_run(tmp_path, shapes):
    pgm_shell = b"P2\n# echo pwned > /tmp/x\n8 8\n255\n" + b"200 " * 64 + b"\n"  # a valid image and a script
    members = {"labels.csv": "path,label\nup.png,../../../escape\nabs.png,/abs/path\nnl.png,\"a\nb\"\n"
                             "x.sh,cat\n" + "".join(f"c{i}.png,cat\nd{i}.png,dog\n" for i in range(3)),
               "up.png": image_bytes(seed=90), "abs.png": image_bytes(seed=91), "nl.png": image_bytes(seed=92),
               "x.sh": pgm_shell}
    members.update({f"c{i}.png": image_bytes(seed=i) for i in range(3)})
    members.update({f"d{i}.png": image_bytes(seed=10 + i) for i in range(3)})
    z = write_zip(tmp_path / "hostile.zip", members)
    with data.load_dataset(z) as ds:
        reasons = {s.name: s.reason for s in ds.report.skipped}
        assert ds.classes == ["cat", "dog"] and ds.report.ok
    assert "contains '/'" in reasons["up.png"] and "contains '/'" in reasons["abs.png"]
    assert "control or invisible" in reasons["nl.png"]
    root = tmp_path / "app" / "checkpoints"
    with JobManager(root, gpus=0) as m:
        run_id = m.submit(z, tiny(epochs=1))
        assert m.wait(run_id, 120) == "completed"
        copy = root / run_id / jobs.DATA_DIR
        written = [p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()]
    assert not list(tmp_path.rglob("escape*")) and not Path("/abs/path").exists()
    assert all(p == "labels.csv" or p.split("/")[0] in ("cat", "dog") or p.startswith(("c", "d")) for p in written)
    assert not [p for p in written if p.endswith(".sh")], written  # the script suffix was not kept
    assert [p for p in written if p.startswith("cat/") and p.endswith(".ppm")], written  # stored as a PGM is


def test_a_class_folder_named_like_the_manifest_is_skipped_with_a_reason(tmp_path):
    members = {f"{c}/{i}.png": image_bytes(seed=i + 10 * k) for k, c in enumerate(("labels.csv", "cat", "dog"))
               for i in range(3)}
    with data.load_dataset(write_zip(tmp_path / "z.zip", members)) as ds:
        assert ds.classes == ["cat", "dog"]
        reason = next(s.reason for s in ds.report.skipped if s.name.startswith("labels.csv/"))
        assert "reserved for the dataset's manifest" in reason and "rename the folder" in reason
        data.export_dataset(ds, tmp_path / "copy")  # the manifest is written, not clobbered
    assert (tmp_path / "copy" / "labels.csv").is_file()


def test_run_ids_and_paths_are_proven_inside_the_checkpoints_folder(tmp_path):
    from vit.safety import safe_join
    root = tmp_path / "checkpoints"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / runs.STATUS).write_text("{}")
    (root / "20260101-000000-link-0000").symlink_to(tmp_path / "elsewhere")
    for bad in ("../elsewhere", "20260101-000000-link-0000", "/etc", "a/../../x"):
        with pytest.raises(ValueError):
            runs.run_path(root, bad)
    for parts in (("..", "x"), ("/etc",), ("a", "..", "..")):
        with pytest.raises(ValueError, match="points outside"):
            safe_join(root, *parts)


# 2 ------------------------------------------------------------- one visitor's runs are theirs alone


def test_another_visitor_can_neither_see_nor_act_on_a_run(shared, tmp_path):
    client, run_id = Client(shared.url, verbose=False), shared.run_id
    table, _ = client.predict(None, BOB, api_name="/list_runs")
    assert run_id not in json.dumps(table)
    assert "There is no run" in client.predict(run_id, BOB, api_name="/show_run")[0]
    per_class, confusion, mistakes, _ = client.predict(run_id, BOB, api_name="/run_results")
    assert not per_class["data"] and confusion is None and not mistakes["value"]
    image = handle_file(_png(tmp_path))
    assert_refused(client.predict(run_id, image, "chefer", 0.5, None, -1, 0, BOB, api_name="/classify"),
                   "no run .* in this session")
    for args, endpoint in [((run_id, "x", BOB), "/preview_card"), ((run_id, BOB), "/download_run"),
                           ((run_id, BOB), "/export_onnx"), ((run_id, "x", False, "hf_write_bob", BOB), "/push"),
                           ((run_id, BOB), "/delete_run"), ((run_id, BOB), "/resume_run"),
                           ((run_id, BOB), "/cancel_run")]:
        with pytest.raises(Exception, match="no run .* in this session"):
            client.predict(*args, api_name=endpoint)
    assert runs.read_status(shared.manager.root / run_id)["state"] == "completed"  # untouched


def test_the_owner_token_is_stored_hashed_and_never_downloadable(shared):
    client = Client(shared.url, verbose=False)
    table, _ = client.predict(None, ALICE, api_name="/list_runs")
    assert shared.run_id in json.dumps(table)
    zipped = client.predict(shared.run_id, ALICE, api_name="/download_run")
    with zipfile.ZipFile(zipped) as zf:
        names = {Path(n).name for n in zf.namelist()}
        blob = b"".join(zf.read(n) for n in zf.namelist())
    assert {"model.safetensors", "config.json", "metrics.json"} <= names and "job.json" not in names
    assert ALICE.encode() not in blob and b"sha256:" not in blob
    assert str(shared.store).encode() not in blob and b"/tmp/" not in blob  # no local paths either
    assert ALICE not in (shared.manager.root / shared.run_id / jobs.JOB).read_text()
    run_dir = shared.manager.root / shared.run_id  # the card names the dataset as its owner knows it, not "data"
    assert runs.read_json(run_dir / runs.DATA_REPORT)["source"] == "shapes"
    card = hub.model_card(run_dir, "alice/x").content
    assert "name: shapes" in card and "name: data\n" not in card


def test_the_quota_holds_under_concurrent_starts_and_resumes(tmp_path, shapes):
    with JobManager(tmp_path / "checkpoints", single_user=False, gpus=0, max_active_per_owner=2) as m:
        stopped = m.submit(shapes, tiny(epochs=400), owner=ALICE)
        m.cancel(stopped, owner=ALICE, grace_s=0)
        assert m.wait(stopped, 60) == "cancelled"
        results, barrier = [], threading.Barrier(5)

        def attempt(action):
            barrier.wait()
            try:
                results.append(action())
            except JobError as e:
                results.append(e)

        actions = [lambda: m.submit(shapes, tiny(epochs=400), owner=ALICE) for _ in range(4)]
        actions.append(lambda: m.resume(stopped, owner=ALICE))
        threads = [threading.Thread(target=attempt, args=(a,)) for a in actions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        accepted = [r for r in results if not isinstance(r, JobError)]
        active = [r for r in m.list(ALICE) if r["state"] in runs.ACTIVE_STATES]
        assert len(accepted) == 2 and len(active) == 2, results
        assert all("limit on this shared app is 2" in str(r) for r in results if isinstance(r, JobError))
        for r in active:
            m.cancel(r["id"], owner=ALICE, grace_s=0)


# 3 ------------------------------------------------------------- one request, bounded cost

PEAK = """
import resource, sys
from vit import data, predict
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "classify":
    print(predict.read_image(sys.argv[2]).size)
else:
    with data.load_dataset(sys.argv[2]) as ds:
        print(ds.report.total)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def _big_png(path: Path, side: int, seed: int) -> Path:
    import numpy as np
    arr = np.zeros((side, side), np.uint16)
    arr[seed::7, ::5] = 40000  # compresses to about 140 KB
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.slow
def test_a_small_file_of_huge_16bit_images_costs_bounded_memory(tmp_path):
    """A 140 KB 16-bit 8000x8000 PNG took 4 GB in /classify; four in a zip took /check_dataset to 3.6 GB."""
    big = _big_png(tmp_path / "big.png", 8000, 0)
    members = {f"{c}/{i}.png": _big_png(tmp_path / f"{c}{i}.png", 8000, i + 2 * k).read_bytes()
               for k, c in enumerate("ab") for i in range(2)}
    bombs = write_zip(tmp_path / "bombs.zip", members)
    assert bombs.stat().st_size < 1_000_000
    env = dict(os.environ)
    for what, path, limit_mb in (("classify", big, 600), ("dataset", bombs, 800)):
        out = subprocess.run([sys.executable, "-c", PEAK, what, str(path)], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        first, grown_mb = out.stdout.split("\n")[:2]
        assert int(grown_mb) < limit_mb, f"{what}: the process grew by {grown_mb} MB"
        assert first == ("(2000, 2000)" if what == "classify" else "4")  # decoded reduced, all four usable


def test_classify_refuses_an_oversized_image_from_its_header(shared, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (12_000, 12_000)).save(huge)  # 144 Mpx in a few KB; Gradio must not decode it either
    client = Client(shared.url, verbose=False)
    assert_refused(client.predict(shared.run_id, handle_file(str(huge)), "chefer", 0.5, None, -1, 0, ALICE,
                                  api_name="/classify"), r"too many pixels \(12000x12000")
    label, *_ = client.predict(shared.run_id, handle_file(_png(tmp_path)), "chefer", 0.5, None, -1, 0, ALICE,
                               api_name="/classify")
    assert label["label"] in ("circle", "square", "triangle")


@pytest.mark.slow
def test_the_web_process_refuses_a_model_over_the_size_cap(tmp_path):
    """A config.json can ask for any architecture; its size is read before anything is allocated."""
    fake = FakeHub()
    try:
        config = {"architecture": "vit_tiny_patch16_224", "num_classes": 2, "label_names": ["a", "b"],
                  "model_args": {"embed_dim": 2048, "depth": 16, "num_heads": 16},
                  "pretrained_cfg": {"input_size": [3, 224, 224]}}
        from safetensors.torch import save
        import torch
        fake.repos["mallory/huge"] = {"private": False, "commits": ["0" * 40], "files": {
            "config.json": json.dumps(config).encode(), "model.safetensors": save({"x": torch.zeros(1)})}}
        # the peak is the process's own (VmHWM: reset at exec), not ru_maxrss, which Linux carries over from the
        # forking parent: a pytest process grown past 1.5 GB by earlier tests would fail this test
        code = ("from vit import predict\ntry:\n    predict.load_model('hf-hub:mallory/huge', max_params_m=100)\n"
                "except predict.PredictError as e:\n    print(e)\n"
                "print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))"
                " // 1024)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        fake.close()
    message, peak_mb = out.stdout.strip().splitlines()
    assert "808M parameters, over this app's limit of 100M" in message and "VIT_MAX_MODEL_PARAMS_M" in message
    assert int(peak_mb) < 1500  # the 3 GB model was never built


# 4 ------------------------------------------------------------- storage outside Gradio's allowed paths


def test_results_show_when_runs_live_outside_the_working_and_temp_dirs(shared):
    assert not shared.store.is_relative_to(Path.cwd()) and not shared.store.is_relative_to(tempfile.gettempdir())
    per_class, confusion, mistakes, _ = Client(shared.url, verbose=False).predict(shared.run_id, ALICE,
                                                                                  api_name="/run_results")
    assert {row[0] for row in per_class["data"]} == {"circle", "square", "triangle"}
    assert confusion is not None and Image.open(confusion["path"] if isinstance(confusion, dict) else confusion)
    metrics = runs.read_json(shared.manager.root / shared.run_id / runs.METRICS)
    n = len(metrics["misclassified"])
    assert len(mistakes["value"]) == min(24, n)
    assert mistakes["label"].endswith(f"(all {n})" if n <= 24 else f"(the 24 most confident of {n})")  # how many


# 5 ------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if ok.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill ({ok.stderr.decode().strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_fails_the_run_with_its_cause_and_the_app_carries_on(small_disk, shapes):
    m = JobManager(small_disk / "checkpoints", gpus=0)
    try:
        earlier = m.submit(shapes, tiny(epochs=1))
        assert m.wait(earlier, 120) == "completed"
        weights = (small_disk / "checkpoints" / earlier / runs.WEIGHTS).read_bytes()
        victim = m.submit(shapes, tiny(epochs=400))
        deadline = time.monotonic() + 60
        while len(m.progress(victim)["history"]) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        filler = small_disk / "filler"
        _fill(filler)
        state = m.wait(victim, 60)
        summary = m.progress(victim)
        assert state == "failed" and "disk is full" in summary["message"], summary["message"]
        _fill(filler)  # (what the failed run's partial files held was freed)
        with pytest.raises(JobError, match="disk is full"):  # the app answers, and says why it cannot start
            m.submit(shapes, tiny(epochs=1))
        assert [r["id"] for r in m.list()][-1] == earlier
        filler.unlink()
        deadline = time.monotonic() + 10
        while runs.read_status(small_disk / "checkpoints" / victim).get("state") != "failed":
            assert time.monotonic() < deadline, "the final state was never written once there was space"
            time.sleep(0.1)
        assert "disk is full" in runs.read_status(small_disk / "checkpoints" / victim)["message"]
        assert (small_disk / "checkpoints" / earlier / runs.WEIGHTS).read_bytes() == weights
        assert runs.read_status(small_disk / "checkpoints" / earlier)["state"] == "completed"
        again = m.submit(shapes, tiny(epochs=1))  # and it trains again once there is room
        assert m.wait(again, 120) == "completed"
    finally:
        m.shutdown(grace_s=2)


def _fill(path: Path) -> None:
    """Append to `path` until the file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for block in (1 << 20, 4096, 1):
        try:
            while True:
                os.write(fd, b"\0" * block)
        except OSError:
            pass
    os.close(fd)


@pytest.mark.slow
def test_a_failed_status_write_never_wedges_the_scheduler(tmp_path, shapes, monkeypatch, capsys):
    with JobManager(tmp_path / "checkpoints", gpus=0) as m:
        run_id = m.submit(shapes, tiny(epochs=400))
        deadline = time.monotonic() + 60
        while m.child_pid(run_id) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        real = runs.update_status

        def full(run_dir, state=None, **fields):
            if state in ("failed", "interrupted"):
                raise OSError(28, "No space left on device")
            return real(run_dir, state, **fields)

        monkeypatch.setattr(runs, "update_status", full)
        os.kill(m.child_pid(run_id), 9)
        deadline = time.monotonic() + 30
        while m.list()[0]["state"] != "interrupted":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "killed by SIGKILL" in m.list()[0]["message"]  # shown though not yet written

        def nothing_fits(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(runs, "update_status", nothing_fits)
        with pytest.raises(JobError, match="disk is full"):  # it sees the pending state, and says why not
            m.resume(run_id)
        monkeypatch.setattr(runs, "update_status", full)
        other = m.submit(shapes, tiny(epochs=1))  # the slot was freed
        monkeypatch.setattr(runs, "update_status", real)
        assert m.wait(other, 120) == "completed"
        assert runs.read_status(m.root / run_id)["state"] == "interrupted"
    assert capsys.readouterr().err.count("cannot record the end of run") == 1  # said once, not every tick


# 6 ------------------------------------------------------------- temporary files and upload size


def test_served_files_and_rejected_uploads_are_removed(shared, tmp_path):
    client = Client(shared.url, verbose=False)
    first = Path(client.predict(shared.run_id, ALICE, api_name="/download_run"))
    ours = sorted(ui.DOWNLOADS.iterdir(), key=lambda p: p.stat().st_mtime)
    client.predict(shared.run_id, ALICE, api_name="/download_run")
    assert first.is_file()  # (Gradio's copy, served)
    assert not ours[-1].exists()  # the older folder was swept when the next download came
    rejected = tmp_path / "upload.zip"
    write_zip(rejected, {"only/1.png": image_bytes(seed=1), "only/2.png": image_bytes(seed=2)})
    ui.check_dataset(str(rejected))  # cannot be trained on (one class)
    assert not rejected.exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(gr.Error):
        ui.check_dataset(str(broken))
    assert not broken.exists()
    assert shared.app.delete_cache == (60, 0)  # Gradio's own cache is swept too


def test_an_upload_over_the_cap_is_refused_naming_the_cap(shared, tmp_path):
    big = tmp_path / "big.zip"
    big.write_bytes(os.urandom(1_200_000))
    with pytest.raises(Exception, match="exceeds the maximum file size of 1048576 bytes"):  # the client's check
        Client(shared.url, verbose=False).predict(handle_file(str(big)), api_name="/check_dataset")
    import httpx  # and the server's, for a client that does not check
    answer = httpx.post(f"{shared.url.rstrip('/')}/gradio_api/upload", files={"files": ("big.zip", big.read_bytes())})
    assert answer.status_code == 413 and "maximum allowed size of 1048576 bytes" in answer.text, answer.text


# 7 ------------------------------------------------------------- models are names, not folders


def test_local_folders_cannot_be_named_as_models(shared, tmp_path):
    client = Client(shared.url, verbose=False)
    alice_run = str(shared.manager.root / shared.run_id)
    for source in (f"local-dir:{alice_run}", alice_run, "../checkpoints", "hf-hub:../../etc"):
        assert_refused(client.predict(source, handle_file(_png(tmp_path)), "chefer", 0.5, None, -1, 0, BOB,
                                      api_name="/classify"), "not one of your runs|not a Hub model id")
    dataset = {"path": str(tmp_path), "name": "x"}
    for name in (f"local-dir:{alice_run}", "local-dir:/etc", "/etc/passwd"):
        with pytest.raises(gr.Error, match="local folders can be used from the command line only"):
            ui.start_training(shared.manager, dataset, name, True, 1, 8, 1e-3, BOB)


# 8 ------------------------------------------------------------- bad values get clear messages


@pytest.mark.parametrize("settings, message", [
    (dict(epochs=float("nan")), r"Epochs \(epochs\) must be a number from 1 to 1000 \(got nan\)"),
    (dict(epochs=0), r"Epochs \(epochs\) must be from 1 to 1000"),
    (dict(epochs=2.5), "must be a whole number"),
    (dict(batch_size=0), r"Batch size \(batch_size\) must be from 1 to 1024"),
    (dict(lr=float("nan")), r"Learning rate \(lr\) must be a number"),
    (dict(lr=-1), r"Learning rate \(lr\) must be from"),
    (dict(img_size=1), r"Image size \(img_size\) must be from 16 to 1024 \(got 1\)"),
    (dict(seed=1e30), r"Seed \(seed\) must be from 0 to"),
    (dict(val_fraction=0.95), r"Validation fraction \(val_fraction\) must be from 0 to 0.9"),
])
def test_out_of_range_settings_are_refused_up_front(shared, tmp_path, shapes, settings, message):
    base = dict(epochs=1, batch_size=8, lr=1e-3)
    base.update(settings)
    advanced = {k: v for k, v in base.items() if k in ui.FORM and k not in ("epochs", "batch_size", "lr")}
    before = len(os.listdir(shared.manager.root))
    with pytest.raises(gr.Error, match=message):
        ui.start_training(shared.manager, {"path": str(shapes), "name": "shapes"}, ui.DEFAULT_MODEL, True,
                          base["epochs"], base["batch_size"], base["lr"], ALICE, **advanced)
    assert len(os.listdir(shared.manager.root)) == before  # no run directory was made


@pytest.mark.parametrize("token, message", [("hf_write_alice\nhf_write_bob", "line break"),
                                            ("hf_write_al\u200bice", "invisible"),
                                            ("hf_write_\u00e4lice", "non-ASCII")])
def test_a_mangled_token_is_refused_without_being_echoed(shared, token, message):
    run_dir = shared.manager.root / shared.run_id
    with pytest.raises(hub.HubError, match=message) as info:
        hub.push_run(run_dir, "alice/x", token, endpoint="http://127.0.0.1:9")  # refused before any request
    assert token.strip() not in str(info.value) and "alice" not in str(info.value)


def test_a_pushed_config_carries_no_local_paths(shared, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    run_dir = shared.manager.root / shared.run_id
    config = runs.read_config(run_dir)
    runs.write_json(run_dir / runs.CONFIG, {**config, runs.CONFIG_KEY: {**config[runs.CONFIG_KEY],
                                                                         "data": "/tmp/gradio/abc/pets.zip"}})
    fake = FakeHub()
    try:
        hub.push_run(run_dir, "alice/clean", "hf_write_alice", endpoint=fake.url)
        pushed = fake.repos["alice/clean"]["files"]
    finally:
        fake.close()
        runs.write_json(run_dir / runs.CONFIG, config)
    blob = b"".join(pushed.values())
    assert b"/tmp/" not in blob and str(shared.store).encode() not in blob
    assert json.loads(pushed["config.json"])[runs.CONFIG_KEY]["data"] == "pets.zip"
    assert "/" not in config[runs.CONFIG_KEY]["data"]  # what training wrote was clean already


# 9 ------------------------------------------------------------- concurrent classifications


def test_concurrent_classifications_are_served_together_and_agree(shared, tmp_path, monkeypatch):
    """Four at once, with room for two (VIT_CLASSIFY_CONCURRENCY=2): two maps are computed at the same time, never
    more, and each result is the one the image gets alone."""
    from vit import explain
    from vit.ui.loading import _explained
    paths = [_png(tmp_path, f"p{i}.png", seed=40 + i) for i in range(4)]
    client = Client(shared.url, verbose=False)
    alone = [client.predict(shared.run_id, handle_file(p), "chefer", 0.5, None, -1, 0, ALICE,
                            api_name="/classify")[0] for p in paths]
    in_flight, most, lock, real = [0], [0], threading.Lock(), explain.explain

    def timed(*args, **kwargs):  # each map takes long enough for the requests to meet, if they may
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.5)
            return real(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(explain, "explain", timed)
    _explained.items.clear()  # computed again, not served from the maps already made
    jobs_ = [client.submit(shared.run_id, handle_file(p), "chefer", 0.5, None, -1, 0, ALICE, api_name="/classify")
             for p in paths]
    together = [j.result(timeout=60)[0] for j in jobs_]
    assert most[0] == 2, f"at most {most[0]} classification(s) at a time"
    for a, b in zip(alone, together):
        pa = {c["label"]: c["confidence"] for c in a["confidences"]}
        pb = {c["label"]: c["confidence"] for c in b["confidences"]}
        assert a["label"] == b["label"] and max(abs(pa[k] - pb[k]) for k in pa) < 1e-4
    loaded = predict.load_model(shared.manager.root / shared.run_id)
    assert 1 <= len(loaded._replicas) <= 2  # at most the concurrency limit of replicas, weights shared
    assert all(r.blocks[0].attn.qkv.weight is loaded.model.blocks[0].attn.qkv.weight for r in loaded._replicas)


def test_a_replica_made_while_another_request_explains_does_not_report_into_it(shared, tmp_path):
    from vit import explain
    loaded = predict.load_model(shared.manager.root / shared.run_id)
    image = predict.read_image(_png(tmp_path))
    with loaded.borrow() as first, explain._Recorder(first, attention=True, tokens=False) as busy:
        with loaded.borrow() as second:  # made now, while `first` carries the busy request's hooks
            assert second is not first
            e = explain.explain(second, loaded.preprocess(image), "chefer")
        assert busy.attentions == []  # nothing of the second request reached the first
    with loaded.borrow() as model:
        alone = explain.explain(model, loaded.preprocess(image), "chefer")
    assert abs(e.heatmap - alone.heatmap).max() < 1e-5


def test_a_start_without_a_dataset_says_so_in_plain_text(shared):
    with pytest.raises(gr.Error) as info:
        ui.start_training(shared.manager, None, ui.DEFAULT_MODEL, True, 1, 8, 1e-3, ALICE)
    assert info.value.message == "No dataset yet: upload one or use the sample data in the Data tab."  # no **


# 10 ------------------------------------------------------------ second round (issue 24): lanes, logs, CSV, hub sizes


def test_a_single_classify_answers_beside_two_heavy_batches_and_a_visitor_holds_one_batch(
        shared, tmp_path, monkeypatch):
    """Batches have a lane of their own: two visitors' batches of slow images (each held 1.5 s here, as a 64 Mpx
    WebP holds a core) leave the single-image slots free; a visitor's second batch is refused at once, not queued."""
    _slowed(monkeypatch, predict, "read_image", "heavy", 1.5)
    bobs = shared.manager.root / f"{shared.run_id}-bob"  # a copy of Alice's run, as Bob's own
    if not bobs.exists():
        shutil.copytree(shared.manager.root / shared.run_id, bobs)
        runs.write_json(bobs / jobs.JOB, {**runs.read_json(bobs / jobs.JOB), "owner": owner_hash(BOB)})
    try:
        _batches_beside_one_image(shared, tmp_path, bobs.name)
    finally:
        shared.manager.delete(bobs.name, owner=BOB)


def _batches_beside_one_image(shared, tmp_path, bobs: str) -> None:
    heavy = [handle_file(_png(tmp_path, f"heavy{i}.png", seed=i)) for i in range(4)]
    client, other = Client(shared.url, verbose=False), Client(shared.url, verbose=False)
    for run_id, who in ((shared.run_id, ALICE), (bobs, BOB)):  # both models loaded: what is timed is the waiting
        other.predict(run_id, handle_file(_png(tmp_path)), "chefer", 0.5, None, -1, 0, who, api_name="/classify")
    batch = client.submit(shared.run_id, heavy, ALICE, 0.95, api_name="/classify_batch")
    bob = Client(shared.url, verbose=False).submit(bobs, heavy, BOB, 0.95, api_name="/classify_batch")
    time.sleep(1.0)  # the two batches hold their lane
    start = time.monotonic()
    label, *_ = other.predict(shared.run_id, handle_file(_png(tmp_path)), "chefer", 0.5, None, -1, 0, ALICE,
                              api_name="/classify")
    took = time.monotonic() - start
    assert label["label"] in ("circle", "square", "triangle") and took < 3.0, f"a single classify took {took:.1f} s"
    for job in (batch, bob):
        gallery, message, _ = job.result(timeout=60)
        assert message == "" and len(gallery) == 4
    batch = client.submit(shared.run_id, heavy, ALICE, 0.95, api_name="/classify_batch")
    time.sleep(1.0)  # Alice's batch holds one place of the lane; her second is refused, not given the other
    _, message, _ = other.predict(shared.run_id, heavy[:1], ALICE, 0.95, api_name="/classify_batch")
    assert "Your last batch is still being classified" in message
    assert batch.result(timeout=60)[1] == ""


def test_one_pages_slow_dataset_check_does_not_hold_anothers(shared, tmp_path, monkeypatch):
    _slowed(monkeypatch, data, "load_dataset", "slow", 4)
    zips = [write_zip(tmp_path / name, {f"{c}/{i}.png": image_bytes(seed=i + 10 * (c == "b")) for c in "ab"
                                        for i in range(3)})
            for name in ("slow.zip", "quick.zip")]
    first = Client(shared.url, verbose=False).submit(handle_file(str(zips[0])), api_name="/check_dataset")
    time.sleep(0.5)
    start = time.monotonic()
    report, *_ = Client(shared.url, verbose=False).predict(handle_file(str(zips[1])), api_name="/check_dataset")
    assert time.monotonic() - start < 3.0 and "6 images" in report
    assert "6 images" in first.result(timeout=60)[0]


def _slowed(monkeypatch, module, name: str, word: str, seconds: float) -> None:
    """module.name takes `seconds` longer for an argument whose text holds `word` (a heavy image, a slow upload)."""
    real = getattr(module, name)

    def slow(first, *args, **kwargs):
        if word in str(first):
            time.sleep(seconds)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(module, name, slow)


def test_a_malformed_request_leaves_no_token_in_the_log_or_the_answer(shared, capfd):
    import httpx
    secret = "hf_write_alice_SECRETSECRET"
    r = httpx.post(f"{shared.url}gradio_api/call/push", json={"data": [shared.run_id, "alice/x", True, secret]})
    answer = httpx.get(f"{shared.url}gradio_api/call/push/{r.json()['event_id']}", timeout=30).text
    assert "event: error" in answer
    logged = capfd.readouterr()
    assert secret not in answer and secret not in logged.out + logged.err
    assert ALICE not in logged.out + logged.err


def test_a_batch_csv_does_not_hand_a_spreadsheet_a_formula(shared, tmp_path):
    evil = _png(tmp_path, "=1+2.png")
    _, _, table = Client(shared.url, verbose=False).predict(shared.run_id, [handle_file(evil)], ALICE, 0.95,
                                                             api_name="/classify_batch")
    rows = list(ui.csv_rows(Path(table)))
    assert rows[0]["file"] == "'=1+2.png"


@pytest.mark.slow
def test_an_hf_hub_model_over_the_cap_is_refused_from_its_header_before_any_download(tmp_path):
    """The safetensors header (a range request) says 400M parameters: nothing else of the 1.6 GB file is fetched."""
    fake = FakeHub()
    try:
        header = json.dumps({"w": {"dtype": "F32", "shape": [400_000_000], "data_offsets": [0, 1_600_000_000]}})
        weights = len(header).to_bytes(8, "little") + header.encode() + b"\0" * 1024  # the header, then a stub
        fake.repos["mallory/giant"] = {"private": False, "commits": ["0" * 40], "files": {
            "config.json": json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 2}).encode(),
            "model.safetensors": weights}}
        code = ("from vit import predict\ntry:\n    predict.load_model('hf-hub:mallory/giant', max_params_m=100)\n"
                "except predict.PredictError as e:\n    print(e)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        ranges = list(fake.ranges)
    finally:
        fake.close()
    assert "400M parameters, over this app's limit of 100M" in out.stdout, out.stderr[-2000:]
    assert ranges and all(r is not None for r in ranges), "every read of the weights was a range of them"
    assert not list((tmp_path / "hf").rglob("model.safetensors")), "nothing was downloaded"
