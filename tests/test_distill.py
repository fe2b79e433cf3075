"""Distillation from a teacher and CNNs as runs (issue 26): the loss, the teacher's checks, a CNN trained from
scratch and explained with Grad-CAM, the app's teacher picker and the one-click student."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vit import explain, runs
from vit.data import load_dataset
from vit.models import ModelError, ModelSpec, architecture, create_model
from vit.samples import make_shapes_dataset
from vit.train import TrainConfig, TrainError, recipe, train
from vit.train.recipe import DataFacts
from vit.train.teacher import Teacher, class_order, distillation_loss

from helpers import tiny

CNN = "resnet10t"  # (4.9M parameters: a CNN small enough for a test)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "d", per_class=8, size=32)


@pytest.fixture(scope="module")
def teacher_run(shapes, tmp_path_factory):
    """A tiny ViT trained on the shapes, to teach."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    with load_dataset(shapes) as ds:
        train(ds, tiny(epochs=1), out)
    return out


# ---------------------------------------------------------------- the loss


def test_hard_distillation_is_half_the_labels_half_the_teachers_top_class():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    base = torch.nn.functional.cross_entropy(student, labels)
    agrees = torch.tensor([[5.0, 0.0, 0.0], [0.0, 3.0, 1.0]])    # the teacher's top classes are the labels
    disagrees = torch.tensor([[0.0, 0.0, 9.0], [0.0, 1.0, 4.0]])  # ... are class 2 for both
    loss = distillation_loss(base, student, agrees, "hard")
    assert loss.item() == pytest.approx(base.item())  # the same targets twice: the labels' loss itself
    to_class_2 = torch.nn.functional.cross_entropy(student, torch.tensor([2, 2]))
    assert distillation_loss(base, student, disagrees, "hard").item() == pytest.approx(
        0.5 * base.item() + 0.5 * to_class_2.item())
    # only the teacher's top class counts, not how sure it is
    assert distillation_loss(base, student, disagrees * 10, "hard").item() == pytest.approx(
        distillation_loss(base, student, disagrees, "hard").item())


def test_soft_distillation_follows_the_teachers_probabilities_at_its_temperature():
    student = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    base = torch.tensor(1.0)
    same = distillation_loss(base, student, student.detach(), "soft", temperature=3.0)
    assert same.item() == pytest.approx(0.9)  # the teacher's own answer: nothing more to learn from it
    teacher = torch.tensor([[0.0, 0.0, 4.0]])
    t = 3.0
    kl = torch.nn.functional.kl_div(torch.log_softmax(student / t, 1), torch.softmax(teacher / t, 1),
                                    reduction="batchmean")
    loss = distillation_loss(base, student, teacher, "soft", temperature=t)
    assert loss.item() == pytest.approx(0.9 + 0.1 * kl.item() * t * t, rel=1e-5)
    loss.backward()
    assert student.grad[0, 2] < 0 < student.grad[0, 0]  # pulled toward the teacher's class, away from its own
    assert distillation_loss(base, student, teacher * 10, "soft").item() > loss.item()  # a surer teacher: more
    with pytest.raises(TrainError, match="hard or soft"):
        distillation_loss(base, student, teacher, "warm")


def test_the_teacher_sees_the_students_pixels_at_its_own_size_and_normalisation():
    class Means(torch.nn.Module):  # "logits": the input's size and its mean per channel
        def forward(self, x):
            self.seen = x.shape[-1]
            return x.mean((2, 3))

        def parameters(self, recurse=True):
            return iter([torch.zeros(1)])

    student_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 32, 32)}
    teacher_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (3, 64, 64)}
    pixels = torch.rand(2, 3, 32, 32)
    model = Means()
    t = Teacher(model, teacher_cfg, student_cfg, order=[2, 0, 1])
    out = t((pixels - 0.5) / 0.5)
    assert model.seen == 64
    mean, std = torch.tensor(teacher_cfg["mean"]), torch.tensor(teacher_cfg["std"])
    expected = (pixels.mean((2, 3)) - mean) / std
    assert torch.allclose(out, expected[:, [2, 0, 1]], atol=1e-4)  # re-normalised, resized, in the data's order
    t.train()
    assert not t.training and not t.model.training  # always in eval mode


# ---------------------------------------------------------------- the teacher's checks


