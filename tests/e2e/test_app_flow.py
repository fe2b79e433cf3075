"""The whole app in a real browser: sample data -> train a small model -> classify with a heatmap -> push to a
(local, fake) Hub. A screenshot of each tab goes to tests/e2e/artifacts/, and the app is checked on a phone-sized
screen."""
import re

import pytest

from fake_hub import FakeHub
from helpers import ARTIFACTS, visible_text, use_sample_data

TOKEN = "hf_write_alice"


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants
    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


def test_sample_data_train_classify_and_share(page, app_url, app_manager, fake_hub):
    page.goto(app_url)
    # Data
    use_sample_data(page)
    page.screenshot(path=str(ARTIFACTS / "tab-data.png"), full_page=True)

    # Train: offline here, so the banner shows and "From scratch" is already on
    page.get_by_role("tab", name="Train").click()
    visible_text(page, "pretrained weights cannot be downloaded")
    assert page.get_by_label("From scratch (no download; settings chosen for your data)").is_checked()
    visible_text(page, "Chosen for your data")  # the recipe, before Start
    page.get_by_label("Epochs", exact=True).fill("3")
    page.get_by_role("button", name="Start training").click()
    # the start message says queued or, if the scheduler was quicker than the reply, running
    page.get_by_text(re.compile(r"is (queued|running):")).filter(visible=True).first.wait_for()
    run_id = app_manager.list()[0]["id"]
    page.reload()  # leaving and coming back: the run is still there, with its live view
    page.get_by_role("tab", name="Train").click()
    visible_text(page, run_id)
    visible_text(page, "Finished: accuracy", timeout=120_000)
    visible_text(page, "Per class (validation)")
    page.screenshot(path=str(ARTIFACTS / "tab-train.png"), full_page=True)

    # Classify: the finished run is picked for us; an example image; the heatmap appears
    page.get_by_role("tab", name="Classify").click()
    page.get_by_label("Model: a finished run, or type hf-hub:user/repo").fill(run_id)
    page.keyboard.press("Enter")
    page.locator(".gallery-item").filter(visible=True).first.click()  # the first example image
    page.get_by_role("button", name="Classify", exact=True).click()
    visible_text(page, "for class")
    page.screenshot(path=str(ARTIFACTS / "tab-classify.png"), full_page=True)

    # Share: preview the card, push to the fake Hub
    page.get_by_role("tab", name="Share").click()
    page.get_by_label("Run", exact=True).last.fill(run_id)
    page.keyboard.press("Enter")
    page.get_by_label("Repo (user/name, or just name)").fill("e2e-vit")
    page.get_by_role("button", name="Preview model card").click()
    visible_text(page, "Intended use and limitations")
    page.get_by_label("Hugging Face token with write access (used for this push only, never stored)").fill(TOKEN)
    page.get_by_role("button", name="Push to the Hub").click()
    visible_text(page, "Pushed")
    assert "model.safetensors" in fake_hub.repos["alice/e2e-vit"]["files"]
    assert TOKEN not in page.content()
    page.screenshot(path=str(ARTIFACTS / "tab-share.png"), full_page=True)


def test_usable_on_a_phone_screen(browser, app_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(app_url)
        page.get_by_role("button", name="Use the sample dataset (generated shapes)").wait_for()
        for tab in ("Data", "Train", "Classify", "Share"):
            page.get_by_role("tab", name=tab).click()
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"the {tab} tab is {overflow}px wider than the screen"
        page.get_by_role("tab", name="Train").click()
        page.screenshot(path=str(ARTIFACTS / "phone-train.png"), full_page=True)
    finally:
        context.close()
