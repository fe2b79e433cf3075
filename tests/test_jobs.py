"""Background jobs: queue, child processes, cancel, crashes, restarts, ownership."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vit import jobs, runs
from vit.data import load_dataset
from vit.jobs import JobError, JobManager
from vit.samples import make_shapes_dataset
from vit.train import train

from helpers import tiny, wait_for

ROOT = Path(__file__).resolve().parents[1]
LONG = dict(epochs=400)  # long enough to be caught running; every test that starts one stops it


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "d", per_class=12, size=32)


@pytest.fixture
def manager(tmp_path):
    managers = []

    def make(**kw):
        m = JobManager(tmp_path / "checkpoints", **{"gpus": 0, "cancel_grace_s": 20.0, **kw})
        managers.append(m)
        return m

    yield make
    pids = [c.proc.pid for m in managers for c in m.scheduler.children.values()]
    for m in managers:
        m.shutdown(grace_s=2.0)
    assert not [p for p in pids if _alive(p)], "a training process outlived its manager"


def epochs_done(m, run_id, n):
    return lambda: len(m.progress(run_id)["history"]) >= n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return runs._process_start(pid) != "zombie"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- submit, queue, progress


@pytest.mark.slow
def test_submit_returns_at_once_and_the_run_completes(manager, shapes):
    m = manager()
    run_id = m.submit(shapes, tiny())
    assert m.progress(run_id)["state"] in ("queued", "running")  # returned before training
    assert m.wait(run_id, 120) == "completed"
    run_dir = m.root / run_id
    p = m.progress(run_id)
    assert [r["epoch"] for r in p["history"]] == [1, 2]
    assert p["best_val_acc"] is not None and 0.0 <= p["best_val_acc"] <= 1.0 and p["has_model"]
    assert p["can_delete"] and not p["can_cancel"] and not p["can_resume"]
    # the run owns a copy of its data (the upload's temporary files may be gone by the time it trains)
    with load_dataset(run_dir / jobs.DATA_DIR) as copy, load_dataset(shapes) as original:
        assert copy.classes == original.classes
        assert sorted(copy.items[i].name for i in copy.val) == sorted(original.items[i].name for i in original.val)
    assert (run_dir / runs.WEIGHTS).is_file() and "completed" in (run_dir / jobs.LOG).read_text()
    status = runs.read_status(run_dir)
    assert status["pid"] != os.getpid()  # trained in a child process, not in this one


@pytest.mark.slow
def test_submissions_queue_and_run_one_at_a_time_in_order(manager, shapes):
    m = manager()
    first, second, third = (m.submit(shapes, tiny()) for _ in range(3))
    third_status = runs.read_status(m.root / third)
    assert third_status["state"] == "queued" and third_status["position"] >= 2
    assert "ahead" in third_status["message"]
    for run_id in (first, second, third):
        assert m.wait(run_id, 120) == "completed"
    spans = [(runs.read_status(m.root / r)["started_at"], runs.read_status(m.root / r)["finished_at"])
             for r in (first, second, third)]
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0], spans  # never two at once, in order
    assert [r["id"] for r in m.list()][:3] == [third, second, first]  # newest first


@pytest.mark.slow
def test_a_path_can_be_submitted_and_a_bad_dataset_is_refused_with_its_reason(manager, shapes, tmp_path):
    m = manager()
    one_class = tmp_path / "one"
    (one_class / "cat").mkdir(parents=True)
    for f in sorted((shapes / "circle").iterdir())[:5]:
        (one_class / "cat" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(JobError, match="cannot be trained on.*class"):
        m.submit(one_class, tiny())
    assert m.list() == []  # nothing half-made is left behind
    run_id = m.submit(shapes, tiny(epochs=1))
    assert m.wait(run_id, 120) == "completed"


# ---------------------------------------------------------------- cancel


@pytest.mark.slow
def test_cancel_mid_epoch_is_cooperative_and_keeps_the_best_checkpoint(manager, shapes):
    m = manager()
    run_id = m.submit(shapes, tiny(**LONG))
    wait_for(epochs_done(m, run_id, 2), what="two epochs")
    message = m.cancel(run_id)
    assert "stops after the current step" in message
    assert m.wait(run_id, 60) == "cancelled"
    status = runs.read_status(m.root / run_id)
    assert status["cancel"] == "cooperative"
    assert status["message"].startswith("Cancelled at epoch") and "best checkpoint" in status["message"]
    assert (m.root / run_id / runs.WEIGHTS).is_file() and not runs.cancel_requested(m.root / run_id)
    assert m.progress(run_id)["can_resume"]


@pytest.mark.slow
def test_cancel_stops_by_force_after_the_grace_period(manager, shapes):
    m = manager()
    run_id = m.submit(shapes, tiny(**LONG))
    wait_for(epochs_done(m, run_id, 1), what="an epoch")
    pid = m.child_pid(run_id)
    m.cancel(run_id, grace_s=0)
    assert m.wait(run_id, 60) == "cancelled"
    status = runs.read_status(m.root / run_id)
    assert status["cancel"] == "forced" and status["message"].startswith("Stopped by force")
    assert "saved" in status["message"] and not _group_alive(pid)
    assert not list((m.root / run_id).glob(".*.tmp"))


def test_a_queued_run_is_cancelled_at_once(manager, shapes):
    m = manager()
    running = m.submit(shapes, tiny(**LONG))
    queued = m.submit(shapes, tiny())
    assert "before it started" in m.cancel(queued)
    assert runs.read_status(m.root / queued)["state"] == "cancelled"
    with pytest.raises(JobError, match="only a queued or running run can be cancelled"):
        m.cancel(queued)
    m.cancel(running, grace_s=0)
    assert m.wait(running, 60) == "cancelled"


# ---------------------------------------------------------------- crashes, resume, restarts


@pytest.mark.slow
def test_a_killed_child_leaves_the_run_interrupted_and_it_resumes_to_completion(manager, shapes):
    m = manager()
    run_id = m.submit(shapes, tiny(epochs=40))
    wait_for(epochs_done(m, run_id, 3), what="three epochs")
    os.kill(m.child_pid(run_id), signal.SIGKILL)
    assert m.wait(run_id, 60) == "interrupted"
    status = runs.read_status(m.root / run_id)
    assert "SIGKILL" in status["message"] and "Resume" in status["message"]
    saved = runs.load_resume_state(m.root / run_id)
    assert saved is not None and saved["epoch"] >= 2  # the last finished epoch survived the kill
    assert f"resume from epoch {saved['epoch'] + 2}" in m.resume(run_id)
    assert m.wait(run_id, 180) == "completed"
    log = runs.read_metrics_log(m.root / run_id)
    assert [r["epoch"] for r in log] == list(range(1, 41))
    assert log[:saved["epoch"] + 1] == saved["history"], "the epochs before the kill were kept, not trained again"


@pytest.mark.slow
def test_a_diverging_run_fails_with_its_message(manager, shapes):
    m = manager()
    run_id = m.submit(shapes, tiny(model_args={**tiny().model_args, "init_values": 1e30}))  # LayerScale overflows
    assert m.wait(run_id, 120) == "failed"
    p = m.progress(run_id)
    assert "loss became nan" in p["message"] and "Lower the learning rate" in p["message"]


@pytest.mark.slow
def test_a_run_whose_data_copy_is_gone_fails_with_its_message(manager, shapes):
    m = manager()
    blocker = m.submit(shapes, tiny(**LONG))
    run_id = m.submit(shapes, tiny())
    import shutil
    shutil.rmtree(m.root / run_id / jobs.DATA_DIR)
    m.cancel(blocker, grace_s=0)
    assert m.wait(run_id, 120) == "failed"
    assert "copy of its data cannot be read" in m.progress(run_id)["message"]


@pytest.mark.slow
def test_an_app_restart_sees_every_run_in_the_right_state(manager, shapes, tmp_path):
    m1 = manager()
    done = m1.submit(shapes, tiny())
    assert m1.wait(done, 120) == "completed"
    busy = m1.submit(shapes, tiny(**LONG))
    waiting = m1.submit(shapes, tiny())
    wait_for(epochs_done(m1, busy, 1), what="an epoch")
    pid = m1.child_pid(busy)
    m1.shutdown(grace_s=10)
    assert not _group_alive(pid)  # no orphan
    assert runs.read_status(m1.root / busy)["state"] == "interrupted"
    assert "shut down" in runs.read_status(m1.root / busy)["message"]
    assert runs.read_status(m1.root / waiting)["state"] == "queued"
    # a run whose process died with the machine: status still says running, its pid is gone
    ghost = runs.create_run_dir(m1.root, "ghost")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs.update_status(ghost, "running", epoch=3, pid=dead.pid, host=runs.process_identity()["host"])

    m2 = manager()  # the app starts again
    states = {r["id"]: r["state"] for r in m2.list()}
    assert states[done] == "completed" and states[busy] == "interrupted" and states[ghost.name] == "interrupted"
    assert states[waiting] in ("queued", "running")
    assert "during epoch 4" in runs.read_status(ghost)["message"]
    assert m2.wait(waiting, 120) == "completed"  # the queue carries on
    assert "resume" in m2.resume(busy)
    assert m2.progress(busy)["state"] in ("queued", "running")
    m2.cancel(busy, grace_s=0)


def test_a_run_started_outside_the_app_shows_up(manager, shapes):
    m = manager()
    run_dir = runs.create_run_dir(m.root, "cli")
    with load_dataset(shapes) as ds:
        train(ds, tiny(), run_dir)  # as `python -m vit train` would
    summary = next(r for r in m.list() if r["id"] == run_dir.name)
    assert summary["state"] == "completed" and summary["best_val_acc"] is not None
    assert not summary["can_resume"]  # no copy of its data: the message points at the CLI
    with pytest.raises(JobError, match="completed"):
        m.resume(run_dir.name)


@pytest.mark.slow
def test_a_child_stops_by_itself_when_its_app_is_killed(shapes, tmp_path):
    """kill -9 of the web server: no shutdown ran, yet no training process is left behind."""
    root = tmp_path / "checkpoints"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(ROOT / 'tests')!r}]  # the test helpers (the package itself is installed)
        from helpers import tiny
        from vit.jobs import JobManager
        m = JobManager({str(root)!r}, gpus=0)
        run_id = m.submit({str(shapes)!r}, tiny(epochs=400))
        while m.child_pid(run_id) is None or not m.progress(run_id)["history"]:
            time.sleep(0.05)
        print(run_id, m.child_pid(run_id), flush=True)
        time.sleep(600)
    """)
    app = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        run_id, child = app.stdout.readline().split()
        app.kill()
        app.wait()
        wait_for(lambda: not _alive(int(child)), timeout=30, what="the orphaned child to exit")
    finally:
        os.killpg(app.pid, signal.SIGKILL) if _group_alive(app.pid) else None
    status = runs.read_status(root / run_id)
    assert status["state"] == "interrupted" and "exited" in status["message"]


