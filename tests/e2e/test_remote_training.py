"""Training on a Hugging Face GPU (issue 27) in a real browser, against the fake Hub (whose Jobs service runs each
job here as a subprocess): pick the GPU, read the time and cost before Start, give the token, watch the job's
epochs arrive, and classify with the model it sent back. Screenshots: tests/e2e/artifacts/remote-*.png."""
import re

import pytest

from fake_hub import FakeHub
from helpers import ARTIFACTS, image_bytes, use_sample_data, visible_text

TOKEN = "hf_write_alice"
MODEL_PICKER = "Model: a finished run, or type hf-hub:user/repo"


@pytest.fixture
def fake_hub(monkeypatch):
    h = FakeHub()
    h.as_the_hub(monkeypatch)  # the app's Hub
    monkeypatch.setenv("VIT_JOB_POLL_S", "0.5")
    monkeypatch.setenv("VIT_JOB_IMAGE", "vit-studio:test")
    monkeypatch.delenv("SPACE_ID", raising=False)
    yield h
    h.close()


def test_train_on_a_hugging_face_gpu_watch_the_job_and_classify_with_its_model(page, app_url, app_manager, fake_hub,
                                                                               tmp_path):
    page.goto(app_url)
    use_sample_data(page, per_class=10)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs").fill("3")
    page.get_by_label("a Hugging Face GPU").check()
    gpu = page.get_by_label("GPU (price per hour)")
    gpu.click()
    page.get_by_role("option", name="Nvidia A10G - large: $1.50/hour").click()  # the Hub's list and prices
    visible_text(page, re.compile(r"On Hugging Face: on Nvidia A10G - large about \d+ min \(training \d+ (s|min), "
                                  r"starting and pushing 5 min\), about \$0\.\d\d at \$1\.50/hour"))
    visible_text(page, "Your images go to a private dataset repo of yours")
    page.screenshot(path=str(ARTIFACTS / "remote-plan.png"), full_page=True)
    page.get_by_role("button", name="Start training").click()
    visible_text(page, "needs your token")  # none given yet: nothing starts
    assert not fake_hub.jobs and not fake_hub.repos
    page.get_by_label(re.compile("Hugging Face token that can write repos")).fill(TOKEN)
    page.get_by_role("button", name="Start training").click()
    visible_text(page, re.compile(r"\) is running"))
    run_id = app_manager.list()[0]["id"]
    # live, from the job's log (three tiny epochs can end between two polls of the page: then the end is shown)
    visible_text(page, re.compile(r"Epoch [123]/3: val acc|Trained on Hugging Face"), timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "remote-live.png"), full_page=True)
    visible_text(page, "Trained on Hugging Face a10g-large", timeout=120_000)
    assert app_manager.progress(run_id)["state"] == "completed"
    page.screenshot(path=str(ARTIFACTS / "remote-done.png"), full_page=True)

    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(seed=5, size=(96, 96)))
    page.get_by_role("tab", name="Classify").click()
    page.get_by_label(MODEL_PICKER, exact=True).last.click()
    page.get_by_role("option", name=re.compile(re.escape(app_manager.summary(run_id)["name"]))).click()
    page.locator("input[type=file][accept='image/*']:not([multiple])").first.set_input_files(str(photo))
    page.get_by_role("button", name="Classify", exact=True).click()
    visible_text(page, re.compile(r"(circle|square|triangle)"), timeout=90_000)
    page.screenshot(path=str(ARTIFACTS / "remote-classify.png"), full_page=True)
    assert TOKEN not in page.content()
