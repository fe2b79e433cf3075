"""Shared test setup: no test may wait on the network."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture
def workspace_root(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws
