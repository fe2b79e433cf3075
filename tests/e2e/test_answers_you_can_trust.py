"""Answers you can trust (issue 23), in a real browser: a blank image and noise are "Not sure", with the closest
class and the heatmap still drawn; a shape is answered; the run's results show the calibration, its reliability
diagram and the "none of these" check. Screenshots: tests/e2e/artifacts/trust-*.png."""
import random
import shutil

import numpy as np
from PIL import Image

from helpers import ARTIFACTS, visible_text
from vit import samples

MODEL_PICKER = "Model: a finished run, or type hf-hub:user/repo"
NOT_SURE = "Not sure: this does not look like your training images"


def classify(page, path):
    """A new image, then Classify, once the new image has cleared the last one's verdict (its change event: a
    click before it would classify the old image)."""
    page.locator("input[type=file][accept='image/*']:not([multiple])").first.set_input_files(str(path))
    page.wait_for_function("() => !['does not look like your training', 'Looks like your training'].some("
                           "t => document.body.innerText.includes(t))")
    page.get_by_role("button", name="Classify", exact=True).click()


def test_blank_and_noise_are_not_sure_a_shape_is_answered_and_the_results_show_the_calibration(
        page, app_url, app_manager, trained_shapes, tmp_path):
    run_id = "20261201-000000-shapes-trust"
    shutil.copytree(trained_shapes, app_manager.root / run_id)
    blank, noise, shape = tmp_path / "blank.png", tmp_path / "noise.png", tmp_path / "triangle.png"
    Image.new("RGB", (320, 240), "white").save(blank)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(noise)
    samples.draw_shape("triangle", 160, random.Random(11)).save(shape)

    page.goto(app_url)
    page.get_by_role("tab", name="Classify").click()
    page.get_by_label(MODEL_PICKER, exact=True).last.fill(run_id)
    page.keyboard.press("Enter")
    classify(page, blank)
    visible_text(page, NOT_SURE, timeout=90_000)  # (the app's first model: torch and timm load with it)
    visible_text(page, "for class")  # the heatmap is still drawn, and explained
    page.screenshot(path=str(ARTIFACTS / "trust-blank.png"), full_page=True)

    classify(page, shape)
    visible_text(page, "Looks like your training images")
    assert page.get_by_text(NOT_SURE).filter(visible=True).count() == 0, "the last image's verdict is gone"
    page.screenshot(path=str(ARTIFACTS / "trust-shape.png"), full_page=True)
    classify(page, noise)
    visible_text(page, NOT_SURE)

    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Run", exact=True).fill(run_id)
    page.keyboard.press("Enter")
    visible_text(page, "Probabilities calibrated (temperature")
    visible_text(page, "'Not sure' is said of images unlike the training images")
    visible_text(page, "Reliability diagram: in each confidence bin")
    diagram = page.locator(".block", has_text="Reliability diagram: in each confidence bin").locator("img").first
    diagram.scroll_into_view_if_needed()
    diagram.wait_for(state="visible")
    page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=diagram.element_handle())
    page.screenshot(path=str(ARTIFACTS / "trust-results.png"), full_page=True)
