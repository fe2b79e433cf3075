"""Hosting for strangers, second round (issue 24): what a hostile or unlucky visitor of a shared app did that the
first round let through, each shown refused or contained by the function behind it. The app-level probes (lanes,
a malformed request's log, the batch CSV) are in test_hosting.py; the restart in a real browser is in
e2e/test_shared_app.py."""
import io
import json
import math
import os
import stat
import struct
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from helpers import tiny
from vit import data, runs, sessions
from vit.data import sources
from vit.jobs import JobError, JobManager
from vit.jobs.worker import JOB
from vit.safety import HostLimits, owner_hash, session_secret
from vit.samples import make_shapes_dataset

ALICE, BOB = "alice-visitor-token-0001", "bob-visitor-token-00002"


# 1 ------------------------------------------------------------- a restart keeps every visitor's runs


def test_the_browsers_key_is_made_once_and_kept_beside_the_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_SESSION_SECRET", raising=False)
    first = session_secret(tmp_path)
    assert len(first) >= 32 and session_secret(tmp_path) == first  # a restart reads the same key
    kept = tmp_path / ".session-secret"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert session_secret(tmp_path / "other") != first  # each checkpoints folder its own
    monkeypatch.setenv("VIT_SESSION_SECRET", "given-by-the-host-" + "x" * 20)
    assert session_secret(tmp_path) == "given-by-the-host-" + "x" * 20


def test_two_starts_of_the_app_on_one_folder_read_the_same_browser_state(tmp_path, monkeypatch):
    from vit.ui import build_app
    monkeypatch.delenv("VIT_SESSION_SECRET", raising=False)
    secrets_seen = []
    for _ in range(2):
        manager = JobManager(tmp_path / "checkpoints", single_user=False, gpus=0)
        try:
            app = build_app(manager)
            state = next(b for b in app.blocks.values() if isinstance(b, gr.BrowserState))
            secrets_seen.append(state.secret)
        finally:
            manager.shutdown(grace_s=1)
    assert secrets_seen[0] == secrets_seen[1]


# 2 ------------------------------------------------------------- the model-size cap applies to training


def _sample_state(tmp_path) -> dict:
    from vit.ui.data_tab import _show
    folder = make_shapes_dataset(tmp_path / "shapes", per_class=6, size=32)
    with data.load_dataset(folder) as ds:
        return _show(ds, str(folder), "shapes")[3]


def test_a_model_over_the_cap_is_refused_before_a_run_is_queued(tmp_path, monkeypatch):
    from vit.ui.train_tab import run_plan, start_from_form
    monkeypatch.setenv("VIT_MAX_MODEL_PARAMS_M", "100")
    manager = JobManager(tmp_path / "checkpoints", single_user=False, gpus=0)
    try:
        dataset = _sample_state(tmp_path)
        with pytest.raises(gr.Error, match=r"1,136M parameters, over this app's limit of 100M"):  # (no download)
            start_from_form(manager, False, dataset, ALICE, model="vit_giant_patch14_dinov2.lvd142m", epochs=1,
                            batch_size=8)
        plan = run_plan(None, dataset, model="vit_giant_patch14_dinov2.lvd142m", epochs=1, batch_size=8)
        assert plan.startswith("**Cannot start here:** vit_giant_patch14_dinov2.lvd142m has 1,136M parameters")
        with pytest.raises(gr.Error, match=r"86M parameters, over this app's limit of 50M"):  # a form's width
            monkeypatch.setenv("VIT_MAX_MODEL_PARAMS_M", "50")
            start_from_form(manager, False, dataset, ALICE, model="vit_base_patch16_224", epochs=1, batch_size=8)
        assert manager.list(ALICE) == [] and not [p for p in manager.root.iterdir() if not p.name.startswith(".")]
    finally:
        manager.shutdown(grace_s=1)


# 3 ------------------------------------------------------------- labels.csv and listings are capped as streams


def _manifest_zip(path: Path, rows: int, images: int = 4) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(images):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (i * 40, 10, 10)).save(buf, "PNG")
            zf.writestr(f"img{i}.png", buf.getvalue())
        zf.writestr("labels.csv", "path,label\n" + "".join(f"img{i % images}.png,c{i % 2}\n" for i in range(rows)))
    return path


def test_a_labels_csv_longer_than_the_cap_is_refused_while_it_is_read(tmp_path, monkeypatch):
    limits = data.Limits(max_files=50)
    read = []
    real = sources.csv.reader

    def counting(f):
        for row in real(f):
            read.append(row)
            yield row

    monkeypatch.setattr(sources.csv, "reader", counting)
    with pytest.raises(data.DataError, match=r"labels.csv has more than 50 rows.*max_files"):
        data.load_dataset(_manifest_zip(tmp_path / "m.zip", rows=20_000), limits=limits)
    assert len(read) <= 52  # refused at the cap, not after reading all 20,000 rows
    with data.load_dataset(_manifest_zip(tmp_path / "ok.zip", rows=8), limits=limits) as ds:
        assert ds.report.total == 4  # an honest manifest still reads


def test_a_labels_csv_over_its_size_cap_or_with_a_giant_cell_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MANIFEST_MAX_BYTES", 1000)
    with pytest.raises(data.DataError, match=r"labels.csv is .* over the cap"):
        data.load_dataset(_manifest_zip(tmp_path / "big.zip", rows=200))
    monkeypatch.setattr(sources, "MANIFEST_MAX_BYTES", 32 * 1024 ** 2)
    with zipfile.ZipFile(tmp_path / "cell.zip", "w") as zf:
        zf.writestr("a.png", b"")
        zf.writestr("labels.csv", "path,label\n\"" + "x" * 200_000 + "\",a\n")
    with pytest.raises(data.DataError, match=r"labels.csv is not a CSV file the app can read"):
        data.load_dataset(tmp_path / "cell.zip")


def test_a_zip_declaring_too_many_entries_is_refused_before_its_listing_is_read(tmp_path, monkeypatch):
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        for i in range(60):
            zf.writestr(f"c/{i}.png", b"x")

    def never(*args, **kwargs):
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(sources.zipfile, "ZipFile", never)
    with pytest.raises(data.DataError, match=r"holds 60 files, over the cap of 50"):
        data.load_dataset(tmp_path / "many.zip", limits=data.Limits(max_files=50))


def test_classes_uploaded_one_by_one_are_capped_too(tmp_path):
    files = [str(tmp_path / f"{i}.png") for i in range(30)]
    with pytest.raises(data.DataError, match=r"20 images in all"):
        data.load_dataset({"a": files[:15], "b": files[15:]}, limits=data.Limits(max_files=20))


# 5 ------------------------------------------------------------- global limits of a shared app


def _ended_run(root: Path, owner: str | None, state: str, ended_s_ago: float) -> str:
    run_dir = runs.create_run_dir(root, "vit_tiny")
    runs.write_json(run_dir / JOB, {"owner": owner_hash(owner), "config": {}, "name": run_dir.name})
    runs.update_status(run_dir, state)
    status = runs.read_status(run_dir)
    runs.write_json(run_dir / runs.STATUS, {**status, "finished_at": time.time() - ended_s_ago})
    return run_dir.name


def test_ended_runs_expire_after_the_days_the_host_keeps_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_KEEP_DAYS", "2")
    root = tmp_path / "checkpoints"
    root.mkdir()
    old = [_ended_run(root, ALICE, s, 3 * 86400) for s in ("completed", "cancelled", "failed")]
    recent = _ended_run(root, ALICE, "completed", 3600)
    from_the_cli = _ended_run(root, None, "completed", 30 * 86400)  # no owner: not a visitor's
    sessions.remember(root, ALICE, settings={"epochs": 3})
    sessions.remember(root, BOB, settings={"epochs": 4})
    bobs = next((root / sessions.FOLDER).glob("*.json"))
    for record in (root / sessions.FOLDER).glob("*.json"):
        if record != bobs:
            os.utime(record, (time.time() - 3 * 86400,) * 2)
    manager = JobManager(root, single_user=False, gpus=0)
    try:
        view = next(r for r in manager.list(ALICE) if r["id"] == recent)
        assert abs(view["expires_at"] - (time.time() - 3600 + 2 * 86400)) < 60  # the Train tab says when
        from vit.ui.train_tab import show_run
        assert "removes runs 2 days after they end" in show_run(manager, recent, ALICE)[0]
        removed = manager.expire()
        assert sorted(removed) == sorted(old)
        left = {p.name for p in root.iterdir() if not p.name.startswith(".")}
        assert left == {recent, from_the_cli}
        assert [r["id"] for r in manager.list(ALICE)] == [recent]
        assert list((root / sessions.FOLDER).glob("*.json")) == [bobs]  # old records go too
    finally:
        manager.shutdown(grace_s=1)


