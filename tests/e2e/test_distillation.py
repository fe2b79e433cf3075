"""Distillation and CNN runs (issue 26), in a real browser: pick one of your finished runs (a CNN trained from
scratch) as the Teacher, see the plan name it with its accuracy, train the student, distil a finished run into a
smaller model in one click, and classify with the CNN (Grad-CAM, and why not attention).
Screenshots: tests/e2e/artifacts/distil-*.png."""
import re

import pytest

from helpers import ARTIFACTS, image_bytes, use_sample_data, visible_text
from vit import runs
from vit.train import TrainConfig

MODEL_PICKER = "Model: a finished run, or type hf-hub:user/repo"


@pytest.fixture(scope="module")
def cnn_run(app_manager, tmp_path_factory):
    """A CNN trained from scratch on shapes of its own (another seed than the app's sample: no image in common)."""
    from vit.samples import make_shapes_dataset
    data = make_shapes_dataset(tmp_path_factory.mktemp("cnn") / "shapes", per_class=12, size=64, seed=7)
    run_id = app_manager.submit(data, TrainConfig(model="resnet10t", pretrained=False, img_size=64, epochs=1,
                                                  batch_size=8, lr=1e-3, early_stopping=None),
                                name="cnn teacher")
    assert app_manager.wait(run_id, 120) == "completed"
    return run_id


def test_a_cnn_teaches_a_vit_and_a_run_is_distilled_in_one_click(page, app_url, app_manager, cnn_run, tmp_path):
    page.goto(app_url)
    use_sample_data(page, per_class=10)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Teacher (distillation)").click()
    page.get_by_role("option", name=re.compile("cnn teacher · resnet10t")).click()
    visible_text(page, re.compile(r"Teacher: your run cnn teacher · resnet10t 64 px, 4\.\d+M parameters, from "
                                  r"scratch · \d+%"))
    visible_text(page, "soft distillation (from its probabilities at temperature 3, weight 0.1)")  # from scratch
    visible_text(page, "Soft distillation: from random weights on few images the teacher's probabilities teach more")
    page.screenshot(path=str(ARTIFACTS / "distil-plan.png"), full_page=True)
    page.get_by_role("button", name="Start training").click()
    visible_text(page, re.compile(r"\) is (queued|running)"))
    student = app_manager.list()[0]["id"]  # (newest first)
    assert app_manager.wait(student, 120) == "completed"
    record = runs.read_config(app_manager.root / student)[runs.CONFIG_KEY]
    assert record["teacher_info"]["source"] == cnn_run and record["teacher"].endswith(cnn_run)
    assert record["teacher_info"]["model"].startswith("resnet10t 64 px")

    visible_text(page, re.compile(r"completed\."))  # the picker is on the student: distil it further
    page.get_by_role("button", name="Distil into a smaller model").click()
    visible_text(page, re.compile(r"is queued: a smaller model, a ViT of half the teacher's width and fewer blocks "
                                  r"\(48 wide, 4 blocks\) against the teacher's 96 wide, 6 blocks"))
    smaller = app_manager.list()[0]
    assert smaller["id"] != student and smaller["name"].endswith("(distilled)")
    page.screenshot(path=str(ARTIFACTS / "distil-one-click.png"), full_page=True)
    app_manager.cancel(smaller["id"])  # (its recipe trains for minutes)
    config = runs.read_json(app_manager.root / smaller["id"] / runs.JOB)["config"]
    assert config["teacher"].endswith(student) and config["model_args"]["embed_dim"] == 48

    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(seed=3, size=(64, 64)))
    page.get_by_role("tab", name="Classify").click()
    page.get_by_label(MODEL_PICKER, exact=True).last.click()
    page.get_by_role("option", name=re.compile("cnn teacher")).click()
    assert "cnn teacher" in page.get_by_label(MODEL_PICKER, exact=True).last.input_value()
    page.locator("input[type=file][accept='image/*']:not([multiple])").first.set_input_files(str(photo))
    page.get_by_role("button", name="Classify", exact=True).click()
    visible_text(page, "is a CNN, which has none: Grad-CAM on its last stage is shown instead", timeout=90_000)
    visible_text(page, "Grad-CAM on the CNN's last stage: a 2x2 map")
    page.screenshot(path=str(ARTIFACTS / "distil-classify-cnn.png"), full_page=True)
