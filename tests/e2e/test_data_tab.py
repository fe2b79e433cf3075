"""The Data tab in a real browser: upload a zip, read the health report."""
from helpers import ARTIFACTS, class_members, write_zip


def test_upload_zip_shows_health_report(page, app_url, tmp_path):
    members = class_members(("cat", "dog", "fox"), n=5)
    members["cat/broken.jpg"] = b"not an image"
    z = write_zip(tmp_path / "pets.zip", members)
    page.goto(app_url)
    page.get_by_text("Dataset (.zip of class folders)").wait_for()
    page.locator("input[type=file]").first.set_input_files(str(z))
    page.get_by_text("Ready to train: 15 images in 3 classes").wait_for()
    page.get_by_text("cat/broken.jpg: corrupt or unreadable image").wait_for()
    page.screenshot(path=str(ARTIFACTS / "data-tab.png"), full_page=True)


def test_sample_dataset_button(page, app_url):
    page.goto(app_url)
    page.get_by_role("button", name="Use the sample dataset (generated shapes)").click()
    from vit.ui import SAMPLE_PER_CLASS
    page.get_by_text(f"Ready to train: {3 * SAMPLE_PER_CLASS} images in 3 classes").wait_for()