def test_a_single_user_app_never_expires_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_KEEP_DAYS", "1")
    root = tmp_path / "checkpoints"
    root.mkdir()
    kept = _ended_run(root, ALICE, "completed", 10 * 86400)
    with JobManager(root, single_user=True, gpus=0) as manager:
        assert manager.expire() == [] and (root / kept).is_dir()
        assert "expires_at" not in manager.list()[0]


def test_all_visitors_together_have_a_cap_on_runs_queued_or_running(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_MAX_ACTIVE_RUNS", "2")
    shapes = make_shapes_dataset(tmp_path / "s", per_class=6, size=32)
    manager = JobManager(tmp_path / "checkpoints", single_user=False, gpus=0, cancel_grace_s=1)
    try:
        visitors = [f"visitor-number-{i}-token-xyz" for i in range(3)]
        first = [manager.submit(shapes, tiny(epochs=500), owner=v) for v in visitors[:2]]
        with pytest.raises(JobError, match=r"This shared app is busy: 2 runs .*\(VIT_MAX_ACTIVE_RUNS=2\)"):
            manager.submit(shapes, tiny(epochs=1), owner=visitors[2])  # a fresh token does not help
        manager.cancel(first[1], owner=visitors[1])  # (queued: cancelled at once)
        third = manager.submit(shapes, tiny(epochs=1), owner=visitors[2])
        manager.cancel(third, owner=visitors[2])
        manager.cancel(first[0], owner=visitors[0])
    finally:
        manager.shutdown(grace_s=1)


@pytest.mark.slow
def test_a_run_past_the_time_limit_is_stopped_and_can_be_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_MAX_RUN_MINUTES", "0.05")  # 3 s
    shapes = make_shapes_dataset(tmp_path / "s", per_class=6, size=32)
    manager = JobManager(tmp_path / "checkpoints", single_user=False, gpus=0, cancel_grace_s=20)
    try:
        run_id = manager.submit(shapes, tiny(epochs=1000), owner=ALICE)
        assert manager.wait(run_id, 90) == "cancelled"
        p = manager.progress(run_id, ALICE)
        assert p["message"].startswith("Stopped after 0.05 minutes of training: the time limit of one run")
        assert "VIT_MAX_RUN_MINUTES" in p["message"] and p["can_resume"]
    finally:
        manager.shutdown(grace_s=1)


def test_the_listing_reads_only_the_visitors_own_runs_and_follows_the_folders(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    root.mkdir()
    bobs = [_ended_run(root, BOB, "completed", 60) for _ in range(30)]
    alices = _ended_run(root, ALICE, "completed", 60)
    manager = JobManager(root, single_user=False, gpus=0)
    try:
        read = []
        real = runs.read_status
        monkeypatch.setattr(runs, "read_status", lambda d: read.append(Path(d).name) or real(d))
        assert [r["id"] for r in manager.list(ALICE)] == [alices]
        assert set(read) <= {alices}  # the other visitor's 30 runs were never opened
        read.clear()
        manager.list(ALICE)
        assert read == []  # nothing changed: nothing read again
        runs.update_status(root / alices, message="renamed")
        assert manager.list(ALICE)[0]["message"] == "renamed"  # a changed file is read again
        manager.delete(alices, owner=ALICE)
        assert manager.list(ALICE) == []
        again = _ended_run(root, ALICE, "failed", 1)
        assert [r["id"] for r in manager.list(ALICE)] == [again]  # a new folder is seen
        assert len(manager.list(BOB)) == len(bobs)
    finally:
        manager.shutdown(grace_s=1)


# 6 ------------------------------------------------------------- the session store


def test_the_session_store_keeps_known_typed_small_values_of_valid_tokens_only(tmp_path):
    folder = tmp_path / sessions.FOLDER
    sessions.remember(tmp_path, "short", settings={"epochs": 3})
    sessions.remember(tmp_path, 123, settings={"epochs": 3})
    sessions.remember(tmp_path, "../../etc/passwd-token-xx", settings={"epochs": 3})
    assert not folder.exists() or not list(folder.iterdir())  # no record for a token the app never makes
    sessions.remember(tmp_path, ALICE, settings={"epochs": 3, "lr": "x" * 10_000_000}, other={"a": 1},
                      models={"classify": ["not", "text"], "share": "run-1"})
    assert sessions.recall(tmp_path, ALICE) == {"settings": {"epochs": 3}, "models": {"share": "run-1"}}
    sessions.remember(tmp_path, ALICE, settings={f"k{i}": "y" * 150 for i in range(200)})  # 30 KB of settings
    assert sessions.recall(tmp_path, ALICE)["settings"] == {"epochs": 3}  # refused whole, the old ones kept
    sessions.remember(tmp_path, ALICE, dataset="a string")
    assert "dataset" not in sessions.recall(tmp_path, ALICE)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2048
    record = next(folder.iterdir())
    record.write_text(json.dumps({"settings": "x" * 100_000, "models": {"share": "ok"}}))  # an old, bad record
    assert sessions.recall(tmp_path, ALICE) == {"models": {"share": "ok"}}
    os.utime(record, (time.time() - 100,) * 2)
    assert sessions.sweep(tmp_path, 50) == 1 and not record.exists()


# 7 ------------------------------------------------------------- no server path in a message


def test_errors_name_the_run_not_its_folder(tmp_path):
    from vit import predict
    run_dir = runs.create_run_dir(tmp_path / "deep" / "checkpoints", "vit_tiny")
    runs.write_json(run_dir / runs.CONFIG, {"architecture": "vit_tiny_patch16_224"})
    runs.update_status(run_dir, "failed")
    with pytest.raises(predict.PredictError) as e:
        predict.load_model(run_dir)
    assert run_dir.name in str(e.value) and str(tmp_path) not in str(e.value)
    for bad in ("no-such-run-id", "../x"):
        with pytest.raises(ValueError) as e:
            runs.run_path(tmp_path / "deep" / "checkpoints", bad)
        assert str(tmp_path) not in str(e.value)


# 8 ------------------------------------------------------------- bad values get the app's words


def _png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:33] + chunk + png[33:]  # after the header chunk


@pytest.mark.parametrize("kind,payload", [(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (200 << 20), 9)),
                                          (b"zTXt", b"note\x00\x00" + zlib.compress(b"a" * (200 << 20), 9))])