def test_the_recipe_distils_hard_when_fine_tuning_and_soft_from_scratch():
    facts = DataFacts(240, 10, 32)
    scratch = recipe.choose(TrainConfig(pretrained=False, teacher="t"), facts)
    assert scratch.distill == "soft" and any(line.startswith("Soft distillation: from random weights")
                                             for line in scratch.recipe)
    tuned = recipe.choose(TrainConfig(teacher="t"), facts)
    assert tuned.distill == "hard" and any(line.startswith("Hard distillation (DeiT's)") for line in tuned.recipe)
    assert recipe.choose(TrainConfig(pretrained=False, teacher="t", distill="hard"), facts).distill == "hard"
    assert recipe.choose(TrainConfig(pretrained=False), facts).distill == "auto"  # no teacher: nothing said


def test_a_teacher_of_other_classes_is_refused_naming_the_difference(shapes, teacher_run, tmp_path):
    assert class_order(["b", "a", "c"], ["a", "b", "c"]) == [1, 0, 2]  # the same classes in another order: fine
    other = tmp_path / "other"
    config = runs.read_config(teacher_run)
    other.mkdir()
    (other / runs.WEIGHTS).write_bytes((teacher_run / runs.WEIGHTS).read_bytes())
    (other / runs.CONFIG).write_text(json.dumps({**config, "label_names": ["circle", "square", "star"]}))
    with load_dataset(shapes) as ds, pytest.raises(TrainError) as e:
        train(ds, tiny(epochs=1, teacher=str(other)), tmp_path / "student")
    said = str(e.value)
    assert "the dataset has 'triangle', which the teacher does not know" in said
    assert "the teacher answers 'star', which the dataset does not have" in said
    assert runs.read_status(tmp_path / "student")["state"] == "failed"


def test_a_teacher_that_trained_on_the_students_validation_images_is_refused(shapes, teacher_run, tmp_path):
    with load_dataset(shapes, seed=1) as ds, pytest.raises(TrainError, match=r"trained on \d+ of this run's "
                                                                             r"validation or test images.*seed 0"):
        train(ds, tiny(epochs=1, seed=1, teacher=str(teacher_run)), tmp_path / "student")


def test_a_distilled_run_records_its_teacher_and_resumes(shapes, teacher_run, tmp_path):
    steps = {"n": 0}

    def stop_in_epoch_2():
        steps["n"] += 1
        return steps["n"] > 4

    with load_dataset(shapes) as ds:
        first = train(ds, tiny(epochs=2, teacher=str(teacher_run), distill="soft"), tmp_path / "s",
                      should_stop=stop_in_epoch_2)
        assert first["cancelled"]
        done = train(ds, None, tmp_path / "s", resume=True)
    assert not done.get("cancelled")
    record = runs.read_config(tmp_path / "s")[runs.CONFIG_KEY]
    info = record["teacher_info"]
    assert info["source"] == teacher_run.name and info["images"] > 0 and 0 <= info["val_acc"] <= 1
    assert "ViT 32 wide" in info["model"] and record["distill"] == "soft"
    assert any(line.startswith("Teacher: run (ViT") and "soft distillation" in line for line in record["recipe"])
    assert runs.public_record(record)["teacher"] == "run"  # the folder's name, not the machine's path
    from vit.hub.card import model_card
    text = model_card(tmp_path / "s", "me/student").text
    assert "distilled (DeiT, soft) from the teacher `run`" in text and f"{info['val_acc']:.1%}" in text


def test_a_student_with_a_distillation_token_learns_the_teacher_from_it(shapes, teacher_run, tmp_path, monkeypatch):
    from timm.models.deit import VisionTransformerDistilled
    heads = []  # in training, the two heads apart: the class token's (the labels) and the distillation token's
    real = VisionTransformerDistilled.forward_head
    monkeypatch.setattr(VisionTransformerDistilled, "forward_head",
                        lambda self, x, pre_logits=False: heads.append(out := real(self, x, pre_logits)) or out)
    config = tiny(model="deit_tiny_distilled_patch16_224", epochs=1, teacher=str(teacher_run))
    with load_dataset(shapes) as ds:
        train(ds, config, tmp_path / "deit")
    assert any(isinstance(out, tuple) and len(out) == 2 and out[1].shape[-1] == 3 for out in heads)
    model = timm.create_model(f"local-dir:{tmp_path / 'deit'}", pretrained=True).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)  # stock timm: the two heads averaged


