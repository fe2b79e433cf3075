"""The training engine, the model factory and the run directory."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from vit import cli, models, runs
from vit.data import load_dataset
from vit.models import CATALOG, ModelError, ModelSpec, create_model
from vit.samples import make_shapes_dataset
from vit.train import TrainError, train

from helpers import TINY, tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "d", per_class=12, size=32)


# ---------------------------------------------------------------- the engine learns


def test_small_vit_from_scratch_learns_shapes(trained_shapes):
    """Proof that the engine learns: >= 90% on circles/squares/triangles, from scratch, on CPU."""
    metrics = runs.read_json(trained_shapes / runs.METRICS)
    assert metrics["val_acc"] >= 0.90, metrics["history"]
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
         "data_report.json"])
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


def test_resume_gives_the_same_result_as_an_uninterrupted_run(shapes, tmp_path):
    with load_dataset(shapes) as ds:
        straight = train(ds, tiny(epochs=4), tmp_path / "a")
    steps = {"n": 0}

    def stop_during_epoch_3():
        steps["n"] += 1
        return steps["n"] > 2 * 5 + 2  # 5 steps per epoch: stop 2 steps into epoch 3

    with load_dataset(shapes) as ds:
        first = train(ds, tiny(epochs=4), tmp_path / "b", should_stop=stop_during_epoch_3)
        assert first["cancelled"] and runs.read_status(tmp_path / "b")["state"] == "cancelled"
        resumed = train(ds, None, tmp_path / "b", resume=True)
    assert [r["epoch"] for r in runs.read_metrics_log(tmp_path / "b")] == [1, 2, 3, 4]
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert resumed["val_acc"] == straight["val_acc"]
    assert runs.read_status(tmp_path / "b")["state"] == "completed"


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
    import vit.train.prepare as setup  # where every run creates its model
    real_create = setup.create_model
    calls = {"n": 0}

    def create_with_nan_after_epoch_1(spec, num_classes):
        model = real_create(spec, num_classes)

        def hook(module, args, output):
            calls["n"] += module.training
            return output * float("nan") if module.training and calls["n"] > 5 else output
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(setup, "create_model", create_with_nan_after_epoch_1)
    run = tmp_path / "run"
    run.mkdir()
    with load_dataset(shapes) as ds, pytest.raises(TrainError, match=r"loss became nan at epoch 2.*Lower the learning"):
        train(ds, tiny(epochs=3), run)
    status = runs.read_status(run)
    assert status["state"] == "failed" and "diverged" in status["message"]
    assert (run / "model.safetensors").exists() and runs.read_json(run / "config.json")["num_classes"] == 3


def test_out_of_memory_retries_with_half_the_batch(shapes, tmp_path, monkeypatch):
    import vit.train.prepare as setup  # where every run creates its model
    real_create = setup.create_model

    def create_that_ooms_on_big_batches(spec, num_classes):
        model = real_create(spec, num_classes)

        def hook(module, args):
            if module.training and args[0].shape[0] > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(setup, "create_model", create_that_ooms_on_big_batches)
    with load_dataset(shapes) as ds:
        metrics = train(ds, tiny(batch_size=8), tmp_path)
    assert metrics["epochs_run"] == 2
    saved = runs.load_resume_state(tmp_path)["config"]
    assert (saved["batch_size"], saved["grad_accum"]) == (4, 2)


def test_dataset_that_cannot_train_fails_the_run(tmp_path, shapes):
    with load_dataset(shapes / "circle") as ds, pytest.raises(TrainError, match="cannot be trained on"):
        train(ds, tiny(), tmp_path)
    assert runs.read_status(tmp_path)["state"] == "failed"


def test_early_stopping(shapes, tmp_path):
    with load_dataset(shapes) as ds:
        m = train(ds, tiny(epochs=30, early_stopping=2, lr=1e-10, min_lr=0.0, warmup_epochs=0), tmp_path)
    assert m["stopped_early"] and m["epochs_run"] == 3, "frozen weights: epoch 1 is best, 2 and 3 are not better"
    assert "stopped early" in runs.read_status(tmp_path)["message"]


def test_ema_mixup_accumulation_and_checkpointing_run(shapes, tmp_path):
    cfg = tiny(ema_decay=0.9, mixup=0.8, cutmix=1.0, grad_accum=2, grad_checkpointing=True, randaugment=True)
    with load_dataset(shapes) as ds:
        m = train(ds, cfg, tmp_path)
    assert m["epochs_run"] == 2 and 0.0 <= m["val_acc"] <= 1.0


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
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0, "a finished run resumes to the same end"
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


def test_a_test_split_is_evaluated_once_and_reported_apart(tmp_path):
    from vit import hub
    for split, n, seed in (("train", 10, 1), ("val", 4, 2), ("test", 5, 3)):
        make_shapes_dataset(tmp_path / "d" / split, per_class=n, size=32, seed=seed)
    with load_dataset(tmp_path / "d") as ds:
        assert len(ds.test) == 15
        m = train(ds, tiny(), tmp_path / "run")
    assert m["test"]["images"] == 15 and 0.0 <= m["test"]["acc"] <= 1.0
    assert sum(v["support"] for v in m["test"]["per_class"].values()) == 15
    assert sum(v["support"] for v in m["per_class"].values()) == 12  # validation stays validation
    assert "held-out images" in runs.read_status(tmp_path / "run")["message"]
    card = hub.model_card(tmp_path / "run", "alice/x").text
    assert f"Test accuracy **{m['test']['acc']:.1%}** on 15 held-out test images" in card


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
