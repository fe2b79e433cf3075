"""Every number shown is the number delivered (issue 22), in a real browser: the Train tab's headline is the
accuracy on images that chose nothing, with its interval and where it comes from; the runs table, Compare and
the pickers name the model as built; a reload keeps the models picked in Classify and Share; the start message
goes once its run has ended; the form and the plan agree; Quick model says why it is off; a new image clears
Classify's last result; the Data tab says what works offline. Screenshots: tests/e2e/artifacts/delivered-*.png."""
import re

from playwright.sync_api import expect

from helpers import ARTIFACTS, image_bytes, tiny, use_sample_data, visible_text
from vit import runs

MODEL_PICKER = "Model: a finished run, or type hf-hub:user/repo"


def _pick(page, label, value):
    box = page.get_by_label(label, exact=True).last
    box.click()
    box.fill(value)
    page.keyboard.press("Enter")


def test_the_headline_the_table_and_compare_say_the_estimate_and_the_model_as_built(page, app_url, app_manager,
                                                                                    tmp_path):
    from vit.samples import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32)
    older = app_manager.submit(data, tiny(), name="older run", source_name="shapes.zip")
    assert app_manager.wait(older, 120) == "completed"
    newer = app_manager.submit(data, tiny(seed=1), name="newer run", source_name="shapes.zip")
    assert app_manager.wait(newer, 120) == "completed"
    estimate = runs.read_json(app_manager.root / older / runs.METRICS)["accuracy_estimate"]
    page.goto(app_url)
    page.get_by_role("tab", name="Train").click()
    _pick(page, "Run", older)
    visible_text(page, f"Accuracy {estimate['value']:.1%} (95% interval {estimate['low']:.1%}-{estimate['high']:.1%}) "
                       f"on {estimate['images']} validation images, nothing chosen on them")
    visible_text(page, "expect about this on new images like yours")
    table = page.locator("#runs-table")
    table.get_by_text(re.compile(r"^ViT 32 wide, 1 block, patch 8, 32 px")).filter(visible=True).first.wait_for()
    page.get_by_text("Compare finished runs").click()
    visible_text(page, "6 validation images, nothing chosen on them")
    page.screenshot(path=str(ARTIFACTS / "delivered-train.png"), full_page=True)

    # Classify and Share follow the newest run; the visitor picks the older one in each, then reloads
    page.get_by_role("tab", name="Classify").click()
    expect(page.get_by_label(MODEL_PICKER)).to_have_value(re.compile("^newer run · ViT 32 wide"))
    _pick(page, MODEL_PICKER, older)
    page.get_by_role("tab", name="Share").click()
    _pick(page, "Run", older)
    page.wait_for_timeout(1500)  # (the choice is saved as it is made)
    page.reload()
    page.get_by_role("tab", name="Classify").click()
    expect(page.get_by_label(MODEL_PICKER), "the reload lost Classify's model").to_have_value(
        re.compile("^older run · "))
    page.get_by_role("tab", name="Share").click()
    expect(page.get_by_label("Run", exact=True).last, "the reload lost Share's run").to_have_value(
        re.compile("^older run · "))

    # a new image clears the last one's result, before Classify is pressed again
    photo, other = tmp_path / "a.png", tmp_path / "b.png"
    photo.write_bytes(image_bytes(seed=5, size=(64, 48)))
    other.write_bytes(image_bytes(seed=6, size=(64, 48)))
    page.get_by_role("tab", name="Classify").click()
    image = page.locator("input[type=file][accept='image/*']:not([multiple])").first
    image.set_input_files(str(photo))
    page.get_by_role("button", name="Classify", exact=True).click()
    visible_text(page, "for class")
    image.set_input_files(str(other))
    expect(page.get_by_text("for class").filter(visible=True), "the last image's map stayed").to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "delivered-classify-cleared.png"), full_page=True)


def test_the_form_the_plan_and_quick_model_agree_and_the_start_message_goes(page, app_url, app_manager, tmp_path):
    from vit.samples import make_shapes_dataset
    weights = app_manager.submit(make_shapes_dataset(tmp_path / "s", per_class=12, size=32), tiny(),
                                 name="my weights")
    assert app_manager.wait(weights, 120) == "completed"
    page.goto(app_url)
    use_sample_data(page)
    visible_text(page, "Offline here:")  # the Data tab says what works offline, before any training
    visible_text(page, "From scratch suits images like these")
    page.get_by_role("tab", name="Train").click()
    scratch = page.get_by_label("From scratch (no download; settings chosen for your data)")
    quick = page.get_by_role("button", name="Quick model (seconds)")
    expect(scratch).to_be_checked()  # (offline here)
    expect(quick).to_be_disabled()
    visible_text(page, "Quick model is off: it fits a head on the features of trained weights")
    visible_text(page, re.compile(r"Will train:\*\* ?ViT 96 wide|Will train: ViT 96 wide"))
    scratch.uncheck()  # a pretrained catalog model, offline: still off, and why
    visible_text(page, "the pretrained weights cannot be downloaded here (offline)")
    expect(quick).to_be_disabled()
    scratch.check()
    page.get_by_label("Model (or type any timm name: a ViT, or a CNN to teach one)").click()
    page.get_by_role("option", name=re.compile("Start from your run: my weights")).click()
    expect(scratch, "a run to start from has weights: From scratch goes off").not_to_be_checked()
    visible_text(page, "the model of your run")
    expect(quick).to_be_enabled()
    page.screenshot(path=str(ARTIFACTS / "delivered-form.png"), full_page=True)

    page.get_by_label("Epochs", exact=True).fill("1")
    page.get_by_role("button", name="Start training").click()
    message = page.get_by_text(re.compile(r"\) is (queued|running):")).filter(visible=True)
    expect(message).to_have_count(1)
    started = next(r["id"] for r in app_manager.list() if r["name"] != "my weights")
    assert app_manager.wait(started, 120) == "completed"
    expect(message, "the start message stayed after its run ended").to_have_count(0, timeout=15_000)
