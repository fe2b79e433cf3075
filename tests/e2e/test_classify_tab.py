"""The Classify tab in a real browser: a finished run, an image, the prediction and its heatmap."""
from helpers import ARTIFACTS, image_bytes, tiny
from vit.samples import make_shapes_dataset


def test_classify_an_image_with_a_heatmap(page, app_url, app_manager, tmp_path):
    run_id = app_manager.submit(make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32), tiny())
    assert app_manager.wait(run_id, 120) == "completed"
    img = tmp_path / "photo.png"
    img.write_bytes(image_bytes(seed=4, size=(160, 120)))
    page.goto(app_url)
    page.get_by_role("tab", name="Classify").click()
    page.get_by_label("Model: a finished run, or type hf-hub:user/repo").fill(run_id)
    page.keyboard.press("Enter")
    page.locator("input[type=file]").last.set_input_files(str(img))
    page.get_by_text("Raw attention (last layer)").click()
    page.get_by_role("button", name="Classify", exact=True).click()
    try:
        page.get_by_text("for class").filter(visible=True).first.wait_for()
        page.get_by_text("head 1").filter(visible=True).first.wait_for()
    finally:
        page.screenshot(path=str(ARTIFACTS / "classify-tab.png"), full_page=True)
