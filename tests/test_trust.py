"""Answers you can trust (vit.trust): the temperature, the calibration error before and after, the "none of these"
check, their files (hostile ones included), and how a run, predict, the CLI and the app carry them."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny
from vit import predict, runs, samples, trust
from vit.data import load_dataset
from vit.samples import make_shapes_dataset
from vit.train import train


def overconfident(n: int, t: float, seed: int = 0):
    """Logits `t` times sharper than the probabilities the labels are drawn from: the right temperature is t."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g) * 1.5
    labels = torch.multinomial(z.softmax(-1), 1, generator=g)[:, 0]
    return z * t, labels


def test_the_temperature_undoes_a_known_overconfidence_and_the_error_falls():
    logits, labels = overconfident(3000, 3.0)
    assert trust.fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    report = trust.calibrate(logits, labels)
    assert report["temperature"] == pytest.approx(3.0, rel=0.1)
    assert report["ece_before"] > 0.1 and report["ece_after"] < 0.03, report
    assert sum(b["images"] for b in report["diagram_after"]) == 3000 and len(report["diagram_before"]) == 10


def test_the_error_after_is_measured_out_of_fold_not_on_the_fitted_images():
    """A temperature fitted on the very images it is scored on flatters them; out of fold it may not."""
    logits, labels = overconfident(60, 2.0, seed=3)
    report = trust.calibrate(logits, labels, seed=1)
    in_sample = trust.ece((logits / report["temperature"]).softmax(-1), labels)
    assert report["ece_after"] != pytest.approx(in_sample, abs=1e-6)


def test_too_few_images_leave_the_temperature_at_1_and_say_so():
    logits, labels = overconfident(trust.MIN_CALIBRATION - 1, 3.0)
    report = trust.calibrate(logits, labels)
    assert report["temperature"] == 1.0 and report["ece_after"] is None and "not calibrated" in report["says"]