# ---------------------------------------------------------------- ownership, deletion, safety


ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


def test_in_multi_user_mode_only_the_submitting_session_controls_a_run(manager, shapes):
    m = manager(single_user=False, max_active_per_owner=1)
    run_id = m.submit(shapes, tiny(**LONG), owner=ALICE)
    for action in (m.cancel, m.delete, m.resume, m.progress):
        with pytest.raises(JobError, match="There is no run .* in this session"):
            action(run_id, owner=BOB)
    with pytest.raises(JobError, match="in this session"):
        m.cancel(run_id)
    assert m.list(owner=BOB) == [] and m.list() == []  # another visitor does not even see it
    mine = {r["id"]: r for r in m.list(owner=ALICE)}[run_id]
    assert mine["mine"] and mine["can_cancel"] and "owner" not in mine
    assert ALICE not in (m.root / run_id / jobs.JOB).read_text()  # only a hash of the token is stored
    with pytest.raises(JobError, match="limit"):
        m.submit(shapes, tiny(), owner=ALICE)
    for anonymous in (None, "", "me"):  # no session, or a guessable one
        with pytest.raises(JobError, match="session id"):
            m.submit(shapes, tiny(), owner=anonymous)
    m.cancel(run_id, owner=ALICE, grace_s=0)
    assert m.wait(run_id, 60) == "cancelled"
    m.delete(run_id, owner=ALICE)
    assert not (m.root / run_id).exists()


