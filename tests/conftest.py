"""Shared test setup: no test may wait on the network; the app, served with a job manager of its own."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture
def workspace_root(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture(scope="module")
def app_manager(tmp_path_factory):
    """The job manager of the app under test, on a checkpoints folder of its own."""
    from vit.jobs import JobManager
    m = JobManager(tmp_path_factory.mktemp("app") / "checkpoints", gpus=0)
    yield m
    m.shutdown(grace_s=2)


@pytest.fixture(scope="module")
def app_url(app_manager):
    """The app, launched in this process; its URL."""
    from vit.ui import CSS, THEME, build_app
    app = build_app(app_manager)
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, theme=THEME, css=CSS)
    yield url
    app.close()
