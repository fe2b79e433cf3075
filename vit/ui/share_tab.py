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
INT8 = "model.int8.onnx"
COMPARED = "onnx_compared.json"  # the comparison of PyTorch and the ONNX files, kept while the weights are the same


def layout() -> SimpleNamespace:
    """The Share tab's components: the run, where to push it and the token; the card, ONNX and the zip."""
    gr.Markdown("Push a finished run to the Hugging Face Hub as a timm model with a model card, or download it as "
                "ONNX.")
    with gr.Row():
        run = gr.Dropdown([], label="Run", allow_custom_value=True)
        repo = gr.Textbox(label="Repo (user/name, or just name)", placeholder="your-name/pets-vit")
        private = gr.Checkbox(False, label="Private")
    with gr.Row():
        demo = gr.Checkbox(True, label="Also push a demo Space (<repo>-demo): an app anyone can try the model in, "
                                       "with the webcam or an upload")
        data = gr.Checkbox(False, label="Also push the training data, as checked, to a private dataset repo "
                                        "(<repo>-data), linked from the card")
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
        onnx_file = gr.File(label="ONNX models: float32 and int8 (each one file, weights inside)",
                            file_count="multiple")
        zip_file = gr.File(label="The run (.zip: model, config, metrics)")
    card = gr.Markdown()
    return SimpleNamespace(run=run, repo=repo, private=private, demo=demo, data=data, token=token,
                           preview_btn=preview_btn, push_btn=push_btn, export_btn=export_btn, zip_btn=zip_btn,
                           message=message, onnx_file=onnx_file, zip_file=zip_file, card=card)


def wire(page: Page, tab: SimpleNamespace) -> None:
    """The Share tab's events."""
    tab.push_btn.click(page.bind(push_to_hub), [tab.run, tab.repo, tab.private, tab.token, page.owner, tab.demo,
                                                tab.data], tab.message, api_name="push")
    tab.preview_btn.click(page.bind(preview_card), [tab.run, tab.repo, page.owner], tab.card, api_name="preview_card")
    tab.export_btn.click(page.bind(export_run), [tab.run, page.owner], [tab.onnx_file, tab.message],
                         api_name="export_onnx")
    tab.zip_btn.click(page.bind(download_run), [tab.run, page.owner], tab.zip_file, api_name="download_run")


def push_to_hub(manager: jobs.JobManager, run_id: str | None, repo: str, private: bool, typed_token: str | None,
                owner: str | None = None, demo: bool = True, data: bool = False,
                oauth_token: gr.OAuthToken | None = None) -> str:
    """Push a run, with its demo Space and its data when asked; the token typed in, else the signed-in user's (on
    a Space). Neither is kept."""
    if not run_id:
        raise refused("Pick a finished run to push.")
    if not (repo or "").strip():
        raise refused("Give the repo a name, e.g. your-name/pets-vit.")
    token = visitor_token(typed_token, oauth_token)
    try:
        run_dir = manager.own_run(run_id, owner or None, "push")
        pushed = hub.push_run(run_dir, repo, token, private=bool(private), demo=bool(demo), data=bool(data))
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    who = "Whoever may read it" if private else "Anyone"
    said = [f"Pushed **{run_id}** to [{pushed.url}]({pushed.url}). {who} can load it with "
            f"`timm.create_model(\"hf-hub:{pushed.repo_id}\", pretrained=True)`."]
    if pushed.space_id:
        space = f"https://huggingface.co/spaces/{pushed.space_id}"
        said.append(f"Its demo Space: [{pushed.space_id}]({space}) (it builds for a few minutes first)." +
                    (" The model is private: give the Space a secret HF_TOKEN that may read it (Space settings)."
                     if private else ""))
    if pushed.dataset_id:
        said.append(f"Its data, as a private dataset: [{pushed.dataset_id}](https://huggingface.co/datasets/"
                    f"{pushed.dataset_id}); train on it again with `hf-dataset:{pushed.dataset_id}`.")
    return "\n\n".join(said)


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
                made = _onnx(run_dir)[0]
                extra[ONNX], extra[INT8] = made[ONNX], made[INT8]
            return str(runs.archive(run_dir, _download_folder(), extra))
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    except (ValueError, OSError) as e:
        raise refused(str(e))