@pytest.mark.slow
def test_delete_removes_a_finished_run_and_refuses_an_active_or_unknown_one(manager, shapes):
    m = manager()
    done = m.submit(shapes, tiny(epochs=1))
    assert m.wait(done, 120) == "completed"
    active = m.submit(shapes, tiny(**LONG))
    with pytest.raises(JobError, match="cancel it before deleting"):
        m.delete(active)
    assert "Deleted" in m.delete(done) and not (m.root / done).exists()
    for bad in ("../checkpoints", "/etc", "no-such-run", ""):
        with pytest.raises(JobError):
            m.delete(bad)
    m.cancel(active, grace_s=0)


def test_one_manager_per_checkpoints_folder(manager):
    manager()
    with pytest.raises(JobError, match="already running the training queue"):
        manager()


@pytest.mark.slow
def test_cpu_children_get_fewer_threads_and_a_lower_priority(manager, shapes):
    m = manager(cpu_threads=1, niceness=7)
    run_id = m.submit(shapes, tiny(**LONG))
    wait_for(lambda: m.child_pid(run_id) and epochs_done(m, run_id, 1)(), what="an epoch")
    pid = m.child_pid(run_id)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"OMP_NUM_THREADS=1" in environ
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
    m.cancel(run_id, grace_s=0)
