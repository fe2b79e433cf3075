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