def test_an_image_whose_metadata_would_decompress_past_a_cap_is_skipped_with_a_reason(tmp_path, kind, payload):
    folder = make_shapes_dataset(tmp_path / "d", per_class=4, size=32)
    (folder / "circle" / "bomb.png").write_bytes(_png_with_chunk(kind, payload))
    with data.load_dataset(folder) as ds:
        skipped = {s.name: s.reason for s in ds.report.skipped}
    assert "metadata (a text or colour-profile chunk) that would decompress past" in skipped["circle/bomb.png"]
    assert ds.report.total == 12


def _page(manager):
    from vit.ui.page import Page
    return SimpleNamespace(bind=lambda fn, *first: Page.bind(SimpleNamespace(manager=lambda: manager), fn, *first))


@pytest.mark.parametrize("call,words", [
    (lambda h: h["classify"]("run", "x.png", "chefer", 0.5, None, -1, 0, 123), "The owner must be text (got int)"),
    (lambda h: h["classify"](["a"], "x.png", "chefer", 0.5, None, -1, 0, ALICE), "The source must be text (got list)"),
    (lambda h: h["classify"]("run", "x.png", "chefer", 0.5, None, math.nan, 0, ALICE), "The layer must be a number"),
    (lambda h: h["classify"]("run", "x.png", "chefer", 0.5, None, -1, math.inf, ALICE), "The head must be a number"),
    (lambda h: h["start"](None, ALICE, model=["a"], scratch=False, epochs=1, batch_size=8),
     "The model must be text (got list)"),
    (lambda h: h["start"](None, ALICE, model="vit_tiny_patch16_224", scratch="yes", epochs=1,
                                  batch_size=8), "The scratch must be true or false"),
    (lambda h: h["action"]({"id": 1}, [ALICE]), "The run id must be text (got dict)"),
])
def test_values_of_the_wrong_type_are_refused_in_words(tmp_path, call, words):
    from vit.ui.classify_tab import classify_view
    from vit.ui.train_tab import run_action, start_from_form
    manager = JobManager(tmp_path / "checkpoints", single_user=False, gpus=0)
    try:
        page = _page(manager)
        handlers = {"classify": page.bind(classify_view), "start": page.bind(start_from_form, False),
                    "action": page.bind(run_action, "delete")}
        with pytest.raises(gr.Error) as e:
            call(handlers)
        assert words in e.value.message
    finally:
        manager.shutdown(grace_s=1)


