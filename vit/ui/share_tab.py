"""The Share tab: its components (layout), their events (wire), and the handlers: the model card, a push to the
Hub, ONNX, the run as a zip."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from vit import env, hub, jobs, runs, safety
from vit.ui.files import _download_folder
from vit.ui.page import Page, refused, visitor_token


ONNX = "model.onnx"


def layout() -> SimpleNamespace:
    """The Share tab's components: the run, where to push it and the token; the card, ONNX and the zip."""
    gr.Markdown("Push a finished run to the Hugging Face Hub as a timm model with a model card, or download it as "
                "ONNX.")
    with gr.Row():
        run = gr.Dropdown([], label="Run", allow_custom_value=True)
        repo = gr.Textbox(label="Repo (user/name, or just name)", placeholder="your-name/pets-vit")
        private = gr.Checkbox(False, label="Private")
    if safety.on_spaces() and env.read("OAUTH_CLIENT_ID"):  # hf_oauth: true
        gr.LoginButton("Sign in with Hugging Face to push")
    token = gr.Textbox(label="Hugging Face token with write access (used for this push only, never stored)",
                       type="password", placeholder="hf_...")
    with gr.Row():
        preview_btn = gr.Button("Preview model card")
        push_btn = gr.Button("Push to the Hub", variant="primary")
        export_btn = gr.Button("Export ONNX")
        zip_btn = gr.Button("Download the run (.zip)")
    message = gr.Markdown()
    with gr.Row():
        onnx_file = gr.File(label="ONNX model (one file, weights inside)")
        zip_file = gr.File(label="The run (.zip: model, config, metrics)")
    card = gr.Markdown()
    return SimpleNamespace(run=run, repo=repo, private=private, token=token, preview_btn=preview_btn,
                           push_btn=push_btn, export_btn=export_btn, zip_btn=zip_btn, message=message,
                           onnx_file=onnx_file, zip_file=zip_file, card=card)


def wire(page: Page, tab: SimpleNamespace) -> None:
    """The Share tab's events."""
    tab.push_btn.click(page.bind(push_to_hub), [tab.run, tab.repo, tab.private, tab.token, page.owner], tab.message,
                       api_name="push")
    tab.preview_btn.click(page.bind(preview_card), [tab.run, tab.repo, page.owner], tab.card, api_name="preview_card")
    tab.export_btn.click(page.bind(export_run), [tab.run, page.owner], [tab.onnx_file, tab.message],
                         api_name="export_onnx")
    tab.zip_btn.click(page.bind(download_run), [tab.run, page.owner], tab.zip_file, api_name="download_run")


def push_to_hub(manager: jobs.JobManager, run_id: str | None, repo: str, private: bool, typed_token: str | None,
                owner: str | None = None, oauth_token: gr.OAuthToken | None = None) -> str:
    """Push a run; the token typed in, else the signed-in user's (on a Space). Neither is kept."""
    if not run_id:
        raise refused("Pick a finished run to push.")
    if not (repo or "").strip():
        raise refused("Give the repo a name, e.g. your-name/pets-vit.")
    token = visitor_token(typed_token, oauth_token)
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
    """A zip of the run to download: model, config, metrics, health report, its model card (README.md, with its
    pictures) and the model as one ONNX file."""
    import tempfile
    if not run_id:
        raise refused("Pick a run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "download")
        extra = {}
        with tempfile.TemporaryDirectory(prefix="vit-card-") as tmp:  # (zipped, then removed)
            if (run_dir / runs.WEIGHTS).is_file():
                for path in hub.write_card(run_dir, tmp, f"your-name/{run_id}"):
                    extra[path.name] = path
                extra["model.onnx"] = _onnx(run_dir)[0]
            return str(runs.archive(run_dir, _download_folder(), extra))
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    except (ValueError, OSError) as e:
        raise refused(str(e))


def export_run(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """model.onnx of a run (dynamic batch, labels and preprocessing in its metadata), checked against PyTorch."""
    if not run_id:
        raise refused("Pick a finished run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "export")
        made, diff = _onnx(run_dir)
        path = _download_folder() / f"{run_id}.onnx"
        shutil.copyfile(made, path)
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    except OSError as e:
        raise refused(runs.DISK_FULL if runs.disk_full(e) else str(e))
    meta = hub.onnx_metadata(path)
    checked = f"largest difference from PyTorch on test inputs: {diff:.1e}" if diff is not None else \
        "exported earlier from these same weights, and checked against PyTorch then"
    return str(path), (f"Exported **{run_id}** to ONNX; {checked}.\n\n- Input `{meta['input_name']}`: float32 [batch, "
                       f"{', '.join(str(n) for n in json.loads(meta['input_size']))}]\n"
                       f"- Preprocessing: {meta['preprocessing']}\n"
                       f"- Output: {meta['output']}, in the order of the labels: "
                       f"{', '.join(json.loads(meta['labels']))}\n\nAll of it is in the file's metadata too "
                       "(onnx.load(path).metadata_props).")


def _onnx(run_dir: Path) -> tuple[Path, float | None]:
    """The run's ONNX file (kept in the run's folder), exported once per saved model: a later export or
    download of the same weights reuses it (the difference from PyTorch is then None: it was checked before)."""
    path = run_dir / ONNX
    weights = run_dir / runs.WEIGHTS
    if path.is_file() and weights.is_file() and path.stat().st_mtime_ns > weights.stat().st_mtime_ns:
        return path, None
    # written beside it, then moved: a failed export leaves no file that looks finished, two at once do not mix
    partial = run_dir / f".{ONNX}.{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        _, diff = hub.export_onnx(run_dir, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path, diff
