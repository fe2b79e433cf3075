"""The app's named API endpoints, called with gradio_client against the app launched in the test."""
import re
import time

import pytest
from gradio_client import Client, handle_file

from helpers import class_members, image_bytes, write_zip
from vit import models, predict, runs, ui


def test_check_dataset_endpoint_reports_a_zip(app_url, tmp_path):
    z = write_zip(tmp_path / "pets.zip", class_members(n=6))
    report, counts, grid, _ = Client(app_url, verbose=False).predict(handle_file(str(z)), api_name="/check_dataset")
    assert report.startswith("### Ready to train: 12 images in 2 classes")
    assert "| cat | 6 |" in report
    assert len(grid) == 8  # 4 thumbnails per class


def test_check_dataset_endpoint_explains_a_bad_zip(app_url, tmp_path):
    z = write_zip(tmp_path / "one.zip", {"only/1.png": image_bytes(seed=1), "only/2.png": image_bytes(seed=2)})
    report, _, _, _ = Client(app_url, verbose=False).predict(handle_file(str(z)), api_name="/check_dataset")
    assert "Cannot train yet" in report and "Only one class found ('only')" in report


def test_check_dataset_endpoint_refuses_a_hostile_zip_and_keeps_serving(app_url, tmp_path):
    import zipfile
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.bmp", b"\0" * (20 * 1024 * 1024))
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="zip bomb"):
        client.predict(handle_file(str(z)), api_name="/check_dataset")
    report, _, _, _ = client.predict(30, api_name="/sample_dataset")
    assert report.startswith("### Ready to train: 90 images in 3 classes")


def test_train_from_the_sample_data_watch_progress_and_delete(app_url, app_manager):
    manager = app_manager
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="No dataset yet"):
        client.predict(model=ui.DEFAULT_MODEL, scratch=True, epochs=1, batch_size=16, lr=1e-3, owner="me",
                       api_name="/start_training")
    client.predict(10, api_name="/sample_dataset")  # the dataset is kept in this session's state
    message, picker = client.predict(model=ui.DEFAULT_MODEL, scratch=True, epochs=2, batch_size=16, lr=1e-3,
                                     owner="me", api_name="/start_training")
    run_id = picker["value"]
    assert message.startswith("Run **sample shapes (10 per class) · ViT from scratch · ")
    assert f"({run_id}) is" in message
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        table, _ = client.predict(run_id, "me", api_name="/list_runs")
        row = next(r for r in table["data"] if r[-1] == run_id)
        if row[1] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert row[1] == "completed" and row[3] == "2/2", row
    built = runs.read_config(manager.root / run_id)[runs.CONFIG_KEY]["built"]
    loaded = predict.load_model(manager.root / run_id)
    assert built["params"] == models.count_parameters(loaded.model) and built["patch"] == 8
    assert row[2] == models.built_text(built) and row[2].endswith(", from scratch"), row
    metrics = runs.read_json(manager.root / run_id / runs.METRICS)
    estimate = metrics["accuracy_estimate"]  # 6 validation images, under HOLDOUT_MIN: nothing chosen on them
    assert row[4] == f"{estimate['value']:.1%} ({estimate['low']:.0%}-{estimate['high']:.0%}, 6 val, unselected)", row
    summary, losses, accs = client.predict(run_id, "me", api_name="/show_run")
    assert summary.startswith(f"**{run_id}**: completed. Finished: accuracy {estimate['value']:.1%}")
    assert f"### Accuracy {estimate['value']:.1%} (95% interval" in summary and "Best of" not in summary
    assert len(losses["data"]) == 4 and {r[2] for r in accs["data"]} == {"train", "validation"}
    config = manager.progress(run_id)
    assert config["model"] == ui.DEFAULT_MODEL
    with pytest.raises(Exception, match="only a queued or running run can be cancelled"):
        client.predict(run_id, "me", api_name="/cancel_run")
    assert client.predict(run_id, "me", api_name="/delete_run") == f"Deleted run {run_id}."
    assert run_id not in [r["id"] for r in manager.list()]