def test_ece_of_a_perfectly_calibrated_and_of_an_overconfident_answer():
    probs = torch.tensor([[0.8, 0.2]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)  # 80% right at 80%
    assert trust.ece(probs, labels) == pytest.approx(0.0, abs=1e-6)
    assert trust.ece(probs, torch.tensor([0] * 5 + [1] * 5)) == pytest.approx(0.3)


def clusters(n: int, seed: int, shift: float = 0.0):
    """Features of three classes {"final": [n, 16], "early": [n, 8]} (Seen.features), and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return {"final": torch.eye(3, 16)[y] * 6 + shift + torch.randn(n, 16, generator=g),
            "early": torch.randn(n, 8, generator=g) + shift}, y


def logits_of(x):
    return x["final"][:, :3] * 2  # (a classifier that reads the first three features)


@pytest.mark.parametrize("method", trust.METHODS[:2])
def test_far_features_are_flagged_and_the_threshold_accepts_95_percent_of_held_out_ones(method):
    x_train, y_train = clusters(300, 0)
    x_held, y_held = clusters(200, 1)
    fitted, report = trust.fit(x_train, y_train, logits_of(x_held), x_held, y_held, 3, method=method)
    assert report["ood"]["method"] == method and report["ood"]["accept"] == 0.95
    held_scores = fitted.score(x_held, logits_of(x_held))
    assert float((held_scores <= fitted.threshold()).double().mean()) == pytest.approx(0.95, abs=0.01)
    x_fresh, _ = clusters(300, 2)
    accepted = float((fitted.score(x_fresh, logits_of(x_fresh)) <= fitted.threshold()).double().mean())
    assert 0.88 <= accepted <= 1.0, accepted
    far, _ = clusters(100, 4)
    far["final"] = far["final"] * 0.5 + torch.tensor([0.0] * 8 + [9.0] * 8)  # unlike any class
    assert bool((fitted.score(far, logits_of(far)) > fitted.threshold()).all())
    assert fitted.threshold(0.5) < fitted.threshold(0.99), "a lower acceptance flags more"


def test_the_first_blocks_statistics_catch_what_the_final_features_miss():
    """Images whose final features sit on a class mean but whose low-level statistics are unlike any training
    image's (a photo read by a model of scans): the two-layer score flags them, the final features alone do not."""
    x_train, y_train = clusters(300, 0)
    x_held, y_held = clusters(200, 1)
    fitted, _ = trust.fit(x_train, y_train, logits_of(x_held), x_held, y_held, 3)
    assert {"early_mean", "early_precision", "scale"} <= set(fitted.tensors)
    odd, _ = clusters(100, 5)
    odd["early"] = odd["early"] + 6.0
    final_only, _ = trust.fit({"final": x_train["final"]}, y_train, logits_of(x_held), {"final": x_held["final"]},
                              y_held, 3)
    assert "scale" not in final_only.tensors
    assert float((fitted.score(odd, logits_of(odd)) > fitted.threshold()).double().mean()) > 0.95
    assert float((final_only.score(odd, logits_of(odd)) > final_only.threshold()).double().mean()) < 0.2
    with pytest.raises(ValueError, match="first block"):
        fitted.score({"final": odd["final"]}, logits_of(odd))


def test_the_check_round_trips_its_file_and_a_hostile_file_is_refused_with_a_reason(tmp_path, monkeypatch):
    x_train, y_train = clusters(90, 0)
    x_held, y_held = clusters(60, 1)
    fitted, report = trust.fit(x_train, y_train, logits_of(x_held) * 2, x_held, y_held, 3)
    runs.write_json(tmp_path / runs.CONFIG, {"architecture": "x", runs.CONFIG_KEY: {"seed": 0}})
    trust.save(tmp_path, fitted, report)
    record = runs.read_config(tmp_path)[runs.CONFIG_KEY]
    assert record["seed"] == 0 and record["calibration"]["temperature"] == fitted.temperature
    assert record["ood"]["threshold"] == pytest.approx(fitted.threshold(), abs=1e-5)
    again = trust.load(tmp_path, 3, 16, 8)
    assert again.method == trust.METHOD and again.temperature == fitted.temperature and not again.note
    assert torch.allclose(again.score(x_held, logits_of(x_held)), fitted.score(x_held, logits_of(x_held)), atol=1e-3)
    for dims in ((3, 17, 8), (3, 16, 9), (4, 16, 8)):  # another model's features or classes
        wrong = trust.load(tmp_path, *dims)
        assert wrong.method is None and "wrong shape" in wrong.note, wrong.note
    monkeypatch.setattr(trust, "MAX_FILE_BYTES", 100)
    assert "over" in trust.load(tmp_path, 3, 16, 8).note
    monkeypatch.undo()
    (tmp_path / runs.OOD).write_bytes(b"\x00" * 64)
    broken = trust.load(tmp_path, 3, 16, 8)
    assert broken.method is None and "cannot be read" in broken.note and broken.temperature == fitted.temperature
    for bad in (float("nan"), -2, 1e9, "3", True):
        runs.write_json(tmp_path / runs.CONFIG, {runs.CONFIG_KEY: {"calibration": {"temperature": bad}}})
        assert trust.load(tmp_path, 3, 16, 8).temperature == 1.0
    (tmp_path / runs.OOD).unlink()
    assert "trained without one" in trust.load(tmp_path, 3, 16, 8).note


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory):
    """A tiny run with enough validation images (21) for a temperature and a threshold."""
    tmp = tmp_path_factory.mktemp("trust")
    data = make_shapes_dataset(tmp / "shapes", per_class=12, size=32)
    with load_dataset(data, val_fraction=0.6) as ds:
        m = train(ds, tiny(epochs=3), tmp / "run")
    return tmp / "run", m, data


