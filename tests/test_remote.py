"""Training on a Hugging Face GPU (vit.jobs.remote, vit.jobs.hf): the whole flow against the fake Hub, whose
Jobs service runs each job's command here as a subprocess (so those tests are slow: each starts a training
process). Start, live curves from the job's log, cancel, resume from the pushed checkpoint, completion into a run
directory that classifies, and every refusal, none with the token."""
import json
from pathlib import Path

import pytest

from vit import runs
from vit.jobs import JobError, JobManager
from vit.jobs.remote import Remote, estimate, record, refusal
from vit.jobs.hf import FALLBACK, flavors
from vit.samples import make_shapes_dataset

from fake_hub import FakeHub
from helpers import tiny, wait_for

TOKEN = "hf_write_alice"


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # (read at import; the fake is local)
    monkeypatch.setenv("VIT_JOB_POLL_S", "0.3")
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("VIT_JOB_IMAGE", "vit-studio:test")  # an image with the project installed: this machine
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture
def manager(tmp_path):
    m = JobManager(tmp_path / "checkpoints", gpus=0, poll_s=0.05)
    yield m
    m.shutdown(grace_s=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("remote") / "shapes", per_class=8, size=32)


def on_gpu(fake: FakeHub, token: str = TOKEN, flavor: str = "t4-small") -> Remote:
    return Remote(flavor, token, fake.url)


def ended(manager, run_id):
    return manager.progress(run_id)["state"] not in runs.ACTIVE_STATES


def no_token_in(folder: Path, token: str = TOKEN) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"the token is in {path}"


@pytest.mark.slow  # (a job: a training process)
def test_a_run_trains_on_a_hugging_face_gpu_and_comes_back_as_a_local_run(manager, fake_hub, shapes):
    run_id = manager.submit(shapes, tiny(epochs=2), remote=on_gpu(fake_hub), name="on a GPU")
    run_dir = manager.root / run_id
    wait_for(lambda: ended(manager, run_id), timeout=90, what="the job to end")
    done = manager.progress(run_id)
    assert done["state"] == "completed", done["message"] + manager.log_tail(run_id, 30)
    assert done["message"].startswith("Finished: accuracy") and done["device"] == "hf:t4-small"
    assert "Trained on Hugging Face t4-small" in done["message"]
    assert [row["epoch"] for row in done["history"]] == [1, 2]  # the curves, from the job's log
    # the data went up as the run trains on it, private; the model came back and classifies here
    data_repo = fake_hub.repos[f"datasets/alice/vit-studio-data-{run_id}"]
    assert data_repo["private"] and "data/labels.csv" in data_repo["files"] and "job.json" in data_repo["files"]
    assert "owner" not in json.loads(data_repo["files"]["job.json"])
    model_repo = fake_hub.repos[f"alice/vit-studio-{run_id}"]
    assert model_repo["private"] and {"model.safetensors", "last.pt", "config.json"} <= set(model_repo["files"])
    assert (run_dir / runs.WEIGHTS).is_file() and not (run_dir / runs.RESUME).exists()
    from vit.predict import load_model
    image = next(Path(shapes).rglob("*.png"))
    answers = load_model(run_dir).classify([image])[0]
    assert {label for label, _ in answers} == set(runs.read_config(run_dir)["label_names"])
    # the token went into the job as a secret, and nowhere else
    (job,) = fake_hub.jobs.values()
    assert job["spec"]["secrets"] == {"HF_TOKEN": TOKEN} and TOKEN not in json.dumps(job["spec"]["environment"])
    assert job["spec"]["flavor"] == "t4-small" and job["spec"]["timeoutSeconds"] >= 900
    assert record(run_dir)["job_id"] == job["id"]
    no_token_in(run_dir)
    assert TOKEN not in repr(manager.followers) + str(manager.summary(run_id))


