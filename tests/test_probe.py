"""Frozen features (vit.data.features), the linear probe (vit.probe), the quick model, LP-FT and the label review.
Tiny models only; the accuracy and speed they reach live in bench/probe_bench.py."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import flipped_shapes, tiny
from vit import cli, hub, jobs, predict, probe, runs, ui
from vit.data import features
from vit.data import load_dataset
from vit.samples import make_shapes_dataset
from vit.train import ConfigError, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
ALICE, BOB = "alice-visitor-token-0001", "bob-visitor-token-00002"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("probe") / "shapes", per_class=12, size=32)


@pytest.fixture(scope="module")
def source(shapes, tmp_path_factory):
    """Weights to start from: a tiny ViT trained for 2 epochs (a run directory)."""
    run = tmp_path_factory.mktemp("source") / "runs" / "source"
    with load_dataset(shapes) as ds:
        train(ds, tiny(), run)
    return run


def _clusters(n=30, d=16, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 4
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g) + 7.0, y  # far from the origin: the folding matters


def test_the_probe_learns_folds_its_scaling_and_chooses_the_penalty_on_validation():
    x, y = _clusters(60)
    head = probe.fit_head(x[:45], y[:45], x[45:], y[45:], 3)
    assert head.val_acc == 1.0 and head.C in probe.C_GRID and len(head.grid) == len(probe.C_GRID)
    assert (head.logits(x).argmax(1) == y).all()  # the weights apply to the raw features
    # a stronger penalty (smaller C) gives smaller weights
    assert probe.fit(x, y, 3, C=0.01).weight.norm() < probe.fit(x, y, 3, C=10).weight.norm()
    # no validation: chosen by cross-validation instead, and says it has no validation score
    alone = probe.fit_head(x, y, None, None, 3)
    assert alone.val_acc is None and (alone.logits(x).argmax(1) == y).all()


def test_cross_validation_never_judges_an_image_by_a_head_fitted_on_it():
    x, y = _clusters(60)
    y_noisy = y.clone()
    y_noisy[7] = (y[7] + 1) % 3  # one wrong label
    fitted_on_all = probe.fit(x, y_noisy, 3, C=1000.0)  # weak penalty: it memorises the wrong label
    assert fitted_on_all.logits(x[7:8]).argmax() == y_noisy[7]
    out_of_fold = probe.cross_val_proba(x, y_noisy, 3, C=1000.0)
    assert out_of_fold[7].argmax() == y[7] and out_of_fold[7, y_noisy[7]] < 0.1
    assert features.label_error_ranking(x, y_noisy, 3, C=1.0)[0] == 7
    folds = probe.stratified_folds(y, 5)
    assert all(torch.bincount(y[folds == k], minlength=3).tolist() == [4, 4, 4] for k in range(5))


def test_the_features_say_near_duplicates_leakage_label_errors_and_a_learning_curve():
    x, y = _clusters(90)
    x[4] = x[1] * 1.001  # a near-copy of image 1, of its class, in another split
    y_noisy = y.clone()
    y_noisy[5] = (y[5] + 1) % 3
    names = [f"{int(c)}/{i}.png" for i, c in enumerate(y)]
    splits = ["val" if i % 5 == 1 else "train" for i in range(90)]
    copies = torch.full((12,), 0.9999)  # copies of the images are found at 0.9999
    found = features.diagnose(x, y_noisy.tolist(), names, splits, ["a", "b", "c"], C=1.0, copies=copies)
    assert [(p["a"], p["b"], p["leak"]) for p in found["near_duplicates"]] == [(names[1], names[4], True)]
    assert found["judged"]["near_duplicates"]["ok"] and found["judged"]["labels"]["ok"]
    assert [(e["name"], e["label"], e["suggested"]) for e in found["label_errors"]] == [
        (names[5], "abc"[y_noisy[5]], "abc"[y[5]])], "confident learning lists the flip and nothing else"
    curve = found["learning_curve"]
    assert [p["fraction"] for p in curve["points"]] == [0.25, 0.5, 0.75, 1.0] and curve["verdict"]
    assert curve["points"][-1]["images"] == splits.count("train")


def test_label_errors_are_listed_as_cleanlab_finds_them_and_ranked_by_self_confidence():
    """The list is cleanlab's find_label_issues (per-class thresholds, pruned by noise rate) on the probe's
    out-of-fold probabilities, least confident in their label first."""
    from cleanlab.filter import find_label_issues
    x, y = _clusters(120, d=4, seed=3)  # overlapping clusters: some mistakes, some flips
    y[[3, 10, 50, 77]] = (y[[3, 10, 50, 77]] + 1) % 3
    probs = probe.cross_val_proba(x, y, 3, 1.0)
    expected = find_label_issues(y.numpy(), probs.double().numpy(), filter_by="prune_by_noise_rate",
                                 return_indices_ranked_by="self_confidence")
    listed = features.label_issues(probs, y, [str(i) for i in range(120)], ["a", "b", "c"])
    assert [int(e["name"]) for e in listed] == [int(i) for i in expected] and len(listed) >= 4
    given = [e["p_label"] for e in listed]
    assert given == sorted(given)


def test_weak_features_list_no_label_errors_and_say_why():
    """Features that cannot tell the classes apart (a cross-validated probe under JUDGE_FLOOR) list no label
    errors, whatever they doubt, and say so; the Data tab's summary repeats the reason."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 8, generator=g), torch.arange(80) % 2
    x[:, 0] += y * 0.8  # a weak signal: about 65% right
    found = features.diagnose(x, y.tolist(), [f"{i}.png" for i in range(80)], ["train"] * 80, ["ant", "bee"],
                              copies=torch.full((12,), 0.999))
    judged = found["judged"]["labels"]
    assert not judged["ok"] and judged["cv_acc"] < features.JUDGE_FLOOR
    assert found["label_errors"] == [] and found["suspects"] == 0
    assert "too weak to judge labels" in judged["why"] and f"{judged['cv_acc']:.0%}" in judged["why"]
    summary = "\n".join(ui.runs_view._features_summary(found, set()))
    assert "Likely label errors:** not listed: the features are too weak to judge labels yet" in summary


