"""The app keeps its state (issue 13, "losing state"), in a real browser: a reload finds the dataset and the
settings; the live view stays on the training run when another is queued; the Classify and Share pickers
follow a run that has just finished. Screenshots: tests/e2e/artifacts/state-*.png."""
import re

from playwright.sync_api import expect

from helpers import ARTIFACTS, visible_text, use_sample_data

MODEL_PICKER = "Model: a finished run, or type hf-hub:user/repo"



def test_a_reload_finds_the_dataset_and_the_settings(page, app_url):
    page.goto(app_url)
    use_sample_data(page)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs", exact=True).fill("7")
    page.get_by_label("Learning rate (head)").fill("0.002")
    page.get_by_label("Learning rate (head)").press("Tab")
    visible_text(page, "lr 0.002", timeout=60_000)  # (the plan follows each keystroke: a busy queue is slow)
    page.wait_for_timeout(1000)  # (the settings are saved as they change)

    page.reload()
    visible_text(page, "Ready to train: 60 images in 3 classes")  # the Data tab's report is back
    page.get_by_role("tab", name="Train").click()
    visible_text(page, "Dataset: sample shapes (20 per class)")
    assert page.get_by_label("Epochs", exact=True).input_value() == "7"
    assert page.get_by_label("Learning rate (head)").input_value() == "0.002"
    visible_text(page, "7 epochs")  # the "will train" line follows the restored settings
    page.screenshot(path=str(ARTIFACTS / "state-after-reload.png"), full_page=True)


def test_the_live_view_stays_on_the_training_run_and_pickers_follow_a_finished_one(page, app_url, app_manager):
    page.goto(app_url)
    use_sample_data(page)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs", exact=True).fill("100")
    page.get_by_label("Run name (optional)").fill("long run")
    page.get_by_role("button", name="Start training").click()
    visible_text(page, re.compile(r"Epoch \d+/100"), timeout=60_000)  # it trains
    page.get_by_label("Epochs", exact=True).fill("1")
    page.get_by_label("Run name (optional)").fill("quick run")
    page.get_by_role("button", name="Start training").click()
    visible_text(page, re.compile(r"quick run.* is (queued|running)"))  # started...
    # ...and the runs table has been refreshed since (it lists the new run): the view did not jump to it
    page.locator("#runs-table").get_by_text("quick run", exact=True).filter(visible=True).first.wait_for()
    picker = page.get_by_label("Run", exact=True).first
    assert picker.input_value().startswith("long run"), picker.input_value()
    page.screenshot(path=str(ARTIFACTS / "state-queued.png"), full_page=True)

    page.get_by_role("button", name="Cancel").click()  # the long run stops; the quick one trains
    long_id = next(r["id"] for r in app_manager.list() if r["name"] == "long run")
    quick_id = next(r["id"] for r in app_manager.list() if r["name"] == "quick run")
    assert app_manager.wait(long_id, 60) == "cancelled"
    assert app_manager.wait(quick_id, 120) == "completed"
    page.get_by_role("tab", name="Classify").click()
    expect(page.get_by_label(MODEL_PICKER), "Classify did not follow").to_have_value(re.compile("^quick run"))
    page.get_by_role("tab", name="Share").click()
    expect(page.get_by_label("Run", exact=True).last, "Share did not follow").to_have_value(re.compile("^quick run"))
    page.screenshot(path=str(ARTIFACTS / "state-followed.png"), full_page=True)