@pytest.mark.slow  # (a job: a training process)
def test_cancel_stops_the_job_and_resume_starts_a_new_one_from_the_pushed_checkpoint(manager, fake_hub, shapes):
    run_id = manager.submit(shapes, tiny(epochs=30, lr=1e-4), remote=on_gpu(fake_hub))
    wait_for(lambda: len(manager.progress(run_id)["history"]) >= 2, what="two epochs in the live view")
    live = manager.progress(run_id)
    assert live["state"] == "running" and live["eta_s"] is not None  # the ETA, from the job's log
    wait_for(lambda: "last.pt" in fake_hub.repos.get(f"alice/vit-studio-{run_id}", {}).get("files", {}),
             what="a checkpoint pushed")
    assert "Cancelling run" in manager.cancel(run_id)
    wait_for(lambda: ended(manager, run_id), timeout=90, what="the cancel")
    cancelled = manager.progress(run_id)
    assert cancelled["state"] == "cancelled" and "Resume starts a new job" in cancelled["message"]
    (first,) = fake_hub.jobs.values()
    assert first["stage"] == "CANCELED"
    wait_for(lambda: first["proc"].poll() is not None, what="the job's process to stop")
    epochs_before = len(cancelled["history"])
    with pytest.raises(JobError, match="needs your token"):
        manager.resume(run_id)
    assert "new job" in manager.resume(run_id, token=TOKEN)
    wait_for(lambda: len(fake_hub.jobs) == 2, what="a second job")
    second = [j for j in fake_hub.jobs.values() if j is not first][0]
    assert second["spec"]["environment"]["VIT_RESUME"] == "1"
    wait_for(lambda: manager.progress(run_id)["epoch"] and manager.progress(run_id)["epoch"] > epochs_before,
             what="the second job to go on from the checkpoint")
    resumed_log = "\n".join(line for _, line in second["log"])
    assert "epoch 1/" not in resumed_log.lower().replace("epochs", "")  # it did not start over
    manager.cancel(run_id)
    wait_for(lambda: ended(manager, run_id), timeout=90, what="the second cancel")


def test_refusals_say_what_is_wrong_and_leave_nothing_behind(manager, fake_hub, shapes):
    fake_hub.jobs_denied.add("bob")
    fake_hub.no_credit.add("carol")
    cases = [
        (Remote("t4-small", "", fake_hub.url), "needs your token"),
        (Remote("t4-small", "hf_expired_token_1", fake_hub.url), "rejected the token"),
        (Remote("t4-small", "hf_read_alice", fake_hub.url), "can only read"),
        (Remote("t4-small", "hf_write_bob", fake_hub.url), "may not list your jobs.*`jobs` permission"),
        (Remote("h100-imaginary", TOKEN, fake_hub.url), "not a GPU machine that jobs run on.*t4-small"),
        (Remote("t4-small", TOKEN, "http://127.0.0.1:9"), "cannot be reached"),
    ]
    for remote, message in cases:
        with pytest.raises(JobError, match=message) as info:
            manager.submit(shapes, tiny(), remote=remote)
        assert remote.token not in str(info.value) or not remote.token
    assert "quick model takes seconds" in refusal(tiny(quick=True))
    assert "teacher cannot be sent" in refusal(tiny(teacher="/runs/cnn"))
    with pytest.raises(JobError, match="teacher cannot be sent"):
        manager.submit(shapes, tiny(teacher=str(shapes)), remote=on_gpu(fake_hub))
    assert manager.list() == [] and not fake_hub.repos and not fake_hub.jobs
    # no credit: the Hub says so when the job starts; the run fails with the words, nothing is left running
    run_id = manager.submit(shapes, tiny(), remote=on_gpu(fake_hub, "hf_write_carol"))
    wait_for(lambda: ended(manager, run_id), timeout=90, what="the refusal")
    failed = manager.progress(run_id)
    assert failed["state"] == "failed" and "no credit" in failed["message"] and "hf_write_carol" not in str(failed)
    assert "Resume starts the job without uploading it again" in failed["message"] and not fake_hub.jobs


@pytest.mark.slow  # (a job: a training process)
def test_a_job_that_fails_says_why_with_the_last_lines_of_its_log(manager, fake_hub, shapes, tmp_path):
    diverging = tiny(model_args={**tiny().model_args, "init_values": 1e30})  # LayerScale overflows: NaN loss
    run_id = manager.submit(shapes, diverging, remote=on_gpu(fake_hub))
    wait_for(lambda: ended(manager, run_id), timeout=90, what="the job to fail")
    failed = manager.progress(run_id)
    assert failed["state"] == "failed" and "failed on Hugging Face" in failed["message"]
    assert "last lines of its log" in failed["message"] and "loss became nan" in failed["message"]
    with pytest.raises(JobError, match="cannot be built"):
        manager.submit(shapes, tiny(model_args={"depth": 1, "embed_dim": 30, "num_heads": 4}), remote=on_gpu(fake_hub))
    assert len(fake_hub.jobs) == 1


