"""The Share tab's handlers: the model card, a push to the Hub, ONNX, the run as a zip."""
from __future__ import annotations



from vit import hub, jobs, runs
from vit.ui.common import _download_folder, refused


def push_to_hub(manager: jobs.JobManager, run_id: str | None, repo: str, private: bool, typed_token: str | None,
                oauth_token, owner: str | None) -> str:
    """Push a run; the token typed in, else the signed-in user's (on a Space). Neither is kept."""
    if not run_id:
        raise refused("Pick a finished run to push.")
    if not (repo or "").strip():
        raise refused("Give the repo a name, e.g. your-name/pets-vit.")
    token = (typed_token or "").strip() or (getattr(oauth_token, "token", None) if oauth_token else None)
    try:
        run_dir = manager.own_run(run_id, owner or None, "push")
        url = hub.push_run(run_dir, repo, token, private=bool(private))
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    repo_id = url.rstrip("/").split("/", 3)[-1] if "/" in url else repo
    return (f"Pushed **{run_id}** to [{url}]({url}). Anyone can load it with "
            f"`timm.create_model(\"hf-hub:{repo_id}\", pretrained=True)`.")


def preview_card(manager: jobs.JobManager, run_id: str | None, repo: str | None, owner: str | None = None) -> str:
    """The model card a push would write (its text; the pictures go with the push)."""
    if not run_id:
        raise refused("Pick a finished run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "see")
        repo = (repo or "").strip().strip("/") or run_id
        return hub.card_preview(run_dir, repo if "/" in repo else f"your-name/{repo}")
    except ValueError as e:
        raise refused(str(e))


def download_run(manager: jobs.JobManager, run_id: str | None, owner: str | None = None) -> str:
    """A zip of the run (model, config, metrics, health report) to download."""
    if not run_id:
        raise refused("Pick a run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "download")
        return str(runs.archive(run_dir, _download_folder()))
    except (ValueError, OSError) as e:
        raise refused(str(e))


def export_run(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """model.onnx of a run (dynamic batch), checked against PyTorch."""
    if not run_id:
        raise refused("Pick a finished run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "export")
        path, diff = hub.export_onnx(run_dir, _download_folder() / f"{run_id}.onnx")
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    return str(path), f"Exported **{run_id}** to ONNX; largest difference from PyTorch on test inputs: {diff:.1e}."
