"""Shared test setup: no test may wait on the network; the app, served with a job manager of its own; the tiers.

Tiers (pytest.ini names the markers): `browser` is every test under tests/e2e (marked here); `slow` is a test that
trains for more than a few seconds, starts training processes or launches the app (marked where it is written, or
here for the fixtures that cost that much). `make test-fast` runs neither, in about a minute. Under CI=true a
browser test that skips is a failure: CI must never go green without having driven the app in Chromium.
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402  (every tier imports it; its threads as it starts are what each test gets)

TORCH_THREADS = torch.get_num_threads()

E2E = Path(__file__).parent / "e2e"
SLOW_FIXTURES = {"trained_shapes", "app_url", "app_manager", "shared", "shared_url"}  # a minute, or the app


def pytest_collection_modifyitems(items):
    for item in items:
        if E2E in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and item.get_closest_marker("browser") and os.environ.get("CI", "").lower() in ("true", "1"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true, and this browser test skipped: {reason}. CI must drive the app in Chromium."
    return report


@pytest.fixture(autouse=True)
def _torch_threads_as_found():
    """A test that sets torch's CPU threads (a config's `threads`, a classification's share) leaves them as torch
    first had them: a later test in the same process trains with the threads it would have alone, and so learns
    the same weights (`tests/mutants.py` runs many selections in one process, where the label review's ranking
    moved)."""
    yield
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


@pytest.fixture
def workspace_root(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory):
    """A run directory: a ViT trained from scratch on 200 sample shapes per class (96 px, as the app's sample
    data) with what the recipe chooses for them, as the app and the CLI train by default (about 45 s)."""
    from vit.data import load_dataset
    from vit.samples import make_shapes_dataset
    from vit.train import TrainConfig, recipe, train
    from vit.train.recipe import DataFacts
    tmp = tmp_path_factory.mktemp("trained")
    data = make_shapes_dataset(tmp / "shapes", per_class=200, seed=1)
    with load_dataset(data) as ds:
        config = recipe.choose(TrainConfig(pretrained=False), DataFacts.of(ds))
        train(ds, config, tmp / "run")
    return tmp / "run"


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
    from vit.ui import build_app, launch_options
    app = build_app(app_manager)
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True,
                                **launch_options())
    yield url
    app.close()