def test_near_duplicates_are_withheld_when_distinct_images_are_as_close_as_copies():
    x, y = _clusters(90)
    names = [f"{i}.png" for i in range(90)]
    nearest = features.nearest_similarity(x)
    copied = [0, 10, 20, 30]
    # copies found at 0.98, but the originals' nearest other images are closer than that: nothing stands out
    weak = torch.full((12,), 0.98)
    assert float(nearest[copied].min()) > 0.98
    rule = features.copy_rule(x, weak, copied)
    assert not rule["ok"] and rule["margin"] < 0
    found = features.diagnose(x, y.tolist(), names, ["train"] * 90, ["a", "b", "c"], copies=weak, copied=copied)
    assert found["near_duplicates"] == [] and "too weak to find near-duplicates" in found["judged"][
        "near_duplicates"]["why"]
    summary = "\n".join(ui.runs_view._features_summary(found, set()))
    assert "Near-duplicates:** not listed: the features are too weak" in summary


def test_a_pair_is_a_near_duplicate_only_where_it_stands_out_as_copies_do():
    """The rule calibrated on copies: similar enough (where COPY_RECALL of the copies are), and ahead of each
    image's next most similar image by the copies' margin. A real copy is; two look-alikes in a crowd are not."""
    x, y = _clusters(90)
    x[4] = x[1] * 1.0001  # a copy of image 1
    x[7] = x[8] + 0.02 * torch.randn(16, generator=torch.Generator().manual_seed(1))  # 7 and 8 look alike...
    x[9] = x[8] + 0.02 * torch.randn(16, generator=torch.Generator().manual_seed(2))  # ... and so does 9
    nearest = features.nearest_similarity(x)
    copied = [i for i in nearest.argsort(descending=True).tolist() if i not in (1, 4, 7, 8, 9)][:4]  # crowded ones
    copies = torch.full((12,), 0.9999)  # copies: nearly the same features, ahead of the originals' neighbours
    rule = features.copy_rule(x, copies, copied)
    margin = float(torch.quantile(copies - nearest[copied].repeat_interleave(3), 1 - features.COPY_MARGIN))
    assert rule["ok"] and rule["margin"] == pytest.approx(margin, abs=1e-5) and margin > 0
    assert rule["threshold"] == pytest.approx(float(torch.quantile(copies, 1 - features.COPY_RECALL)), abs=1e-5)
    pairs = features.near_duplicates(x, [str(i) for i in range(90)], ["train"] * 90, rule)
    assert [(p["a"], p["b"]) for p in pairs] == [("1", "4")], "the copy, not the crowd of look-alikes"


