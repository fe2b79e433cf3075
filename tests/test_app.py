"""The app's named API endpoints, called with gradio_client against the app launched in the test."""
import pytest
from gradio_client import Client, handle_file

from helpers import class_members, image_bytes, write_zip
from vit import ui


@pytest.fixture(scope="module")
def app_url():
    app = ui.build_app()
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    yield url
    app.close()


def test_check_dataset_endpoint_reports_a_zip(app_url, tmp_path):
    z = write_zip(tmp_path / "pets.zip", class_members(n=6))
    report, counts, grid = Client(app_url, verbose=False).predict(handle_file(str(z)), api_name="/check_dataset")
    assert report.startswith("### Ready to train: 12 images in 2 classes")
    assert "| cat | 6 |" in report
    assert len(grid) == 8  # 4 thumbnails per class


def test_check_dataset_endpoint_explains_a_bad_zip(app_url, tmp_path):
    z = write_zip(tmp_path / "one.zip", {"only/1.png": image_bytes(seed=1), "only/2.png": image_bytes(seed=2)})
    report, _, _ = Client(app_url, verbose=False).predict(handle_file(str(z)), api_name="/check_dataset")
    assert "Cannot train yet" in report and "Only one class found ('only')" in report


def test_check_dataset_endpoint_refuses_a_hostile_zip_and_keeps_serving(app_url, tmp_path):
    import zipfile
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.bmp", b"\0" * (20 * 1024 * 1024))
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="zip bomb"):
        client.predict(handle_file(str(z)), api_name="/check_dataset")
    report, _, _ = client.predict(30, api_name="/sample_dataset")
    assert report.startswith("### Ready to train: 90 images in 3 classes")