def test_classify_endpoint_gives_probabilities_a_heatmap_and_clear_errors(app_url, app_manager, tmp_path):
    from vit.samples import make_shapes_dataset
    from helpers import tiny
    run_id = app_manager.submit(make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32), tiny())
    assert app_manager.wait(run_id, 120) == "completed"
    img = tmp_path / "photo.png"
    img.write_bytes(image_bytes(seed=3, size=(64, 48)))
    client = Client(app_url, verbose=False)
    for method in ("chefer", "attention"):
        label, overlay, notes, heads, target = client.predict(run_id, handle_file(str(img)), method, 0.5, None,
                                                              api_name="/classify")
        assert {c["label"] for c in label["confidences"]} == {"circle", "square", "triangle"}
        from PIL import Image
        picture = Image.open(overlay)  # the 64x48 image and its map side by side at 360 px high, a colour bar
        assert picture.size == (2 * 480 + 12, 360 + 14 + 22 + 8)
        if method == "chefer":
            assert f"for class **{label['label']}**" in notes
        else:  # raw attention does not depend on the class, and says which layer it shows
            assert "for class" not in notes and "Raw attention of layer 0 (the last)" in notes
        assert len(heads) == (2 if method == "attention" else 0)  # TINY has 2 heads
    assert_refused(client.predict("20200101-000000-gone-0000", handle_file(str(img)), "chefer", 0.5, None,
                                  api_name="/classify"), "There is no run")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert_refused(client.predict(run_id, handle_file(str(broken)), "chefer", 0.5, None, api_name="/classify"),
                   "broken.png: corrupt or truncated image|broken.png: not an image")
    label, *_ = client.predict(run_id, handle_file(str(img)), "rollout", 0.3, None, api_name="/classify")
    assert label["label"] in ("circle", "square", "triangle")  # the app kept serving


def test_classes_built_one_by_one_are_checked_and_trained(app_url, app_manager, tmp_path):
    client = Client(app_url, verbose=False)
    files = {}
    for c in ("cat", "dog"):
        files[c] = []
        for i in range(6):
            p = tmp_path / f"{c}{i}.png"
            p.write_bytes(image_bytes(seed=100 + i + (50 if c == "dog" else 0), size=(48, 48)))
            files[c].append(handle_file(str(p)))
    names = ["cat", "dog"] + [""] * (ui.MAX_CLASSES - 2)
    uploads = [files["cat"], files["dog"]] + [None] * (ui.MAX_CLASSES - 2)
    report, _, _, summary = client.predict(**dict(zip(ui.CLASS_SLOTS, [*names, *uploads])),
                                           api_name="/check_classes")
    assert report.startswith("### Ready to train: 12 images in 2 classes") and "2 classes built here" in summary
    message, picker = client.predict(model=ui.DEFAULT_MODEL, scratch=True, epochs=1, batch_size=8, lr=1e-3, owner="me",
                       api_name="/start_training")
    assert app_manager.wait(picker["value"], 120) == "completed"
    nameless = ["", "dog"] + [""] * (ui.MAX_CLASSES - 2)
    with pytest.raises(Exception, match="has images but no name"):
        client.predict(**dict(zip(ui.CLASS_SLOTS, [*nameless, *uploads])), api_name="/check_classes")


def test_classify_a_layer_and_head_and_a_batch(app_url, app_manager, tmp_path):
    from vit.samples import make_shapes_dataset
    from helpers import tiny
    run_id = app_manager.submit(make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32), tiny())
    assert app_manager.wait(run_id, 120) == "completed"
    client = Client(app_url, verbose=False)
    img = tmp_path / "a.png"
    img.write_bytes(image_bytes(seed=7, size=(40, 40)))
    label, *_ = client.predict(run_id, handle_file(str(img)), "attention", 0.5, None, 0, 2, api_name="/classify")
    assert label["label"] in ("circle", "square", "triangle")
    assert_refused(client.predict(run_id, handle_file(str(img)), "attention", 0.5, None, -1, 3, api_name="/classify"),
                   r"Head 3 does not exist: the model has 2 heads per layer \(use 1..2, or 0 for their mean\)")
    label, _, notes, heads, _ = client.predict(run_id, handle_file(str(img)), "attention", 0.5, None, -1, 2,
                                               api_name="/classify")
    assert "(head 2)" in notes and heads[0]["caption"] == "layer 0 (the last), head 1"
    assert_refused(client.predict(run_id, handle_file(str(img)), "attention", 0.5, None, 3, 0, api_name="/classify"),
                   "Layer 3 does not exist")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    gallery, message, table = client.predict(run_id, [handle_file(str(img)), handle_file(str(bad))],
                                             api_name="/classify_batch")
    assert message == ""
    captions = [g["caption"] for g in gallery]
    assert re.match(r"(circle|square|triangle) \d+%", captions[0])
    assert captions[1].startswith("bad.png: ") and captions[1].count("bad.png") == 1  # named once
    import csv
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "problem", "unsure", "ood_score", "label1", "probability1", "label2", "probability2",
                       "label3", "probability3"]
    assert rows[1][0] == "a.png" and rows[1][1] == "" and rows[1][4] == captions[0].split()[0]
    assert rows[1][2:4] == ["", ""], "a run with too few validation images for a threshold says nothing of it"
    assert abs(sum(float(p) for p in rows[1][5::2]) - 1) < 1e-3  # all 3 classes of 3
    assert rows[2][0] == "bad.png" and rows[2][1].startswith("bad.png: ")