def test_copies_of_an_image_are_measured_through_the_models_own_pipeline(source):
    """copy_similarities: one similarity per image and copy (resized, re-encoded, cropped), each near 1 for
    features that do not move under such changes, and exactly 1 for an unchanged copy."""
    from vit.samples import draw_shape
    import random as _random
    loaded = predict.load_model(source)
    images = [draw_shape("circle", (96, 80), _random.Random(k)) for k in range(3)]
    sims = features.copy_similarities(loaded.model, loaded.data_config, images)
    assert sims.shape == (9,) and bool(((sims > 0.5) & (sims <= 1.0001)).all())
    from PIL import Image
    flat = [Image.new("RGB", (64, 64), (90, 120, 30))]  # every copy of a flat image is the same image
    assert features.copy_similarities(loaded.model, loaded.data_config, flat) == pytest.approx(torch.ones(3),
                                                                                               abs=1e-4)


@pytest.mark.slow  # (seconds: an ONNX export, or a quick model's features computed)
def test_quick_model_is_a_normal_run_and_its_features_are_cached(shapes, source):
    root = source.parent
    computed = {}
    with load_dataset(shapes) as ds:
        for name in ("quick", "again"):  # the second run reads every feature from the cache
            events = []
            metrics = train(ds, TrainConfig(weights=str(source), quick=True), root / name, on_event=events.append)
            computed[name] = [e["done"] for e in events if e.get("type") == "features"]
    assert computed["quick"][-1] == len(ds.items) and computed["again"] == []
    assert len(list((root / runs.FEATURES).glob("*.safetensors"))) == 1
    record = runs.read_config(root / "quick")[runs.CONFIG_KEY]
    assert record["quick"] and record["probe_head"]["C"] in probe.C_GRID
    assert metrics["quick"] and metrics["per_class"] and len(metrics["history"]) == 1
    assert runs.read_status(root / "quick")["message"].startswith("Quick model: ")
    # Classify loads it as any run and agrees with the accuracy the run reports
    with load_dataset(shapes) as ds:
        assert _accuracy_in_classify(root / "quick", ds) == pytest.approx(metrics["val_acc"])
    found = runs.read_json(root / "quick" / runs.DIAGNOSTICS)
    assert set(found) >= {"near_duplicates", "label_errors", "learning_curve"}
    assert "quick model: only the head fitted" in hub.model_card(root / "quick", "alice/q").text


def test_a_quick_model_on_features_that_know_the_shapes_is_far_above_chance(trained_shapes, tmp_path):
    """A new head, fitted on the features of a model that learned shapes: new shapes under new names are told
    apart (chance is 1/3), and the validation accuracy the run reports is what Classify gets on those images."""
    fresh = make_shapes_dataset(tmp_path / "fresh", per_class=40, size=32, seed=7)
    for shape, name in (("circle", "disc"), ("square", "box"), ("triangle", "wedge")):
        (fresh / shape).rename(fresh / name)  # other classes: the source's trained head cannot be kept
    with load_dataset(fresh) as ds:
        metrics = train(ds, TrainConfig(weights=str(trained_shapes), quick=True), tmp_path / "quick")
        assert len(ds.val) >= 20 and metrics["val_acc"] >= 0.75, metrics["val_acc"]
        assert _accuracy_in_classify(tmp_path / "quick", ds) == pytest.approx(metrics["val_acc"])


def _accuracy_in_classify(run_dir: Path, ds) -> float:
    """The share of the dataset's validation images that Classify (predict, from the files) gets right."""
    loaded = predict.load_model(run_dir)
    return sum(loaded.classify(str(ds.items[i].path))[0][0][0] == ds.items[i].label for i in ds.val) / len(ds.val)


