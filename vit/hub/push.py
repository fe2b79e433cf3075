"""Push a run to the Hugging Face Hub: the token checked and used for this one call, never stored, logged or
repeated in a message."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vit import runs
from vit.data import MANIFEST_NAME
from vit.hub import share
from vit.hub.card import write_card
from vit.models import hub_call_failure
from vit.safety import TOKENS_URL, scrub, token_problem



class HubError(ValueError):
    """A push or an export cannot be done; the message says why and what to do (and never holds a token)."""


def check_token(token: str) -> str:
    """The token without surrounding spaces, or HubError when it cannot be one (safety.token_problem)."""
    token = token.strip()
    problem = token_problem(token)
    if problem:
        raise HubError(problem)
    return token


@dataclass
class Pushed:
    """Where a push went: the model repo's URL and id, and the demo Space's and the dataset repo's (None when not
    pushed)."""
    url: str
    repo_id: str
    space_id: str | None = None
    dataset_id: str | None = None


def push_run(run_dir: str | os.PathLike, repo_id: str, token: str | None, *, private: bool = False,
             include_resume: bool = False, endpoint: str | None = None, demo: bool = False,
             data: bool = False) -> Pushed:
    """Create (or update) the model repo `repo_id` with the run's model and card. With `demo`, a Space
    `<repo_id>-demo` that runs the model (private when the model is); with `data`, the run's checked data as the
    private dataset repo `<repo_id>-data`. The card links to both.

    `repo_id` may be a bare name: it then goes under the token's user.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id

    run_dir = Path(run_dir)
    if data and not (run_dir / runs.DATA_DIR / MANIFEST_NAME).is_file():
        raise HubError(f"{run_dir.name} has no copy of its data (runs trained from the command line keep none), so "
                       "there is no dataset version to push: untick it, or train the run from the app.")
    if not (run_dir / runs.WEIGHTS).is_file() or not (run_dir / runs.CONFIG).is_file():
        raise HubError(f"{run_dir.name} has no trained model to push (model.safetensors and config.json); "
                       "wait until it has finished at least one epoch.")
    if not token or not token.strip():
        raise HubError(f"No Hugging Face token. Create one with write access at {TOKENS_URL} and paste it, "
                       "set HF_TOKEN for the command line, or on a Space sign in with the button.")
    token = check_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(token, repo_id):
        who = api.whoami(token=token)
        user = who.get("name")
        role = (who.get("auth", {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubError(f"This token can only read. Create a token with write access at {TOKENS_URL}.")
        repo_id = repo_id.strip().strip("/")
        if "/" not in repo_id:
            repo_id = f"{user}/{repo_id}"
        try:
            validate_repo_id(repo_id)
        except Exception as e:
            raise HubError(f"{repo_id!r} is not a valid repo name: {e}") from None
        owner = repo_id.split("/")[0]
        allowed = {user, *(o.get("name") for o in who.get("orgs", []) or [])}
        if owner not in allowed:
            raise HubError(f"{repo_id} would belong to '{owner}', but this token is {user}'s. Push to "
                           f"{user}/{repo_id.split('/')[1]} instead, or use a token of {owner}.")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        pushed = Pushed(str(url), repo_id)
        if data:
            pushed.dataset_id = _push_data(api, run_dir, repo_id)
        if demo:
            pushed.space_id = _push_demo(api, repo_id, private)
        with tempfile.TemporaryDirectory(prefix="vit-push-") as tmp:  # exactly what the repo gets
            write_card(run_dir, tmp, repo_id, space_id=pushed.space_id, dataset_id=pushed.dataset_id)
            runs.write_json(Path(tmp) / runs.CONFIG, runs.public_config(run_dir))  # no local paths
            for name in (runs.WEIGHTS, runs.OOD, runs.METRICS) + ((runs.RESUME,) if include_resume else ()):
                if (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, Path(tmp) / name)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                              commit_message=f"Upload {run_dir.name} (ViT Studio)")
    return pushed


def _push_data(api, run_dir: Path, repo_id: str) -> str:
    """The run's checked data as a private dataset repo (share.write_dataset); its id."""
    target = share.dataset_id(repo_id)
    api.create_repo(target, private=True, exist_ok=True, repo_type="dataset")
    with tempfile.TemporaryDirectory(prefix="vit-push-data-") as tmp:
        share.write_dataset(run_dir, tmp, repo_id)
        api.upload_folder(repo_id=target, folder_path=tmp, repo_type="dataset",
                          commit_message=f"The data of {repo_id} (ViT Studio)")
    return target


def _push_demo(api, repo_id: str, private: bool) -> str:
    """The demo Space of the model (share.write_demo), private when the model is; its id."""
    target = share.demo_id(repo_id)
    api.create_repo(target, private=private, exist_ok=True, repo_type="space", space_sdk="gradio")
    with tempfile.TemporaryDirectory(prefix="vit-push-demo-") as tmp:
        share.write_demo(tmp, repo_id)
        api.upload_folder(repo_id=target, folder_path=tmp, repo_type="space",
                          commit_message=f"A demo of {repo_id} (ViT Studio)")
    return target


class _hub_errors:
    """Turn huggingface_hub and network errors into HubError messages without the token."""

    def __init__(self, token: str, repo_id: str):
        self.token, self.repo_id = token, repo_id

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, HubError):
            error.args = (scrub(str(error), self.token),)
        failure = None if error is None or isinstance(error, HubError) else hub_call_failure(error)
        if failure is None:
            return False
        said = {
            401: f"The Hugging Face Hub rejected the token (invalid or revoked). Create a new one at {TOKENS_URL}.",
            403: (f"The token may not write to {self.repo_id}: it is read-only, fine-grained without write access to "
                  "it, or the repo belongs to someone else."),
            "offline": "Offline mode is on (HF_HUB_OFFLINE is set): unset it to push to the Hub.",
            "network": (f"Cannot reach the Hugging Face Hub ({type(error).__name__}). Check the internet connection "
                        "and try again; the run is unchanged.")}
        first = (scrub(str(error), self.token).splitlines() or [type(error).__name__])[0]
        raise HubError(said.get(failure) or f"The Hugging Face Hub answered {failure}: {first}") from None