def test_a_run_stores_its_calibration_and_check_and_reports_calibrated_probabilities(checked_run):
    run_dir, m, _ = checked_run
    record = runs.read_config(run_dir)[runs.CONFIG_KEY]
    t = record["calibration"]["temperature"]
    assert t != 1.0 and record["calibration"]["images"] == m["accuracy_estimate"]["images"] == 21
    assert m["calibration"]["ece_after"] is not None and m["ood"]["threshold"] == record["ood"]["threshold"]
    assert (run_dir / runs.OOD).is_file()
    loaded = predict.load_model(run_dir)
    assert loaded.trust.temperature == t and loaded.trust.checks
    # the run's per-image results are the calibrated probabilities predict gives from the files
    for r in m["predictions"][:6]:
        (answer,) = loaded.answers([predict.read_image(checked_run[2] / r["name"])])
        assert float(answer.probs.max()) == pytest.approx(r["confidence"], abs=1e-4)


def test_predict_json_says_unsure_and_the_score_and_the_threshold(checked_run, tmp_path, capsys):
    from vit import cli
    run_dir, _, _ = checked_run
    blank = tmp_path / "blank.png"
    Image.new("RGB", (40, 40), "white").save(blank)
    shape = tmp_path / "circle.png"
    samples.draw_shape("circle", 32, random.Random(5)).save(shape)
    assert cli.main(["predict", "--model", str(run_dir), "--image", str(blank), str(shape), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    loaded = predict.load_model(run_dir)
    assert out["threshold"] == pytest.approx(loaded.trust.threshold()) and out["accept"] is None or out["accept"]
    for r in out["results"]:
        assert isinstance(r["unsure"], bool) and isinstance(r["ood_score"], float)
        assert r["unsure"] == (r["ood_score"] > out["threshold"])
        assert sum(t["probability"] for t in r["top"]) == pytest.approx(1.0, abs=1e-4)
    assert cli.main(["predict", "--model", str(run_dir), "--image", str(blank), "--json", "--accept", "0.5"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["threshold"] < out["threshold"] and strict["accept"] == 0.5
    assert cli.main(["predict", "--model", str(run_dir), "--image", str(blank), "--accept", "2"]) != 0
    assert "--accept must be from 0.5 to 1" in capsys.readouterr().err


def test_a_model_without_the_files_answers_as_before_and_says_it_has_no_check(checked_run, tmp_path):
    """Stock timm's folder (no ood.safetensors, no calibration): temperature 1, unsure None, a note."""
    import shutil
    run_dir, _, _ = checked_run
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(run_dir / runs.WEIGHTS, plain)
    config = runs.read_config(run_dir)
    config.pop(runs.CONFIG_KEY)
    runs.write_json(plain / runs.CONFIG, config)
    loaded = predict.load_model(plain)
    img = Image.new("RGB", (32, 32), "white")
    (answer,) = loaded.answers([img])
    assert answer.unsure is None and answer.ood_score is None and "trained without one" in loaded.trust.note
    with torch.no_grad():
        raw = loaded.model(loaded.preprocess(img)).softmax(-1)[0]
    assert torch.allclose(answer.probs, raw, atol=1e-6)


@pytest.mark.slow
def test_a_model_that_knows_the_shapes_says_not_sure_of_blanks_noise_and_photos(trained_shapes):
    """The recipe's model of the sample shapes (held-out threshold on 60 images): images of nothing it knows are
    "not sure", fresh shapes are answered; and its probabilities are better calibrated than the raw softmax."""
    loaded = predict.load_model(trained_shapes)
    rng, gen = random.Random(7), np.random.default_rng(7)
    fresh = [samples.draw_shape(s, 96, rng) for s in samples.SHAPES for _ in range(20)]
    answers = loaded.answers(fresh)
    # (the threshold is set on 60 held-out images: the share of 60 fresh ones it lets through moves by a few points
    # with the machine's float arithmetic, 83% on an AVX2 EPYC, 85% or more elsewhere)
    assert sum(not a.unsure for a in answers) / len(answers) >= 0.8
    strange = ([Image.new("RGB", (96, 96), c) for c in ("white", "black", (90, 140, 200))]
               + [Image.fromarray(gen.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(3)])
    assert all(a.unsure for a in loaded.answers(strange)), [a.ood_score for a in loaded.answers(strange)]
    y = torch.tensor([loaded.labels.index(s) for s in samples.SHAPES for _ in range(20)])
    probs = torch.stack([a.probs for a in answers])
    x = torch.cat([loaded.preprocess(im) for im in fresh])
    with torch.no_grad():
        raw = loaded.model(x).softmax(-1)
    assert trust.ece(probs, y) <= trust.ece(raw, y)


def test_classify_and_the_batch_say_not_sure_at_the_sliders_threshold(checked_run, tmp_path):
    """The Classify handlers judge each image at the threshold of the slider's share, say so first in the notes
    and in the batch's gallery and CSV (unsure, ood_score), and refuse a share out of range."""
    import csv
    import shutil

    import gradio as gr

    from vit.jobs import JobManager
    from vit.ui import classify_tab
    run_dir, _, _ = checked_run
    manager = JobManager(tmp_path / "checkpoints", gpus=0)
    try:
        run_id = "20261201-000000-tiny-trust"
        shutil.copytree(run_dir, manager.root / run_id)
        blank, shape = tmp_path / "blank.png", tmp_path / "square.png"
        Image.new("RGB", (50, 40), "white").save(blank)
        samples.draw_shape("square", 32, random.Random(2)).save(shape)
        loaded = predict.load_model(manager.root / run_id)
        for accept in (0.5, 1.0):
            label, _, notes, _, _ = classify_tab.classify_image(manager, run_id, str(blank), "rollout", 0.5, None,
                                                                 accept=accept)
            (answer,) = loaded.answers([predict.read_image(blank)], accept)
            assert notes.startswith("**Not sure: this does not look like your training images**") == answer.unsure
            assert f"threshold {loaded.trust.threshold(accept):.3g}" in notes.split("\n")[0]
            assert label == {c: pytest.approx(float(p), abs=1e-6) for c, p in zip(loaded.labels, answer.probs)}
            gallery, table = classify_tab.classify_batch(manager, run_id, [str(blank), str(shape)], accept)
            rows = list(csv.DictReader(open(table, newline="")))
            for (_, caption), row, path in zip(gallery, rows, (blank, shape)):
                (a,) = loaded.answers([predict.read_image(path)], accept)
                assert row["unsure"] == str(a.unsure)
                assert float(row["ood_score"]) == pytest.approx(a.ood_score, abs=1e-5)
                assert caption.startswith("Not sure (closest: ") == a.unsure
        with pytest.raises(gr.Error, match="threshold must be from 0.5 to 1"):
            classify_tab.classify_batch(manager, run_id, [str(blank)], 7)
    finally:
        manager.shutdown(grace_s=1)


def test_the_data_tab_suggests_an_other_class_unless_there_is_one():
    from vit.ui.dataset_view import other_class_hint
    assert "add a folder named **other**" in other_class_hint(["ants", "bees"])
    assert other_class_hint(["ants", "bees", "Other"]) == other_class_hint(["cat", "none"]) == ""


@pytest.mark.parametrize("quick", [False, True])
def test_the_saved_validation_scores_are_what_predict_gives_from_the_files(checked_run, tmp_path, quick):
    """Half of 45 validation images choose, half estimate: the threshold's scores are every validation image's, as
    predict computes them from the files, for a trained model and for a quick model alike."""
    from vit.train import TrainConfig
    run_dir, _, _ = checked_run
    data = make_shapes_dataset(tmp_path / "shapes", per_class=25, size=32, seed=4)
    with load_dataset(data, val_fraction=0.6) as ds:
        config = TrainConfig(weights=str(run_dir), quick=True) if quick else tiny(epochs=1)
        m = train(ds, config, tmp_path / "run")
        val = [ds.items[i].path for i in ds.val]
    assert m["accuracy_estimate"]["from"] == "holdout" and m["ood"]["images"] == len(val)
    loaded = predict.load_model(tmp_path / "run")
    scores = sorted(a.ood_score for a in loaded.answers([predict.read_image(p) for p in val]))
    assert scores == pytest.approx(loaded.trust.heldout.tolist(), abs=1e-3)