@pytest.mark.slow
def test_lp_ft_starts_fine_tuning_from_the_fitted_head(shapes, source):
    with load_dataset(shapes) as ds:
        # a learning rate too small to move anything: the result is the head LP-FT fitted
        metrics = train(ds, TrainConfig(weights=str(source), lp_ft=True, epochs=1, lr=1e-10, min_lr=0.0,
                                        warmup_epochs=0), source.parent / "lpft")
        quick = train(ds, TrainConfig(weights=str(source), quick=True), source.parent / "lpft-quick")
    record = runs.read_config(source.parent / "lpft")[runs.CONFIG_KEY]
    assert record["lp_ft"] and record["lp_ft_head"]["C"] == runs.read_config(
        source.parent / "lpft-quick")[runs.CONFIG_KEY]["probe_head"]["C"]
    assert metrics["val_acc"] == pytest.approx(quick["val_acc"])
    assert metrics["best_val_loss"] == pytest.approx(quick["best_val_loss"], rel=1e-4)
    assert "LP-FT" in hub.model_card(source.parent / "lpft", "alice/l").text


def test_quick_and_lp_ft_need_trained_weights():
    for flag in ("quick", "lp_ft"):
        with pytest.raises(ConfigError, match="random weights have none worth fitting"):
            TrainConfig(pretrained=False, **{flag: True}).check()


@pytest.mark.slow  # (seconds: an ONNX export, or a quick model's features computed)
def test_the_command_line_makes_a_quick_model(shapes, source, tmp_path, capsys):
    assert cli.main(["train", "--data", str(shapes), "--weights", str(source), "--quick",
                     "--out", str(tmp_path / "q")]) == 0
    assert "Quick model: " in capsys.readouterr().err
    assert (tmp_path / "q" / runs.WEIGHTS).is_file() and (tmp_path / "q" / runs.DIAGNOSTICS).is_file()


