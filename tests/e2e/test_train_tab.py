"""The Train tab in a real browser: start a run on the sample data, watch it finish, survive a reload."""
from helpers import ARTIFACTS


def test_train_on_sample_data_and_watch_it_complete(page, app_url, app_manager):
    manager = app_manager
    page.goto(app_url)
    page.get_by_role("slider", name="Images per class (sample data)").fill("20")
    page.get_by_role("button", name="Use the sample dataset (generated shapes)").click()
    page.get_by_text("Ready to train: 60 images in 3 classes").wait_for()
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("Dataset: sample shapes (20 per class): 60 images in 3 classes").wait_for()
    page.get_by_label("From scratch (no download; small 64-pixel inputs)").check()
    page.get_by_role("slider", name="Epochs").fill("3")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("is queued").or_(page.get_by_text("is running")).first.wait_for()
    run_id = manager.list()[0]["id"]
    # closing the tab and coming back: the run is still listed and still reported
    page.reload()
    page.get_by_role("tab", name="Train").click()
    try:
        page.get_by_text(run_id).filter(visible=True).first.wait_for()
        page.get_by_text("Finished: best validation accuracy").filter(visible=True).first.wait_for(timeout=120_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "train-tab.png"), full_page=True)
    assert manager.progress(run_id)["state"] == "completed"
    page.get_by_text("Accuracy", exact=True).filter(visible=True).first.wait_for()  # the curves' plot