# ---------------------------------------------------------------- CNNs


def test_the_from_scratch_recipe_gives_a_cnn_what_suits_it():
    assert architecture(CNN).kind == "CNN" and architecture("vit_tiny_patch16_224").vit
    config = recipe.choose(TrainConfig(model=CNN, pretrained=False), DataFacts(400, 10, 32, grayscale=True))
    assert config.img_size == 64 and config.patch_size is None and config.model_args == {}
    assert not config.progressive and config.crop_padding == 8
    text = "\n".join(config.recipe)
    assert "a CNN reduces its input 32x" in text and "resnet10t as timm builds it" in text
    assert "resize the shorter side to 64 px" in text and "96 wide" not in text
    with pytest.raises(ModelError, match="A patch size applies to a ViT; resnet10t is a CNN"):
        create_model(ModelSpec(CNN, pretrained=False, patch_size=8), 2)


@pytest.mark.slow
def test_a_cnn_trains_from_scratch_saves_in_timms_format_and_classifies_with_gradcam(shapes, tmp_path):
    from vit import cli, predict
    out = tmp_path / "cnn"
    assert cli.main(["train", "--data", str(shapes), "--model", CNN, "--no-pretrained", "--epochs", "1",
                     "--out", str(out)]) == 0
    config = json.loads((out / runs.CONFIG).read_text())
    assert config["architecture"] == CNN and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    model = timm.create_model(f"local-dir:{out}", pretrained=True)  # stock timm, no code of ours
    assert model.num_classes == 3 and type(model).__name__ == "ResNet"
    loaded = predict.load_model(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    done = predict.classify_and_explain(loaded, image, "gradcam")
    assert done.explanation.heatmap.shape == (2, 2) and math.isclose(float(done.answer.probs.sum()), 1, rel_tol=1e-4)
    assert "last stage" in done.explanation.notes[0]
    for method in ("chefer", "rollout", "attention"):
        with pytest.raises(explain.ExplainError, match=f"reads a ViT's attention, and {CNN} is a CNN"):
            predict.classify_and_explain(loaded, image, method)
    # the app's Classify tab: its default method, on a CNN, says why and shows Grad-CAM
    from vit.jobs import JobManager
    from vit.ui.classify_tab import classify_image
    root = tmp_path / "checkpoints"
    root.mkdir()
    run_id = _finished_copy(out, root, "alice-token-000000")
    photo = tmp_path / "photo.png"
    image.save(photo)
    with JobManager(root, single_user=False, gpus=0) as manager:
        shown = classify_image(manager, run_id, str(photo), "chefer", 0.5, None, owner="alice-token-000000")
    assert "Gradient-weighted attention needs a ViT's attention, and resnet10t is a CNN" in shown.notes
    assert "**Grad-CAM**" in shown.notes and sum(shown.probs.values()) == pytest.approx(1, rel=1e-4)


def test_gradcam_on_a_cnn_points_at_what_raises_the_class():
    """A CNN whose class 1 is "bright right half": its Grad-CAM for class 1 lights the right half, for class 0 the
    left."""
    torch.manual_seed(0)
    model = timm.create_model(CNN, num_classes=2, pretrained=False).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    x = torch.full((1, 3, 128, 128), -3.0)  # dark left half, bright right half
    x[..., 64:] = 3.0
    features = model.forward_features(x).detach()[0]  # which channels each half excites
    left, right = (torch.nn.functional.normalize(features[..., cols].mean((1, 2)), dim=0)
                   for cols in (slice(0, 2), slice(2, 4)))
    with torch.no_grad():
        model.fc.weight[1] = right - left  # class 1: "the bright right half"
        model.fc.weight[0] = left - right  # class 0: "the dark left half"
    e = explain.explain(model, x, "gradcam", target=1)
    assert e.heatmap.shape == (4, 4) and e.heatmap[:, 2:].mean() > e.heatmap[:, :2].mean()
    other = explain.explain(model, x, "gradcam", target=0).heatmap
    assert other[:, :2].mean() > other[:, 2:].mean()  # class-specific: the same image, the other half


# ---------------------------------------------------------------- the app


def test_the_teacher_picker_lists_only_the_visitors_own_finished_runs(shapes, teacher_run, tmp_path):
    from vit.jobs import JobManager
    from vit.ui.app import model_lists
    from vit.ui.train_tab import start_training
    from gradio import Error
    root = tmp_path / "checkpoints"
    root.mkdir()
    mine, theirs = (_finished_copy(teacher_run, root, who) for who in ("alice-token-000000", "bob-token-0000000"))
    unfinished = _finished_copy(teacher_run, root, "alice-token-000000", state="failed")
    manager = JobManager(root, single_user=False, gpus=0)
    try:
        *_, teachers = model_lists(manager, None, None, None, "alice-token-000000")
        values = [v for _, v in teachers.constructor_args["choices"]]
        assert values == ["none", f"run:{mine}"] and f"run:{unfinished}" not in values
        with load_dataset(shapes) as ds:
            dataset = {"path": str(shapes), "name": "shapes", "labels": ds.classes,
                       "facts": DataFacts.of(ds).to_dict()}
        with pytest.raises(Error, match="There is no run .* only the session that started a run can distil from"):
            start_training(manager, dataset, "vit_tiny_patch16_224", True, 1, 8, None, "alice-token-000000",
                           teacher=f"run:{theirs}")
        with pytest.raises(Error, match="Pick the teacher among your finished runs"):
            start_training(manager, dataset, "vit_tiny_patch16_224", True, 1, 8, None, "alice-token-000000",
                           teacher=str(teacher_run))
        other = {**dataset, "labels": ["cat", "dog", "square"]}
        with pytest.raises(Error, match="the dataset has 'cat', 'dog', which the teacher does not know"):
            start_training(manager, other, "vit_tiny_patch16_224", True, 1, 8, None, "alice-token-000000",
                           teacher=f"run:{mine}")
    finally:
        manager.shutdown()


def _finished_copy(run: Path, root: Path, owner: str, state: str = "completed") -> str:
    """A copy of a run as one of `owner`'s runs in the app, ended in `state`."""
    from vit.safety import owner_hash
    run_dir = runs.create_run_dir(root, "vit_tiny")
    for name in (runs.CONFIG, runs.WEIGHTS, runs.METRICS):
        shutil.copy(run / name, run_dir / name)
    runs.write_json(run_dir / runs.JOB, {"owner": owner_hash(owner), "config": {}, "name": run_dir.name})
    runs.update_status(run_dir, state)
    return run_dir.name


def test_a_student_is_smaller_than_its_teacher():
    vit = {"kind": "ViT", "width": 96, "depth": 6, "heads": 3, "params": 690_000}
    half = recipe.student("/t", {"built": vit, "seed": 3, "val_fraction": 0.25}, pretrained_ok=False)
    assert half.config.model_args["embed_dim"] == 48 and half.config.model_args["depth"] == 4
    assert half.config.teacher == "/t" and half.config.seed == 3 and half.config.val_fraction == 0.25
    cnn = recipe.student("/t", {"built": {"kind": "CNN", "params": 11_000_000}}, pretrained_ok=False)
    assert not cnn.config.pretrained and "from-scratch recipe" in cnn.why
    small = recipe.student("/t", {"built": {"kind": "ViT", "width": 192, "depth": 12, "heads": 3,
                                            "params": 22_000_000}, "pretrained": True}, pretrained_ok=True)
    assert small.config.model == recipe.STUDENT_PRETRAINED and small.config.pretrained
    with pytest.raises(TrainError, match="already as small"):
        recipe.student("/t", {"built": {"kind": "ViT", "width": 32, "depth": 1, "heads": 2, "params": 20_000}},
                       pretrained_ok=False)


def test_catalog_teachers_are_cnns_of_their_stated_sizes():
    from vit.models import TEACHERS, count_parameters
    for entry in TEACHERS:
        assert architecture(entry.name).kind == "CNN", entry.name
        with torch.device("meta"):
            m = timm.create_model(entry.name, pretrained=False, num_classes=1000)
        assert count_parameters(m) / 1e6 == pytest.approx(entry.params_m, rel=0.05) and entry.device in ("CPU", "GPU")


def test_a_cnn_trains_with_progressive_resizing_in_steps_of_its_reduction():
    from vit.train.transforms import patch_size_of
    assert patch_size_of(timm.create_model(CNN, num_classes=2)) == 32