def test_no_validation_images_is_said_as_such(tmp_path):
    from vit.train.events import Emitter
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Emitter(run_dir, None, True).epoch({"epoch": 1, "val_acc": 0.0, "val_loss": math.nan, "eta_s": 0}, 3,
                           {"val_acc": 0.0, "epoch": 1})
    status = runs.read_status(run_dir)
    assert status["message"] == "Epoch 1/3: no validation images to measure on (validation fraction 0)"
    assert status["best_val_acc"] is None


def test_a_full_disk_said_by_safetensors_is_a_full_disk():
    from safetensors import SafetensorError
    error = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                            'left on device" })')
    assert runs.disk_full(error) and not runs.disk_full(SafetensorError("header too large"))


# 9 ------------------------------------------------------------- temporary files


def test_served_downloads_are_swept_on_age_without_another_download(tmp_path, monkeypatch):
    from vit.ui import files as common
    monkeypatch.setattr(common, "DOWNLOADS", tmp_path / "downloads")
    old, fresh = common._download_folder(), common._download_folder()
    (old / "x.zip").write_bytes(b"z")
    os.utime(old, (time.time() - 7200,) * 2)
    assert common.sweep_temp(3600) == 1 and not old.exists() and fresh.exists()


def test_sample_data_keeps_a_few_sizes_and_makes_a_removed_one_again(tmp_path, monkeypatch):
    from vit.ui import data_tab
    monkeypatch.setattr(data_tab.tempfile, "gettempdir", lambda: str(tmp_path))
    states = [data_tab.sample_dataset(n)[3] for n in (2, 3, 4, 5, 6)]
    made = sorted(p.name for p in (tmp_path / "vit-studio-samples").glob("shapes-*"))
    assert len(made) <= data_tab.SAMPLES_KEPT and "shapes-6" in made and "shapes-2" not in made
    assert states[0]["sample"] == 2 and data_tab.sample_folder(2) == Path(states[0]["path"])
    assert (Path(states[0]["path"]) / "circle").is_dir()  # asked for again: made again, the same images


def test_refused_classes_built_here_remove_their_uploads_at_once(tmp_path):
    from vit.ui.data_tab import CLASS_SLOTS, check_classes
    from vit.ui.common import MAX_CLASSES
    uploads = []
    for i in range(3):
        p = tmp_path / f"u{i}.png"
        Image.new("RGB", (32, 32)).save(p)
        uploads.append(str(p))
    names = ["cats", "", *[""] * (MAX_CLASSES - 2)]
    files = [uploads[:2], uploads[2:], *[None] * (MAX_CLASSES - 2)]
    with pytest.raises(gr.Error, match="has images but no name"):
        check_classes(**dict(zip(CLASS_SLOTS, [*names, *files])))
    assert not any(Path(p).exists() for p in uploads)


# 10 ------------------------------------------------------------ odds and ends


def test_cells_a_spreadsheet_would_run_are_escaped():
    from vit.ui.files import spreadsheet_safe
    assert [spreadsheet_safe(c) for c in ("=1+2.png", "+x", "-y", "@z", "\tq", "cat.png", 0.5, -0.25)] == \
        ["'=1+2.png", "'+x", "'-y", "'@z", "'\tq", "cat.png", 0.5, -0.25]


def test_the_host_limits_refuse_nonsense_numbers(monkeypatch):
    for bad in ("nan", "inf", "-1"):
        monkeypatch.setenv("VIT_MAX_RUN_MINUTES", bad)
        with pytest.raises(ValueError, match="VIT_MAX_RUN_MINUTES"):
            HostLimits.from_env()
    monkeypatch.setenv("VIT_MAX_RUN_MINUTES", "0")
    assert HostLimits.from_env().max_run_minutes == 0  # 0: no limit
