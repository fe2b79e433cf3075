"""The training engine, the model factory and the run directory."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from vit import cli, models, runs
from vit.train import metrics
from vit.data import load_dataset
from vit.models import CATALOG, ModelError, ModelSpec, create_model
from vit.samples import make_shapes_dataset
from vit.train import TrainError, train

from helpers import TINY, on_new_models, tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "d", per_class=12, size=32)


# ---------------------------------------------------------------- the engine learns


def test_small_vit_from_scratch_learns_shapes(trained_shapes):
    """Proof that the engine learns, with what the recipe chooses by itself (its model, schedule and default
    augmentation, colour jitter included): >= 95% on circles/squares/triangles, from scratch, on CPU."""
    metrics = runs.read_json(trained_shapes / runs.METRICS)
    record = runs.read_config(trained_shapes)[runs.CONFIG_KEY]
    assert record["recipe"] and record["color_jitter"] == 0.4 and record["crop_padding"] == 4
    assert record["model_args"]["global_pool"] == "max" and record["img_size"] == 32
    assert metrics["val_acc"] >= 0.95, metrics["history"]
    assert sum(v["support"] for v in metrics["per_class"].values()) == 120
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


# ---------------------------------------------------------------- run directory


def test_run_directory_contents_and_stock_timm_loading(shapes, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    events = []
    with load_dataset(shapes) as ds:
        train(ds, tiny(), run, on_event=events.append)
        val_names = {ds.items[i].name for i in ds.val}
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.json", "model.safetensors", "last.pt", "status.json", "metrics.jsonl", "metrics.json",
         "data_report.json", "trained_on.txt"])
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["num_classes"] == 3 and config["label_names"] == ["circle", "square", "triangle"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["vit_studio"]["epochs"] == 2 and config["vit_studio"]["classes"] == config["label_names"]
    status = runs.read_status(run)
    assert status["state"] == "completed" and status["finished_at"] >= status["started_at"]
    assert [r["epoch"] for r in runs.read_metrics_log(run)] == [1, 2]
    row = runs.read_metrics_log(run)[0]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "epoch_time", "eta_s"):
        assert isinstance(row[key], float), key
    final = runs.read_json(run / "metrics.json")
    assert set(final["per_class"]) == {"circle", "square", "triangle"}
    assert all({"precision", "recall", "f1", "support"} <= set(v) for v in final["per_class"].values())
    assert sum(map(sum, final["confusion_matrix"])) == len(val_names)
    assert all(m["name"] in val_names and m["true"] != m["predicted"] for m in final["misclassified"])
    assert len(final["misclassified"]) == round((1 - final["val_acc"]) * len(val_names))
    assert {e["type"] for e in events} >= {"status", "cache", "step", "epoch", "end"}

    # stock timm, no code of ours: same logits as the best weights in our own model
    loaded = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    ours = create_model(ModelSpec(TINY["model"], pretrained=False, img_size=32, patch_size=8,
                                  model_args=TINY["model_args"]), 3).eval()
    ours.load_state_dict(load_file(run / "model.safetensors"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ours(x), atol=1e-6)
    assert loaded.pretrained_cfg["label_names"] == ["circle", "square", "triangle"]


def test_writes_are_atomic_and_tolerate_a_torn_metrics_line(tmp_path):
    runs.write_json(tmp_path / "x.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"], "no temp file is left behind"
    runs.write_metrics_log(tmp_path, [{"epoch": 1}, {"epoch": 2}])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "val')  # a crash mid-write
    assert [r["epoch"] for r in runs.read_metrics_log(tmp_path)] == [1, 2]


def test_list_and_delete_runs(tmp_path):
    a = runs.create_run_dir(tmp_path, "vit_tiny_patch16_224.augreg")
    runs.update_status(a, "completed")
    time.sleep(0.01)
    b = runs.create_run_dir(tmp_path, "hf-hub:me/model")
    runs.update_status(b, "running")
    assert [r.run_dir for r in runs.list_runs(tmp_path)] == [b, a]
    with pytest.raises(ValueError, match="cancel it before deleting"):
        runs.delete_run(b)
    runs.delete_run(a)
    assert not a.exists() and b.exists()


# ---------------------------------------------------------------- resume, cancel, failures


def test_train_leaves_the_callers_config_alone(shapes, tmp_path):
    config = tiny(epochs=1.0, batch_size=8.0)  # (as a form sends them: check() makes whole numbers ints)
    with load_dataset(shapes) as ds:
        train(ds, config, tmp_path / "run")
    assert isinstance(config.epochs, float) and config.batch_size == 8.0 and isinstance(config.batch_size, float)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(shapes, tmp_path, monkeypatch):
    with load_dataset(shapes) as ds:
        straight = train(ds, tiny(epochs=4), tmp_path / "a")
        per_epoch = -(-len(ds.train) // tiny().batch_size)  # steps (and updates) per epoch
    steps = {"n": 0}

    def stop_during_epoch_3():
        steps["n"] += 1
        return steps["n"] > 2 * per_epoch + 2  # 2 steps into epoch 3

    with load_dataset(shapes) as ds:
        first = train(ds, tiny(epochs=4), tmp_path / "b", should_stop=stop_during_epoch_3)
        assert first["cancelled"] and runs.read_status(tmp_path / "b")["state"] == "cancelled"
        saved = runs.load_resume_state(tmp_path / "b")
        assert saved["epoch"] == 1 and saved["update"] == 2 * per_epoch  # epochs 1 and 2 finished
        entered = _record_epoch_starts(monkeypatch)
        events = []
        resumed = train(ds, None, tmp_path / "b", resume=True, on_event=events.append)
    # what the resumed run trained: epochs 3 and 4 (0-based 2, 3), each whole, and nothing before
    trained = [(e["epoch"], e["step"]) for e in events if e["type"] == "step"]
    assert trained == [(epoch, step) for epoch in (2, 3) for step in range(1, per_epoch + 1)]
    # it entered epoch 3 with the saved optimizer (Adam's moments, step counts), update count and random state
    first_epoch = entered[0]
    assert first_epoch["epoch"] == 2 and first_epoch["update"] == saved["update"]
    assert torch.equal(first_epoch["rng"], saved["rng"]["torch"])
    assert first_epoch["lr"] == pytest.approx(saved["history"][-1]["lr"], rel=1e-6)
    restored, expected = first_epoch["optimizer"]["state"], saved["optimizer"]["state"]
    assert restored.keys() == expected.keys() and len(expected) > 0
    for k in expected:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(restored[k][name], expected[k][name]), (k, name)
    assert [r["epoch"] for r in runs.read_metrics_log(tmp_path / "b")] == [1, 2, 3, 4]
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert resumed["history"][:2] == saved["history"]  # the first two epochs' records are kept, not redone
    assert resumed["val_acc"] == straight["val_acc"]
    assert runs.read_status(tmp_path / "b")["state"] == "completed"


def _record_epoch_starts(monkeypatch) -> list[dict]:
    """What each epoch of a training run starts from (its number, update count, lr, optimizer and torch's random
    state), recorded as the engine enters train_one_epoch."""
    import copy
    from vit.train import engine
    entered, real = [], engine.train_one_epoch

    def recording(run, epoch, stop):
        entered.append({"epoch": epoch, "update": run.update, "rng": torch.get_rng_state(),
                        "lr": engine._lr(run.optimizer),
                        "optimizer": copy.deepcopy(run.optimizer.state_dict())})
        return real(run, epoch, stop)

    monkeypatch.setattr(engine, "train_one_epoch", recording)
    return entered


def test_a_data_worker_changes_nothing_each_image_draws_its_own_augmentation(shapes, tmp_path):
    """Augmentation is seeded per image (run seed, epoch, image): a worker process preparing the batches, kept
    from epoch to epoch, trains the same model as the main process alone, progressive sizes included."""
    with load_dataset(shapes) as ds:
        alone = train(ds, tiny(epochs=3, progressive=True, patch_size=4), tmp_path / "a")
        worker = train(ds, tiny(epochs=3, progressive=True, patch_size=4, workers=1), tmp_path / "b")
    assert [r["train_loss"] for r in worker["history"]] == pytest.approx(
        [r["train_loss"] for r in alone["history"]], rel=1e-5)
    assert worker["val_acc"] == alone["val_acc"]


def test_resume_without_saved_state_is_refused(tmp_path, shapes):
    with load_dataset(shapes) as ds, pytest.raises(TrainError, match="no saved state"):
        train(ds, None, tmp_path, resume=True)


def test_cancel_stops_within_one_step_and_keeps_the_best_checkpoint(shapes, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    seen_steps = []

    def on_event(e):
        if e["type"] == "step":
            seen_steps.append((e["epoch"], e["step"]))
            if e["epoch"] == 1 and e["step"] == 2:
                runs.request_cancel(run)  # what the UI or the job manager does

    with load_dataset(shapes) as ds:
        result = train(ds, tiny(epochs=5), run, on_event=on_event)
    assert result["cancelled"]
    assert seen_steps[-1] == (1, 2), "no step runs after the cancel was seen"
    status = runs.read_status(run)
    assert status["state"] == "cancelled" and "best checkpoint (epoch 1) kept" in status["message"]
    assert (run / "model.safetensors").exists()


def test_nan_loss_fails_clearly_and_keeps_the_earlier_checkpoint(shapes, tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_after_epoch_1(module, args, output):
        calls["n"] += module.training
        return output * float("nan") if module.training and calls["n"] > 5 else output

    on_new_models(monkeypatch, lambda model: model.register_forward_hook(nan_after_epoch_1))
    run = tmp_path / "run"
    run.mkdir()
    with load_dataset(shapes) as ds, pytest.raises(TrainError, match=r"loss became nan at epoch 2.*Lower the learning"):
        train(ds, tiny(epochs=3), run)
    status = runs.read_status(run)
    assert status["state"] == "failed" and "diverged" in status["message"]
    assert (run / "model.safetensors").exists() and runs.read_json(run / "config.json")["num_classes"] == 3


def test_out_of_memory_retries_with_half_the_batch(shapes, tmp_path, monkeypatch):
    def oom_on_big_batches(module, args):
        if module.training and args[0].shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    on_new_models(monkeypatch, lambda model: model.register_forward_pre_hook(oom_on_big_batches))
    with load_dataset(shapes) as ds:
        metrics = train(ds, tiny(batch_size=8), tmp_path)
    assert metrics["epochs_run"] == 2
    saved = runs.load_resume_state(tmp_path)["config"]
    assert (saved["batch_size"], saved["grad_accum"]) == (4, 2)


def test_dataset_that_cannot_train_fails_the_run(tmp_path, shapes):
    with load_dataset(shapes / "circle") as ds, pytest.raises(TrainError, match="cannot be trained on"):
        train(ds, tiny(), tmp_path)
    assert runs.read_status(tmp_path)["state"] == "failed"


@pytest.fixture(scope="module")
def split_shapes(tmp_path_factory):
    """Shapes in train/val/test folders: validation chooses, the test split estimates."""
    root = tmp_path_factory.mktemp("split") / "d"
    for split, n, seed in (("train", 10, 1), ("val", 4, 2), ("test", 5, 3)):
        make_shapes_dataset(root / split, per_class=n, size=32, seed=seed)
    return root


def test_early_stopping(split_shapes, tmp_path):
    with load_dataset(split_shapes) as ds:
        m = train(ds, tiny(epochs=30, early_stopping=2, lr=1e-10, min_lr=0.0, warmup_epochs=0), tmp_path)
    assert m["stopped_early"] and m["epochs_run"] == 3, "frozen weights: epoch 1 is best, 2 and 3 are not better"
    assert "stopped early" in runs.read_status(tmp_path)["message"]
    assert m["selection"] == {"val_acc": m["history"][0]["val_acc"], "epoch": 1, "epochs": 3, "images": 12}


def test_with_few_validation_images_nothing_is_chosen_the_last_epoch_is_kept(shapes, tmp_path, monkeypatch):
    """Under HOLDOUT_MIN validation images and no test split, no epoch is picked on them (the last one is kept,
    early stopping is off), so they can estimate the accuracy."""
    saved = []
    monkeypatch.setattr(runs, "save_model", lambda run_dir, *a, _real=runs.save_model, **k: saved.append(1)
                        or _real(run_dir, *a, **k))
    with load_dataset(shapes) as ds:
        assert 0 < len(ds.val) < metrics.HOLDOUT_MIN and not ds.test
        m = train(ds, tiny(epochs=3, early_stopping=1, lr=1e-10, min_lr=0.0, warmup_epochs=0), tmp_path)
        val = sorted(ds.val)
    assert not m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 3 and len(saved) == 3
    assert m["selection"] is None
    estimate = m["accuracy_estimate"]
    assert estimate["from"] == "unselected" and estimate["images"] == len(val) == len(m["predictions"])
    assert estimate["value"] == pytest.approx(m["val_acc"])
    assert "nothing chosen" in runs.read_status(tmp_path)["message"]


def test_half_of_a_large_validation_split_chooses_the_other_half_estimates(shapes, tmp_path, monkeypatch):
    """With HOLDOUT_MIN validation images (lowered here) and no test split, each epoch is validated on one
    stratified half, and the accuracy estimate is measured on the other half alone, on the delivered model."""
    from vit.train import engine
    monkeypatch.setattr(metrics, "HOLDOUT_MIN", 4)
    evaluated, real_evaluate = [], engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda model, images, *a, **k: evaluated.append(
        sorted(images.indices)) or real_evaluate(model, images, *a, **k))
    with load_dataset(shapes) as ds:
        split = metrics.holdout(ds, seed=0)
        assert split == metrics.holdout(ds, seed=0) and split.source == "holdout"
        assert sorted(split.select + split.estimate) == sorted(ds.val) and not set(split.select) & set(split.estimate)
        for cls in ds.classes:  # stratified: each class is split in two halves (within one image)
            n_sel, n_est = (sum(ds.items[i].label == cls for i in part) for part in (split.select, split.estimate))
            assert abs(n_sel - n_est) <= 1
        m = train(ds, tiny(epochs=2), tmp_path)
        names = {ds.items[i].name for i in split.estimate}
    assert evaluated[:2] == [sorted(split.select)] * 2, "each epoch is validated on the choosing half"
    assert m["selection"]["images"] == len(split.select)
    on_estimate = [p for p in m["predictions"] if p["name"] in names]
    right = sum(p["true"] == p["predicted"] for p in on_estimate)
    estimate = m["accuracy_estimate"]
    assert estimate["from"] == "holdout" and estimate["images"] == len(names) and estimate["correct"] == right
    assert (estimate["low"], estimate["high"]) == pytest.approx(metrics.wilson(right, len(names)), abs=1e-4)


@pytest.mark.parametrize("correct, n, low, high", [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775),
                                                   (10, 10, 0.7225, 1.0), (77, 100, 0.6784, 0.8416)])
def test_the_wilson_interval_matches_the_textbook(correct, n, low, high):
    assert metrics.wilson(correct, n) == pytest.approx((low, high), abs=1e-4)


@pytest.fixture(scope="module")
def recorded_run(shapes, tmp_path_factory):
    """A run with EMA, mixup and cutmix, accumulation, gradient checkpointing and RandAugment, and what happened
    inside it: the model's first weights, each training batch before and after mixing and the targets, the
    batches the model received, how often its first block's attention ran, and what was saved as the best
    weights."""
    from timm.data import Mixup
    cfg = tiny(ema_decay=0.9, mixup=0.8, cutmix=1.0, grad_accum=2, grad_checkpointing=True, randaugment=True)
    seen = SimpleNamespace(models=[], initial={}, inputs=[], attention_calls=0, mixed=[], saved=[], steps=[])

    def watch(model):
        seen.models.append(model)
        seen.initial = {k: v.clone() for k, v in model.state_dict().items()}
        model.register_forward_pre_hook(lambda m, args: seen.inputs.append(args[0].clone()) if m.training else None)

        def count(m, args, out):
            seen.attention_calls += m.training
        model.blocks[0].attn.register_forward_hook(count)

    real_mix, real_save = Mixup.__call__, runs.save_model

    def mix(self, x, y):
        before = x.clone()
        x, target = real_mix(self, x, y)
        seen.mixed.append(SimpleNamespace(before=before, labels=y.clone(), after=x.clone(), target=target.clone()))
        return x, target

    def save(run_dir, model, *args, **kwargs):
        seen.saved.append({"saved": {k: v.clone() for k, v in model.state_dict().items()},
                           "raw": {k: v.clone() for k, v in seen.models[0].state_dict().items()}})
        return real_save(run_dir, model, *args, **kwargs)

    seen.config, seen.run_dir = cfg, tmp_path_factory.mktemp("recorded") / "run"
    with pytest.MonkeyPatch.context() as mp:
        on_new_models(mp, watch)
        mp.setattr(Mixup, "__call__", mix)
        mp.setattr(runs, "save_model", save)
        with load_dataset(shapes) as ds:
            seen.metrics = train(ds, cfg, seen.run_dir,
                                 on_event=lambda e: seen.steps.append(e["epoch"]) if e["type"] == "step" else None)
    return seen


def test_ema_mixup_accumulation_and_checkpointing_run(recorded_run):
    m = recorded_run.metrics
    assert m["epochs_run"] == 2 and 0.0 <= m["val_acc"] <= 1.0


def test_mixup_and_cutmix_train_on_blended_images_and_targets(recorded_run):
    """Every training batch is mixed (timm's Mixup, batch mode, each image with its mirror in the batch): a blend
    lam a + (1 - lam) b, or a box of b pasted into a; the targets are mixed in the same proportion, with label
    smoothing, and the model receives the mixed batch."""
    smoothing, classes = recorded_run.config.label_smoothing, 3
    kinds = []
    assert len(recorded_run.mixed) == len(recorded_run.inputs) > 0
    for batch, received in zip(recorded_run.mixed, recorded_run.inputs):
        a, b, out = batch.before, batch.before.flip(0), batch.after
        assert torch.equal(received, out)
        from_b = ((out - b).abs() < 1e-6) & ((out - a).abs() > 1e-6)
        if from_b.any() and (((out - a).abs() < 1e-6) | from_b).all():  # cutmix: a box of b, the rest a
            rows, cols = from_b.any(dim=(0, 1, 3)).nonzero(), from_b.any(dim=(0, 1, 2)).nonzero()
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert from_b.any(dim=(0, 1)).sum() == box  # one rectangle
            lam, kind = 1 - float(box) / (a.shape[-2] * a.shape[-1]), "cutmix"
        else:  # mixup: one blend for the whole batch
            lam = float(((out - b) * (a - b)).sum() / ((a - b) ** 2).sum())
            assert torch.allclose(out, lam * a + (1 - lam) * b, atol=1e-4)
            kind = "mixup"
        assert 0 < lam < 1, (kind, lam)
        kinds.append(kind)
        off = smoothing / classes
        hot = torch.nn.functional.one_hot(batch.labels, classes).float() * (1 - smoothing) + off
        assert torch.allclose(batch.target, lam * hot + (1 - lam) * hot.flip(0), atol=1e-5)
    assert set(kinds) == {"mixup", "cutmix"}, kinds


def test_gradient_checkpointing_recomputes_the_blocks_in_the_backward_pass(recorded_run):
    assert recorded_run.attention_calls == 2 * len(recorded_run.inputs)  # forward, and again for the gradients


def test_accumulation_makes_one_update_every_two_steps(recorded_run):
    import math
    per_epoch = [recorded_run.steps.count(e) for e in sorted(set(recorded_run.steps))]
    assert len(per_epoch) == 2 and min(per_epoch) >= 3
    saved = runs.load_resume_state(recorded_run.run_dir)
    assert saved["update"] == sum(math.ceil(n / 2) for n in per_epoch)  # the last, odd step updates too


def test_ema_weights_are_what_is_validated_and_saved(recorded_run):
    """The weights saved at each best epoch are the moving average: neither the weights being trained nor the
    first ones; the file holds the last of them."""
    assert recorded_run.saved
    for record in recorded_run.saved:
        for name in ("blocks.0.attn.qkv.weight", "head.weight"):
            saved = record["saved"][name]
            assert not torch.allclose(saved, record["raw"][name]), name
            assert not torch.allclose(saved, recorded_run.initial[name]), name
    on_disk = load_file(recorded_run.run_dir / runs.WEIGHTS)
    assert all(torch.equal(on_disk[k], v) for k, v in recorded_run.saved[-1]["saved"].items())


# ---------------------------------------------------------------- models


def test_offline_pretrained_download_fails_clearly_and_fast():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as err:
        create_model(ModelSpec("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=True), 3)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in msg and "HF_HUB_OFFLINE" in msg
    assert "--weights" in msg and "--no-pretrained" in msg


def test_training_never_falls_back_to_random_init_silently(shapes, tmp_path):
    with load_dataset(shapes) as ds, pytest.raises(TrainError, match="Could not load pretrained weights"):
        train(ds, tiny(pretrained=True, model="vit_tiny_patch16_224.augreg_in21k_ft_in1k"), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_unknown_model_name_is_explained():
    with pytest.raises(ModelError, match=r"timm does not know the model 'vit_tinny_patch16_224'.*vit_tiny_patch16_224"):
        create_model(ModelSpec("vit_tinny_patch16_224", pretrained=False), 3)


def test_local_weights_file_new_head_and_other_image_size(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000,
                               depth=2, embed_dim=64, num_heads=2)
    weights = tmp_path / "w.safetensors"
    save_file(source.state_dict(), weights)
    model = create_model(ModelSpec("vit_tiny_patch16_224", weights=str(weights), img_size=64,
                                   model_args={"depth": 2, "embed_dim": 64, "num_heads": 2}), 5)
    assert model.head.out_features == 5
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert model.pos_embed.shape[1] == 1 + (64 // 16) ** 2, "position embeddings resampled from 14x14 to 4x4"
    with pytest.raises(ModelError, match="does not exist"):
        create_model(ModelSpec("vit_tiny_patch16_224", weights=str(tmp_path / "nope.safetensors")), 2)
    with pytest.raises(ModelError, match="no config.json"):
        create_model(ModelSpec("vit_tiny_patch16_224", weights=str(tmp_path)), 2)


def test_continue_fine_tuning_from_an_earlier_run(shapes, tmp_path):
    with load_dataset(shapes) as ds:
        train(ds, tiny(), tmp_path / "first")
        m = create_model(ModelSpec("ignored", weights=str(tmp_path / "first")), 3)
        saved = load_file(tmp_path / "first" / "model.safetensors")
        assert torch.equal(m.head.weight, saved["head.weight"]), "same classes: the trained head is kept"
        second = train(ds, tiny(weights=str(tmp_path / "first")), tmp_path / "second")
    assert second["epochs_run"] == 2


def test_attention_can_be_unfused():
    m = create_model(ModelSpec("vit_tiny_patch16_224", pretrained=False, img_size=32,
                               model_args={"depth": 2}), 2)
    assert models.set_fused_attention(m, False) == 2
    assert all(not b.attn.fused_attn for b in m.blocks)


def test_catalog_models_exist_with_their_stated_sizes():
    assert any("reg" in e.name for e in CATALOG) and any("dinov2" in e.name for e in CATALOG)
    assert any("distilled" in e.name for e in CATALOG)
    for entry in CATALOG:
        models.check_model_name(entry.name)
        with torch.device("meta"):
            m = timm.create_model(entry.name, pretrained=False, num_classes=1000, img_size=entry.img_size)
        assert models.count_parameters(m) / 1e6 == pytest.approx(entry.params_m, rel=0.05), entry.name
        assert entry.device in ("CPU", "GPU") and entry.note


# ---------------------------------------------------------------- CLI


def test_cli_train_and_resume(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(shapes), "--model", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32",
            "--patch-size", "8", "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
            "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--out", str(out)]
    assert cli.main(args) == 0
    assert runs.read_status(out)["state"] == "completed"
    assert cli.main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    log, weights = runs.read_metrics_log(out), (out / runs.WEIGHTS).read_bytes()
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0, "a finished run resumes to the same end"
    assert runs.read_metrics_log(out) == log, "no epoch was trained again (each row keeps its own times)"
    assert (out / runs.WEIGHTS).read_bytes() == weights
    assert cli.main(["train", "--data", str(tmp_path / "nope"), "--no-pretrained"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(shapes / "circle"), "--no-pretrained", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot be trained on" in err and "data check" in err
    assert not (tmp_path / "x").exists(), "no run directory for data that cannot train"


def test_cli_train_pretrained_offline_exits_2_with_the_fix(shapes, tmp_path, capsys):
    assert cli.main(["train", "--data", str(shapes), "--out", str(tmp_path / "r"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Could not load pretrained weights" in err and "--no-pretrained" in err


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(shapes, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vit", "train", "--data", str(shapes), "--model", "vit_tiny_patch16_224", "--no-pretrained",
           "--img-size", "32", "--patch-size", "8", "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
           "--model-arg", "num_heads=2", "--epochs", "2", "--batch-size", "4", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, so that on a timeout torchrun's worker processes are killed with it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 180 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("run directory:") == 2, "only rank 0 prints (start and end)"
    assert runs.read_status(out)["state"] == "completed"
    log = runs.read_metrics_log(out)
    assert [r["epoch"] for r in log] == [1, 2]
    assert timm.create_model(f"local-dir:{out}", pretrained=True).num_classes == 3


def test_the_model_is_named_for_what_was_built_and_its_weights(shapes, tmp_path):
    """config.json records the architecture as built (width, depth, heads, patch, image size, parameters) and
    what its weights are; a model from scratch carries no pretrained weights' tag; the card and the plan line
    say the same."""
    from vit import hub, ui
    with load_dataset(shapes) as ds:
        train(ds, tiny(epochs=1), tmp_path / "run")
        facts = ui.dataset_view.recipe.DataFacts.of(ds)
    config = runs.read_config(tmp_path / "run")
    built = config[runs.CONFIG_KEY]["built"]
    model = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True)
    assert built == {"architecture": "vit_tiny_patch16_224", "family": "ViT", "kind": "ViT", "width": 32, "depth": 1,
                     "heads": 2, "patch": 8, "img_size": 32, "class_token": True,
                     "params": models.count_parameters(model), "weights": "from scratch"}
    assert "tag" not in config["pretrained_cfg"], "no pretrained weights were loaded: no weights' tag"
    text = models.built_text(built)
    assert text == f"ViT 32 wide, 1 block, patch 8, 32 px, {built['params'] / 1e6:.2f}M parameters, from scratch"
    card = hub.model_card(tmp_path / "run", "alice/x").text
    assert "ViT 32 wide, 1 block, patch 8, 32 px" in card and "augreg" not in card
    assert f"| model | `{text}` |" in card and "| pretrained weights |" not in card
    plan = ui.describe_config(tiny(epochs=1), facts.classes)
    assert plan.startswith(text), plan  # the plan, before Start, names the same model
    pretrained = models.planned(models.ModelSpec("vit_small_patch16_224.augreg_in21k_ft_in1k"), 3)
    assert models.built_text(pretrained).endswith("21.67M parameters, pretrained augreg_in21k_ft_in1k")


def test_a_test_split_is_evaluated_once_and_reported_apart(split_shapes, tmp_path, monkeypatch):
    from vit import hub
    from vit.train import engine
    evaluated, real_evaluate = [], engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda model, images, *a, **k: evaluated.append(
        sorted(images.indices)) or real_evaluate(model, images, *a, **k))
    with load_dataset(split_shapes) as ds:
        assert len(ds.test) == 15
        m = train(ds, tiny(), tmp_path / "run")
        test_split, val_split = sorted(ds.test), sorted(ds.val)
    assert evaluated.count(test_split) == 1, "the test images are measured once, on the chosen model"
    assert evaluated.count(val_split) == 2 + 1 and len(evaluated) == 4  # each epoch, then the best weights
    assert m["test"]["images"] == 15 and 0.0 <= m["test"]["acc"] <= 1.0
    assert sum(v["support"] for v in m["test"]["per_class"].values()) == 15
    assert sum(v["support"] for v in m["per_class"].values()) == 12  # validation stays validation
    estimate = m["accuracy_estimate"]
    assert estimate["from"] == "test" and estimate["images"] == 15 and estimate["value"] == m["test"]["acc"]
    assert "on 15 test images" in runs.read_status(tmp_path / "run")["message"]
    card = hub.model_card(tmp_path / "run", "alice/x").text
    assert f"**{m['test']['acc']:.1%}** (95% interval" in card and "15 test images" in card


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_batched_colour_jitter_is_pils_colour_jitter_in_one_product(order):
    """The batch's colour jitter (one 3x3 matrix and offset per image) against PIL's ImageEnhance steps, which
    torchvision's ColorJitter applies: the same image, to within PIL's rounding down after each of the three
    steps (mid-range pixels, so nothing is clipped)."""
    import numpy as np
    import torchvision.transforms.functional as F
    from PIL import Image

    from vit.train.transforms import GREY, jitter_affine
    pixels = np.random.default_rng(0).integers(80, 170, (20, 24, 3), dtype=np.uint8)
    factors = [1.2, 0.7, 1.3]  # brightness, contrast, saturation
    expected = Image.fromarray(pixels)
    for op in order:
        expected = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation][op](expected, factors[op])
    x = torch.from_numpy(pixels).permute(2, 0, 1).reshape(3, -1).float()
    a, o = jitter_affine(float(x.mean(1) @ torch.tensor(GREY)), factors, order)
    got = (a @ x + o[:, None]).clamp(0, 255).reshape(3, 20, 24).permute(1, 2, 0).numpy()
    assert np.abs(got - np.asarray(expected).astype(float)).max() <= 3.5
    assert np.abs(got - pixels).max() > 20  # it did change the image


def test_the_training_batch_gets_torchvisions_colour_jitter_image_by_image_then_the_models_normalisation():
    """BatchAugment itself, against torchvision's ColorJitter ops (PIL's ImageEnhance) applied to each image with
    the factors and order it drew: the same pixels, to within PIL's rounding after each step."""
    import numpy as np
    import torchvision.transforms.functional as F
    from PIL import Image

    from vit.train.transforms import BatchAugment
    dcfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    mean, std = (torch.tensor(dcfg[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    pixels = np.random.default_rng(0).integers(90, 160, (6, 3, 20, 24), dtype=np.uint8)  # nothing clips
    augment = BatchAugment(tiny(color_jitter=0.2), dcfg, torch.device("cpu"))
    got = augment(torch.from_numpy(pixels), 3, 5) * std + mean
    factors, orders = augment.draw(6, 3, 5)
    assert ((factors >= 0.8) & (factors <= 1.2)).all() and len({tuple(o) for o in orders}) > 1
    assert len({tuple(f) for f in factors.tolist()}) == 6  # each image its own factors
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for i in range(6):
        expected = Image.fromarray(pixels[i].transpose(1, 2, 0))
        for op in orders[i]:
            expected = ops[op](expected, float(factors[i, op]))
        expected = torch.from_numpy(np.asarray(expected).transpose(2, 0, 1).astype(np.float32))
        assert (got[i] - expected).abs().max() <= 3.5, i
    assert (got - torch.from_numpy(pixels).float()).abs().max() > 20  # it did change the images
    # the same (epoch, step) draws the same jitter (a resumed run sees the same batches); another step another
    assert torch.equal(augment(torch.from_numpy(pixels), 3, 5), augment(torch.from_numpy(pixels), 3, 5))
    assert not torch.equal(augment.draw(6, 3, 6)[0], factors)
    # under RandAugment there is no colour jitter (as in timm): the model's normalisation alone
    plain = BatchAugment(tiny(randaugment=True), dcfg, torch.device("cpu"))(torch.from_numpy(pixels), 3, 5)
    assert torch.allclose(plain, (torch.from_numpy(pixels).float() - mean) / std)


def test_imbalanced_classes_weigh_the_loss_or_the_sampling_and_balanced_metrics_are_reported(tmp_path, monkeypatch):
    """A 4:1 dataset: "weights" weighs the loss by inverse class frequency (soft targets under mixup alike),
    "sampling" (what auto chooses) draws the small class as often as the others, "off" neither; the metrics carry
    balanced accuracy and macro F1."""
    from collections import Counter

    from vit.train import engine
    data = make_shapes_dataset(tmp_path / "d", per_class=20, size=32)
    for f in sorted((data / "circle").iterdir())[5:]:
        f.unlink()
    seen = {}

    def capture(run, epoch, stop):
        seen.update(criterion=run.criterion, sampler=run.loader.sampler, labels=[run.labels[i] for i in
                                                                                    run.train_set.indices])
        return None  # (cancelled: nothing to train here)
    monkeypatch.setattr(engine, "train_one_epoch", capture)
    with load_dataset(data) as ds:
        circle = ds.classes.index("circle")
        for mode, mixup in (("weights", 0.0), ("weights", 0.2), ("auto", 0.0), ("off", 0.0)):
            train(ds, tiny(class_balance=mode, mixup=mixup), tmp_path / f"{mode}-{mixup}")
            counts = Counter(seen["labels"])
            weight = getattr(seen["criterion"], "weight", None)
            if mode == "weights":
                assert weight[circle] == pytest.approx(weight.max()) and float(weight[circle] / weight.min()) == \
                    pytest.approx(max(counts.values()) / counts[circle])
                assert isinstance(seen["criterion"], engine.WeightedSoftTargetCrossEntropy) == (mixup > 0)
            else:
                assert weight is None
            drawn = Counter(seen["labels"][k] for k, _, _ in seen["sampler"])
            if mode == "auto":  # (recipe.BALANCE_BY)
                assert drawn[circle] > 2 * counts[circle], "the small class is drawn about as often as the others"
            else:
                assert drawn == counts
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([3.0, 1.0, 0.5])
    soft = engine.WeightedSoftTargetCrossEntropy(w)(logits, torch.nn.functional.one_hot(target, 3).float())
    assert float(soft) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target, weight=w)), rel=1e-5)
    m = metrics.final_metrics([(0, 0, 0, 0.9, 0.9), (1, 1, 0, 0.6, 0.4), (2, 1, 1, 0.8, 0.8), (3, 0, 0, 0.7, 0.7)],
                              type("D", (), {"items": [type("I", (), {"name": str(i)}) for i in range(4)],
                                             "train": [], "classes": ["a", "b"]})(), ["a", "b"],
                              {"epoch": 1, "val_loss": 0.0}, [], False)
    assert m["balanced_acc"] == pytest.approx(0.75) and m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2, abs=1e-4)


def test_evaluate_builds_no_graph_and_names_its_result():
    import contextlib

    from vit.train import TrainConfig
    from vit.train.engine import Evaluation, evaluate

    seen = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return super().forward(x)

    images = [(torch.randn(4), i % 2) for i in range(6)]
    result = evaluate(Probe(4, 2), images, TrainConfig(batch_size=2), torch.device("cpu"), contextlib.nullcontext)
    assert isinstance(result, Evaluation) and 0.0 <= result.accuracy <= 1.0 and result.logits is None
    assert seen and not any(seen), "validation ran with autograd on: every batch kept its graph"