@pytest.mark.slow
def test_review_relabels_or_drops_in_the_visitors_dataset_and_the_next_run_uses_it(trained_shapes, tmp_path):
    manager = jobs.JobManager(tmp_path / "checkpoints", gpus=0, single_user=False)
    shapes, moved = flipped_shapes(tmp_path / "shapes", per_class=40, flips=2, size=96)  # (see test_quick_model)
    try:
        with load_dataset(shapes) as ds:
            *_, state, _ = ui.dataset_view._show(ds, str(shapes), "shapes")  # the Data tab's view of it
        # Alice starts a quick model from one of her runs (on features that know shapes), picked as the Model
        alice_source = manager.submit(str(shapes), TrainConfig(weights=str(trained_shapes), quick=True), owner=ALICE)
        assert manager.wait(alice_source, 300) == "completed"
        ui.start_training(manager, state, f"{ui.RUN_START}{alice_source}", True, None, None, None, ALICE,
                          quick=True)
        quick = manager.list(ALICE)[0]["id"]
        assert manager.wait(quick, 300) == "completed", manager.log_tail(quick)
        assert runs.read_config(manager.root / quick)[runs.CONFIG_KEY]["quick"]
        # Bob may not start from Alice's run
        with pytest.raises(Exception, match="no run"):
            ui.start_training(manager, state, f"{ui.RUN_START}{alice_source}", True, None, None, None, BOB,
                              quick=True)
        summary, curve, pairs, suspects, picker, action, box = ui.run_features(manager, quick, state, ALICE)
        assert "What the features say" in summary and len(curve) == 4 and box.visible
        # the Data tab says it too, under the health report of the same dataset, and only to its owner
        assert "Likely label errors" in ui.data_features(manager, quick, state, ALICE)
        assert ui.data_features(manager, quick, state, BOB) == ""
        assert ui.data_features(manager, quick, {**state, "name": "other.zip"}, ALICE) == ""
        flagged = runs.read_json(manager.root / quick / runs.DIAGNOSTICS)["label_errors"]
        assert set(moved) <= {e["name"] for e in flagged[:4]} and flagged[0]["name"] in moved, "flips come first"
        assert all(e["suggested"] == e["name"].split("/wrong-")[1].split("_")[0]  # what it really is
                   for e in flagged if e["name"] in moved)
        name, suggested = flagged[0]["name"], flagged[0]["suggested"]
        assert picker.value == name and action.value == "keep", "changing the data is never the default"
        label = flagged[0]["label"]
        other = next(c for c in ("circle", "square", "triangle") if c not in (label, suggested))
        offered = [value for _, value in ui.review_choices(manager, quick, name, ALICE).choices]
        assert offered == ["keep", suggested, "drop", other]
        images = len(ds.items)
        # each action, in turn, on the same image: the Data tab's report and the dataset state follow
        report, _, _, state, _, said = ui.review_image(manager, state, quick, name, suggested, ALICE)
        assert state["edits"] == {name: suggested} and "1 relabelled" in report and "relabelled as" in said
        assert f"Ready to train: {images} images" in report
        total = runs.read_json(manager.root / quick / runs.DIAGNOSTICS)["suspects"]
        assert f"**Likely label errors:** {total - 1} image" in ui.data_features(manager, quick, state, ALICE)
        report, _, _, state, _, said = ui.review_image(manager, state, quick, name, "keep", ALICE)
        assert state["edits"] == {name: label} and f"kept as {label}" in said and "Label review" not in report
        report, _, _, state, _, said = ui.review_image(manager, state, quick, name, "drop", ALICE)
        assert state["edits"] == {name: None} and "dropped from the dataset" in said
        assert "0 relabelled, 1 dropped" in report and f"Ready to train: {images - 1} images" in report
        report, _, _, state, _, said = ui.review_image(manager, state, quick, name, other, ALICE)
        assert state["edits"] == {name: other} and f"relabelled as {other}" in said and "1 relabelled" in report
        report, _, _, state, _, _ = ui.review_image(manager, state, quick, name, suggested, ALICE)
        # a name the run did not flag, or a class it does not have, is refused
        with pytest.raises(Exception, match="Pick one of the run's likely label errors"):
            ui.review_image(manager, state, quick, "../../etc/passwd", "drop", ALICE)
        with pytest.raises(Exception, match="Pick what to do"):
            ui.review_image(manager, state, quick, name, "dragon", ALICE)
        # the reviewed image is no longer listed, and the next run trains on the reviewed labels
        assert name not in ui.run_features(manager, quick, state, ALICE).suspect.choices
        ui.start_training(manager, state, ui.DEFAULT_MODEL, True, 1, 8, 1e-3, ALICE)
        newest = manager.list(ALICE)[0]["id"]
        with open(manager.root / newest / jobs.DATA_DIR / "labels.csv", newline="") as f:
            labels = {row["path"]: row["label"] for row in csv.DictReader(f)}
        assert labels[name] == suggested
        manager.cancel(newest, owner=ALICE)
    finally:
        manager.shutdown(grace_s=2)


@pytest.mark.slow
def test_a_quick_model_from_hub_weights(shapes, tmp_path):
    """`--model hf-hub:user/repo --quick`: the pretrained download path, through the fake Hub."""
    from fake_hub import FakeHub
    hub_ = FakeHub()
    try:
        with load_dataset(shapes) as ds:
            train(ds, tiny(), tmp_path / "pushed")
        env = {"HF_ENDPOINT": hub_.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_TOKEN": "hf_write_alice", "PATH": "/usr/bin:/bin"}
        pushed = subprocess.run([sys.executable, "-m", "vit", "push", "--run", str(tmp_path / "pushed"), "--repo",
                                 "alice/tiny"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert pushed.returncode == 0, pushed.stderr
        quick = subprocess.run([sys.executable, "-m", "vit", "train", "--data", str(shapes), "--model",
                                "hf-hub:alice/tiny", "--quick", "--out", str(tmp_path / "q")],
                               env={**env, "HF_TOKEN": ""}, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert quick.returncode == 0, quick.stderr
        assert json.loads((tmp_path / "q" / runs.CONFIG).read_text())[runs.CONFIG_KEY]["model"] == "hf-hub:alice/tiny"
    finally:
        hub_.close()