def test_the_estimate_grows_with_the_model_and_the_data_and_the_prices_come_from_the_hub(fake_hub):
    listed, source = flavors(TOKEN, fake_hub.url)
    assert [f.name for f in listed] == ["t4-small", "a10g-large"] and source == "the Hub's prices"  # one GPU each
    assert listed[0].usd_per_hour == pytest.approx(0.40)
    fallback, note = flavors(TOKEN, "http://127.0.0.1:9")
    assert fallback == list(FALLBACK) and "could not be read" in note
    t4 = listed[0]
    small = estimate(tiny(epochs=10), 100, 20, 2, t4)
    assert estimate(tiny(epochs=20), 100, 20, 2, t4).train_s == pytest.approx(2 * small.train_s)
    assert estimate(tiny(epochs=10), 400, 80, 2, t4).train_s == pytest.approx(4 * small.train_s, rel=1e-6)
    base = estimate(tiny(model="vit_base_patch16_224", img_size=224, patch_size=16, model_args={}, epochs=10),
                    100, 20, 2, t4)
    assert base.train_s > 1000 * small.train_s and base.usd > small.usd
    assert small.timeout_s >= small.setup_s + 2 * small.train_s and "$0.40/hour" in small.text(t4)


@pytest.mark.slow  # (a job: a training process)
def test_the_command_line_trains_on_a_hugging_face_gpu_and_follows_it(fake_hub, shapes, tmp_path):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"), HF_TOKEN=TOKEN,
               VIT_JOB_POLL_S="0.3", VIT_JOB_IMAGE="vit-studio:test")
    tiny_flags = ["--model", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--patch-size", "8",
                  "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
                  "--batch-size", "8", "--epochs", "2", "--lr", "1e-3"]
    command = [sys.executable, "-m", "vit", "train", "--data", str(shapes), *tiny_flags, "--remote", "hf-jobs"]
    wrong = subprocess.run([*command, "--flavor", "t4-huge", "--out", str(tmp_path / "no")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == runs.Exit.FAILED and "'t4-huge' is not a GPU machine" in wrong.stderr
    assert not (tmp_path / "no").exists()
    done = subprocess.run([*command, "--flavor", "t4-small", "--out", str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training on Hugging Face t4-small: about" in done.stdout and "epoch 2/2" in done.stdout
    assert (tmp_path / "run" / runs.WEIGHTS).is_file() and TOKEN not in done.stdout + done.stderr
    no_token_in(tmp_path / "run")


@pytest.mark.slow
def test_the_train_tab_plans_starts_and_resumes_a_run_on_a_hugging_face_gpu(app_url, app_manager, fake_hub,
                                                                           monkeypatch):
    from gradio_client import Client
    from vit import ui
    fake_hub.as_the_hub(monkeypatch)  # (the app's)
    client = Client(app_url, verbose=False)
    client.predict(10, api_name="/sample_dataset")
    form = dict(model=ui.DEFAULT_MODEL, scratch=True, epochs=30, batch_size=8, lr=1e-4, owner="me",
                train_on=ui.HF_GPU, flavor="t4-small")
    with pytest.raises(Exception, match="needs your token"):
        client.predict(**form, api_name="/start_training")
    with pytest.raises(Exception, match="not a GPU machine that jobs run on"):
        client.predict(**{**form, "flavor": "t4-huge"}, hf_token=TOKEN, api_name="/start_training")
    message, picker = client.predict(**form, hf_token=TOKEN, api_name="/start_training")
    run_id = picker["value"]
    assert f"({run_id}) is running" in message and TOKEN not in message
    wait_for(lambda: len(app_manager.progress(run_id, "me")["history"]) >= 1, what="an epoch shown live")
    table, _ = client.predict(run_id, "me", api_name="/list_runs")
    row = next(r for r in table["data"] if r[-1] == run_id)
    assert row[1] == "running" and row[3].endswith("/30")
    client.predict(run_id, "me", api_name="/cancel_run")
    wait_for(lambda: ended(app_manager, run_id), what="the cancel")
    with pytest.raises(Exception, match="needs your token"):
        client.predict(run_id, "me", api_name="/resume_run")
    assert "new job" in client.predict(run_id, "me", TOKEN, api_name="/resume_run")
    wait_for(lambda: len(fake_hub.jobs) == 2, what="the second job")
    client.predict(run_id, "me", api_name="/cancel_run")
    wait_for(lambda: ended(app_manager, run_id), what="the second cancel")
    no_token_in(app_manager.root)


@pytest.mark.slow  # (a job: a training process)
def test_an_expired_sign_in_or_an_app_restart_leaves_the_job_running_and_resume_follows_it_again(fake_hub, shapes,
                                                                                                   tmp_path):
    root = tmp_path / "checkpoints"
    first = JobManager(root, gpus=0, poll_s=0.05)
    run_id = first.submit(shapes, tiny(epochs=40, lr=1e-4), remote=on_gpu(fake_hub, "hf_write_alice"))
    wait_for(lambda: first.progress(run_id)["history"], what="an epoch")
    fake_hub.revoked.add(TOKEN)  # the visitor's sign-in expires while the job runs
    wait_for(lambda: ended(first, run_id), what="the follower to stop")
    lost = first.progress(run_id)
    assert lost["state"] == "interrupted" and "rejected the token" in lost["message"]
    assert "may still be running on Hugging Face" in lost["message"] and "Resume (signed in)" in lost["message"]
    (job,) = fake_hub.jobs.values()
    assert job["stage"] == "RUNNING"  # the job goes on
    fake_hub.revoked.clear()
    assert "following its job" in first.resume(run_id, token=TOKEN)
    wait_for(lambda: first.progress(run_id)["epoch"] > lost["epoch"], what="the job followed again")
    first.shutdown()  # the app stops: the job goes on; the run says so
    stopped = JobManager(root, gpus=0, poll_s=0.05)
    try:
        said = stopped.progress(run_id)
        assert said["state"] == "interrupted" and "may still be running on Hugging Face" in said["message"]
        assert "following its job" in stopped.resume(run_id, token=TOKEN) and len(fake_hub.jobs) == 1
        stopped.cancel(run_id)
        wait_for(lambda: ended(stopped, run_id), what="the cancel")
        assert stopped.progress(run_id)["state"] == "cancelled" and job["stage"] == "CANCELED"
    finally:
        stopped.shutdown()


@pytest.mark.slow
def test_off_a_space_the_job_installs_the_project_from_the_copy_sent_with_the_data(manager, fake_hub, shapes,
                                                                                  tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_JOB_IMAGE")  # a stock Python image: the job fetches the code, installs, runs it
    image = tmp_path / "image-bin"
    image.mkdir()
    (image / "pip").write_text(f"#!/bin/sh\necho \"$@\" >> {image}/pip.log\n")  # (the packages are here already)
    (image / "pip").chmod(0o755)
    fake_hub.image_path.append(str(image))
    run_id = manager.submit(shapes, tiny(epochs=1), remote=on_gpu(fake_hub))
    wait_for(lambda: ended(manager, run_id), timeout=90, what="the job")
    assert manager.progress(run_id)["state"] == "completed", manager.log_tail(run_id, 30)
    (job,) = fake_hub.jobs.values()
    assert job["spec"]["dockerImage"] == "python:3.11-slim" and job["spec"]["command"][:2] == ["bash", "-c"]
    files = fake_hub.repos[f"datasets/alice/vit-studio-data-{run_id}"]["files"]
    assert {"code/requirements.txt", "code/pyproject.toml", "code/vit/jobs/remote_worker.py"} <= set(files)
    assert not any("__pycache__" in f for f in files)
    installed = (image / "pip.log").read_text().splitlines()
    assert installed[0] == "install -q huggingface_hub==2.4.0" and installed[1].endswith("/vit/code/requirements.txt")