def assert_refused(outputs, message: str) -> None:
    """A classification the app refused: the reason in the notes, the previous results cleared."""
    label, overlay, notes, heads, _ = outputs
    assert not label and overlay is None and not heads
    assert notes.startswith("**Cannot classify:**") and re.search(message, notes), notes


def test_a_user_error_logs_one_line_not_a_traceback(app_url, capfd):
    client = Client(app_url, verbose=False)  # a fresh session: no dataset
    capfd.readouterr()
    with pytest.raises(Exception, match="No dataset yet"):
        client.predict(model=ui.DEFAULT_MODEL, scratch=True, epochs=1, batch_size=8, lr=1e-3, owner="me",
                       api_name="/start_training")
    err = capfd.readouterr().err
    assert "vit.ui: refused: No dataset yet" in err and "Traceback" not in err


def test_finished_runs_are_compared_within_their_dataset_best_first(app_url, app_manager, tmp_path):
    """Grouped by dataset (its content: the same images under another name are the same dataset), ranked by the
    accuracy estimate within it, one star per dataset; the best validation figure is there, labelled as chosen."""
    from vit.samples import make_shapes_dataset
    from helpers import tiny
    shapes = make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32)
    other = make_shapes_dataset(tmp_path / "other", per_class=12, size=32, seed=5)
    for name, data, source in (("first", shapes, "shapes.zip"), ("second", shapes, "copy of shapes.zip"),
                               ("third", other, "other.zip")):
        run_id = app_manager.submit(data, tiny(), name=name, source_name=source)
        assert app_manager.wait(run_id, 120) == "completed"
    table = Client(app_url, verbose=False).predict("me", api_name="/compare_runs")
    header, rows = table["headers"], [r for r in table["data"] if r[2] in ("first", "second", "third")]
    col = {h: header.index(h) for h in header}
    named = {r[col["run"]]: r[col["dataset"]] for r in rows}
    assert named["first"].startswith("shapes.zip · ") and named["second"].startswith("copy of shapes.zip · ")
    hashes = [r[col["dataset"]].split(" · ")[1] for r in rows]
    assert len(set(hashes)) == 2 and all(len(h) == 8 for h in hashes)
    assert named["first"].split(" · ")[1] == named["second"].split(" · ")[1] != named["third"].split(" · ")[1]
    starts = [k == 0 or hashes[k - 1] != h for k, h in enumerate(hashes)]
    assert sum(starts) == 2, "each dataset's runs together"
    assert [r[col["best"]] for r in rows] == ["★" if s else "" for s in starts], "one star per dataset"
    group = [r for r in rows if r[col["run"]] in ("first", "second")]
    shapes_accs = [float(r[col["accuracy"]].rstrip("%")) for r in group]
    assert shapes_accs == sorted(shapes_accs, reverse=True)
    for r in rows:
        estimate = runs.read_json(app_manager.root / r[-1] / runs.METRICS)["accuracy_estimate"]
        assert r[col["accuracy"]] == f"{estimate['value']:.1%}"
        assert r[col["measured on"]] == "6 validation images, nothing chosen on them"
        assert r[col["best val (chosen on it)"]] == "", "nothing was chosen on 6 validation images"
        assert r[col["epochs"]] == 2 and r[col["batch"]] == 8 and r[col["lr"]] == "0.001"
        assert r[col["model"]].startswith("ViT 32 wide, 1 block, patch 8, 32 px")
    best = max(rows, key=lambda r: float(r[col["accuracy"]].rstrip("%")))
    chosen = runs.read_json(app_manager.root / ui.best_run(app_manager, "me") / runs.METRICS)["accuracy_estimate"]
    assert best[col["accuracy"]] == f"{chosen['value']:.1%}"


def test_a_new_opacity_is_drawn_from_the_map_already_made(app_manager, tmp_path, monkeypatch):
    from vit import explain
    from vit.samples import make_shapes_dataset
    from helpers import tiny
    run_id = app_manager.submit(make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32), tiny())
    assert app_manager.wait(run_id, 120) == "completed"
    img = tmp_path / "a.png"
    img.write_bytes(image_bytes(seed=11, size=(48, 48)))
    calls = []
    real = explain.explain
    monkeypatch.setattr(explain, "explain", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = ui.classify_image(app_manager, run_id, str(img), "chefer", 0.2, None)
    again = ui.classify_image(app_manager, run_id, str(img), "chefer", 0.9, None)
    assert len(calls) == 1 and first[0] == again[0]  # one forward and backward for both
    assert first[1].tobytes() != again[1].tobytes()  # drawn anew with the other opacity
    ui.classify_image(app_manager, run_id, str(img), "rollout", 0.9, None)
    assert len(calls) == 2
