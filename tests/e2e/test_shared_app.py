"""A shared app (a public Space) in a real browser: two visitors, runs stored outside the working and temp
dirs (as /data is on a Space). Alice trains, sees her results and classifies; Bob, in another browser, sees
none of it. Screenshots: tests/e2e/artifacts/shared-*.png."""
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import ARTIFACTS, visible_text, use_sample_data


@pytest.fixture(scope="module")
def shared_url():
    from vit.jobs import JobManager
    from vit.ui import build_app, launch_options
    outside = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path.home()
    store = Path(tempfile.mkdtemp(prefix="vit-e2e-shared-", dir=outside))
    manager = JobManager(store / "checkpoints", single_user=False, gpus=0)
    app = build_app(manager)
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_options())
    yield url
    app.close()
    manager.shutdown(grace_s=2)
    shutil.rmtree(store, ignore_errors=True)



def test_two_visitors_each_see_only_their_own_runs(browser, shared_url):
    alice = browser.new_context(viewport={"width": 1280, "height": 900})
    bob = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = alice.new_page()
        page.set_default_timeout(30_000)
        page.goto(shared_url)
        use_sample_data(page)
        run_id = _train(page, 2, "alices shapes")
        visible_text(page, "Finished: accuracy", timeout=120_000)
        visible_text(page, "Per class (validation)")
        page.screenshot(path=str(ARTIFACTS / "shared-alice-train.png"), full_page=True)

        page.get_by_role("tab", name="Classify").click()
        page.locator(".gallery-item").filter(visible=True).first.click()  # an example image
        page.get_by_role("button", name="Classify", exact=True).click()
        visible_text(page, "for class")
        page.screenshot(path=str(ARTIFACTS / "shared-alice-classify.png"), full_page=True)

        other = bob.new_page()
        other.set_default_timeout(30_000)
        other.goto(shared_url)
        use_sample_data(other)
        _train(other, 50, "bobs shapes")
        # Bob's runs table has been refreshed since his run began: it lists his run, and not Alice's
        other.locator("#runs-table").get_by_text("bobs shapes", exact=True).filter(visible=True).first.wait_for()
        assert "alices shapes" not in other.content() and run_id not in other.content()
        other.get_by_role("button", name="Cancel").click()  # (his run stops: it was only there to be listed)
        visible_text(other, re.compile("stops after the current step|before it started"))
        other.get_by_label("Run", exact=True).first.fill(run_id)  # typing Alice's id gets nothing
        other.keyboard.press("Enter")
        visible_text(other, "There is no run")
        assert "Finished: accuracy" not in other.content()
        other.screenshot(path=str(ARTIFACTS / "shared-bob-train.png"), full_page=True)
    finally:
        alice.close()
        bob.close()


def _train(page, epochs: int, name: str) -> str:
    """In the Train tab: start a run of `epochs` named `name` on the checked dataset; its id."""
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs", exact=True).fill(str(epochs))
    page.get_by_label("Run name (optional)").fill(name)
    page.get_by_role("button", name="Start training").click()
    return _started_run(page)


def _started_run(page) -> str:
    """The id of the run that Start training has just started, from the message that says so."""
    started = page.get_by_text(re.compile(r"\(\S+\) is (queued|running):")).filter(visible=True).first
    started.wait_for()
    return re.search(r"\((\S+)\) is", started.inner_text()).group(1)


def test_a_visitors_run_survives_a_restart_of_the_app(browser, tmp_path, monkeypatch):
    """A Space restarts on every wake-up: the browser's stored id must still be read, so that the run is listed
    and usable after a restart when the browser comes back (issue 24)."""
    from vit.jobs import JobManager
    from vit.ui import build_app, launch_options
    monkeypatch.delenv("VIT_SESSION_SECRET", raising=False)
    outside = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path.home()
    store = Path(tempfile.mkdtemp(prefix="vit-e2e-restart-", dir=outside))
    port = _free_port()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    manager = JobManager(store / "checkpoints", single_user=False, gpus=0)
    app = build_app(manager)
    try:
        app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"http://127.0.0.1:{port}/")
        use_sample_data(page)
        run_id = _train(page, 1, "before the restart")
        visible_text(page, "Finished: accuracy", timeout=120_000)
        app.close()
        manager.shutdown(grace_s=2)  # the Space goes to sleep ...

        manager = JobManager(store / "checkpoints", single_user=False, gpus=0)  # ... and wakes up
        app = build_app(manager)
        app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
        page.close()  # the browser comes back: a new page of the same browser (its local storage), not a reload,
        page = context.new_page()  # which could race the old page's own reconnection to the new server
        page.set_default_timeout(30_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("tab", name="Train").click()
        page.locator("#runs-table").get_by_text("before the restart", exact=True).filter(visible=True).first.wait_for()
        page.get_by_role("tab", name="Classify").click()  # and usable: it classifies
        page.locator(".gallery-item").filter(visible=True).first.click()
        page.get_by_role("button", name="Classify", exact=True).click()
        visible_text(page, "for class")
        assert run_id in page.locator("#runs-table").inner_text()
        page.screenshot(path=str(ARTIFACTS / "shared-after-restart.png"), full_page=True)
    finally:
        context.close()
        app.close()
        manager.shutdown(grace_s=2)
        shutil.rmtree(store, ignore_errors=True)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