def export_run(manager: jobs.JobManager, run_id: str | None, owner: str | None):
    """The run as ONNX, float32 and int8 (dynamic batch, labels and preprocessing in their metadata), the float32
    file checked against PyTorch; with the accuracy and speed of each on the run's validation images."""
    if not run_id:
        raise refused("Pick a finished run.")
    try:
        run_dir = manager.own_run(run_id, owner or None, "export")
        made, diff = _onnx(run_dir)
        served = []
        for name, suffix in ((ONNX, ".onnx"), (INT8, ".int8.onnx")):
            served.append(_download_folder() / f"{run_id}{suffix}")
            shutil.copyfile(made[name], served[-1])
        compared = _compared(run_dir, made)
    except (jobs.JobError, hub.HubError) as e:
        raise refused(str(e), duration=None)
    except OSError as e:
        raise refused(runs.DISK_FULL if runs.disk_full(e) else str(e))
    meta = hub.onnx_metadata(served[0])
    checked = f"largest difference from PyTorch on test inputs: {diff:.1e}" if diff is not None else \
        "exported earlier from these same weights, and checked against PyTorch then"
    return [str(p) for p in served], (
        f"Exported **{run_id}** to ONNX, float32 and int8; float32's {checked}.\n\n{compared_table(compared)}\n\n"
        f"- Input `{meta['input_name']}`: float32 [batch, {', '.join(str(n) for n in json.loads(meta['input_size']))}]"
        f"\n- Preprocessing: {meta['preprocessing']}\n- Output: {meta['output']}, in the order of the labels: "
        f"{', '.join(json.loads(meta['labels']))}\n- int8: {hub.onnx_metadata(served[1])['precision']}\n\n"
        "All of it is in each file's metadata too (onnx.load(path).metadata_props).")


def compared_table(compared: dict) -> str:
    """The comparison of PyTorch and the ONNX files as a Markdown table, with what it was measured on."""
    if not compared.get("images"):
        return "(Accuracy not measured: the run has no copy of its validation images.)"
    lines = ["| Model | Validation accuracy | Same answer as PyTorch | Time per image | Size |",
             "|---|---|---|---|---|"]
    base = compared["rows"][0]["ms"]
    for r in compared["rows"]:
        lines.append(f"| {r['name']} | {r['accuracy']:.1%} | {r['agree']:.1%} | {r['ms']:.1f} ms "
                     f"({base / r['ms']:.1f}x) | {r['mb']:.1f} MB |")
    return ("\n".join(lines) + f"\n\nMeasured on {compared['images']} of the run's validation images, one at a time, "
            f"on this machine's CPU ({compared.get('cpu', 'CPU')}); speed differs on other machines.")


def _compared(run_dir: Path, made: dict[str, Path]) -> dict:
    """compare() of the run's model and its two ONNX files, kept in the run's folder until its weights change."""
    import platform
    stamp = (run_dir / runs.WEIGHTS).stat().st_mtime_ns
    kept = runs.read_json(run_dir / COMPARED) or {}
    if kept.get("weights_mtime_ns") == stamp:
        return kept
    from vit import figures
    result = hub.compare(run_dir, {"ONNX float32": made[ONNX], "ONNX int8": made[INT8]},
                         limit=figures.ONNX_COMPARE_IMAGES)
    result.update(weights_mtime_ns=stamp, cpu=f"{platform.machine()}, {os.cpu_count()} cores")
    runs.write_json(run_dir / COMPARED, result)
    return result


def _onnx(run_dir: Path) -> tuple[dict[str, Path], float | None]:
    """The run's ONNX files, float32 and int8 (kept in the run's folder), made once per saved model: a later
    export or download of the same weights reuses them (the difference from PyTorch is then None: it was checked
    before)."""
    paths = {ONNX: run_dir / ONNX, INT8: run_dir / INT8}
    weights = run_dir / runs.WEIGHTS
    if weights.is_file() and all(p.is_file() and p.stat().st_mtime_ns > weights.stat().st_mtime_ns
                                 for p in paths.values()):
        return paths, None
    # written beside them, then moved: a failed export leaves no file that looks finished, two at once do not mix
    tag = f"{os.getpid()}-{threading.get_ident()}"
    partial = {name: run_dir / f".{name}.{tag}.tmp" for name in paths}
    try:
        _, diff = hub.export_onnx(run_dir, partial[ONNX])
        hub.quantize_onnx(partial[ONNX], partial[INT8])
        for name in (INT8, ONNX):
            os.replace(partial[name], paths[name])
    finally:
        for p in partial.values():
            p.unlink(missing_ok=True)
    return paths, diff
