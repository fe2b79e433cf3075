"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub calls to push a model and to
download it again, kept in memory. Point HF_ENDPOINT at `FakeHub().url` (in a fresh process: the client
reads it at import).

Tokens: "hf_write_<user>" may write to <user>/..., "hf_read_<user>" may only read; anything else is 401.
Files are always committed inline ("regular" upload mode), so no LFS or Xet storage is needed. Model repos are
keyed "user/name", dataset repos "datasets/user/name", Spaces "spaces/user/name". Every commit keeps a snapshot:
a revision (a commit sha) reads the files as they were then.

Jobs (HfApi.run_job and friends): a job's command runs here as a subprocess, in a folder of its own (its HOME and
TMPDIR), with the job's environment and secrets and this Python first on PATH (the "image" is this machine's
environment); its output is the job's log, its exit code the stage (COMPLETED, ERROR), a cancel sends SIGTERM
(CANCELED). `jobs_denied` (users whose tokens lack the jobs permission: 403) and `no_credit` (402) set refusals.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import yaml


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}        # repo_id -> {"private", "files": {path: bytes}, "commits": [sha]}
        self.requests: list[str] = []           # "METHOD path" of every request, for assertions
        self.auth_headers: list[str] = []       # every Authorization header seen
        self.validated: list[dict] = []         # model card metadata that passed /api/validate-yaml
        self.ranges: list[str | None] = []      # the Range header of every file GET (None: the whole file)
        self.jobs: dict[str, dict] = {}         # job id -> {"spec", "owner", "stage", "message", "log", "proc", ...}
        self.jobs_denied: set[str] = set()      # users whose token may not start jobs (403)
        self.no_credit: set[str] = set()        # users with no credit for paid hardware (402)
        self.hardware = [_hardware(*h) for h in HARDWARE]
        self.scheduling_s = 0.0                 # how long a job waits in SCHEDULING before it runs
        self.revoked: set[str] = set()          # tokens that no longer work (an expired sign-in): 401
        self.image_path: list[str] = []         # folders first on a job's PATH (the image's own commands)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_POST(self):
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def as_the_hub(self, monkeypatch) -> None:
        """Make this the Hub of the test's own process (huggingface_hub reads HF_ENDPOINT at import: its endpoint
        and the file URL template made from it), online."""
        from huggingface_hub import constants
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            self.url + "/{repo_id}/resolve/{revision}/{filename}")

    def add(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> str:
        """Put a repo ("user/name", "datasets/user/name") on the fake Hub, or commit `files` over it; the commit's
        sha (a revision that keeps reading these files)."""
        repo = self.repos.setdefault(repo_id, {"private": private, "files": {}, "commits": ["0" * 40],
                                               "snapshots": {"0" * 40: {}}})
        repo["files"].update(files)
        sha = hashlib.sha1(repr(sorted(repo["files"].items())).encode() + repo["commits"][-1].encode()).hexdigest()
        repo["commits"].append(sha)
        repo["snapshots"][sha] = dict(repo["files"])
        return sha

    def close(self) -> None:
        for job in self.jobs.values():
            if job.get("proc") is not None and job["proc"].poll() is None:
                _kill(job["proc"], signal.SIGKILL)
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ routing

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?")[0]
        self.requests.append(f"{method} {path}")
        if h.headers.get("Authorization"):
            self.auth_headers.append(h.headers["Authorization"])
        body = b""
        if method == "POST":
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            if h.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
        user, role = self._user(h)
        try:
            if path == "/api/whoami-v2":
                if user is None:
                    return self._json(h, 401, {"error": "Invalid credentials in Authorization header"})
                return self._json(h, 200, {"type": "user", "name": user, "orgs": [],
                                           "auth": {"type": "access_token", "accessToken": {"role": role}}})
            if path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(h, json.loads(body)["content"])
            if path == "/api/repos/create" and method == "POST":
                return self._create(h, json.loads(body), user, role)
            if path.startswith("/api/jobs/"):
                return self._jobs(h, method, path, body, user, role)
            m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
            if m and method == "POST":
                repo_id, action = _key(m.group(1), m.group(2)), m.group(3)
                if (error := self._may_write(repo_id, user, role)) is not None:
                    return self._json(h, *error)
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(h, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                          "shouldIgnore": False, "oid": None} for f in files]})
                return self._commit(h, repo_id, body)
            m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
            if m and method == "GET":  # the file listing snapshot_download pages through
                repo = self._readable(_key(m.group(1), m.group(2)), user)
                if repo is None:
                    return self._json(h, 404, {"error": "Repository not found"}, code="RepoNotFound")
                files, sha = self._at(repo, unquote(m.group(3)))
                if files is None:
                    return self._json(h, 404, {"error": "Invalid rev id"}, code="RevisionNotFound")
                return self._json(h, 200, [{"type": "file", "path": p, "size": len(b),
                                            "oid": hashlib.sha1(b).hexdigest()}
                                           for p, b in sorted(files.items())])
            m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m and method == "GET":
                repo = self._readable(_key(m.group(1), m.group(2)), user)
                if repo is None:
                    return self._json(h, 404, {"error": "Repository not found"}, code="RepoNotFound")
                files, sha = self._at(repo, unquote(m.group(3) or "main"))
                if files is None:
                    return self._json(h, 404, {"error": "Invalid rev id"}, code="RevisionNotFound")
                return self._json(h, 200, {"id": m.group(2), "sha": sha, "private": repo["private"],
                                           "siblings": [{"rfilename": p, "size": len(b)}
                                                        for p, b in sorted(files.items())]})
            m = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m and method in ("GET", "HEAD"):
                kind = (m.group(1) or "models/").rstrip("/")
                return self._file(h, method, _key(kind, m.group(2)), unquote(m.group(4)), user,
                                  unquote(m.group(3)))
            return self._json(h, 404, {"error": f"not implemented by the fake hub: {method} {path}"})
        except Exception as e:  # a bug in the fake must show in the test, not hang it
            return self._json(h, 500, {"error": f"fake hub error: {type(e).__name__}: {e}"})

    # ------------------------------------------------------------------ endpoints

    def _create(self, h, payload: dict, user: str | None, role: str | None):
        if user is None:
            return self._json(h, 401, {"error": "Invalid credentials"})
        owner = payload.get("organization") or user
        repo_id = _key(payload.get("type", "model") + "s", f"{owner}/{payload['name']}")
        if owner != user or role != "write":
            return self._json(h, 403, {"error": "You don't have the rights to create a model under this namespace"})
        if repo_id in self.repos:
            return self._json(h, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        first = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = {"private": payload.get("visibility") == "private" or bool(payload.get("private")),
                               "files": {}, "commits": [first], "snapshots": {first: {}},
                               "sdk": payload.get("sdk")}
        return self._json(h, 200, {"url": f"{self.url}/{repo_id}", "name": _owner(repo_id) + "/" + payload["name"]})

    def _validate_yaml(self, h, content: str):
        """The checks the Hub makes of a model card's metadata that a card of ours could fail."""
        errors = []
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as e:
            return self._json(h, 400, {"errors": [{"message": f"YAML: {e}"}]})
        if not isinstance(meta, dict):
            errors.append("metadata must be a mapping")
        else:
            for key in ("library_name", "pipeline_tag", "base_model", "license"):
                if key in meta and not isinstance(meta[key], (str, list)):
                    errors.append(f"{key} must be a string")
            tags = meta.get("tags")
            if "tags" in meta and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                errors.append("tags must be a list of strings")
            for entry in meta.get("model-index", []) or []:
                for result in entry.get("results", []):
                    if not {"task", "dataset", "metrics"} <= set(result):
                        errors.append("model-index results need task, dataset and metrics")
                    for metric in result.get("metrics", []):
                        if not {"type", "value"} <= set(metric):
                            errors.append("model-index metrics need type and value")
        if errors:
            return self._json(h, 400, {"errors": [{"message": e} for e in errors]})
        self.validated.append(meta)
        return self._json(h, 200, {"warnings": []})

    def _commit(self, h, repo_id: str, body: bytes):
        repo = self.repos[repo_id]
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "file":
                repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] in ("deletedFile",):
                repo["files"].pop(item["value"]["path"], None)
            elif item["key"] not in ("header",):
                return self._json(h, 400, {"error": f"fake hub cannot store {item['key']}"})
        sha = hashlib.sha1(b"".join(sorted(repo["files"].values())) + repo["commits"][-1].encode()).hexdigest()
        repo["commits"].append(sha)
        repo.setdefault("snapshots", {})[sha] = dict(repo["files"])
        return self._json(h, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                   "pullRequestUrl": None})

    def _at(self, repo: dict, revision: str) -> tuple[dict | None, str]:
        """The repo's files at a revision (a branch name reads the latest) and the commit they are."""
        if revision in repo.get("snapshots", {}):
            return repo["snapshots"][revision], revision
        if revision == repo["commits"][-1]:
            return repo["files"], revision
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return None, revision
        return repo["files"], repo["commits"][-1]

    def _file(self, h, method: str, repo_id: str, filename: str, user: str | None, revision: str = "main"):
        repo = self._readable(repo_id, user)
        if repo is None:
            return self._json(h, 404, {"error": "Repository not found"}, code="RepoNotFound")
        files, sha = self._at(repo, revision)
        if files is None or filename not in files:
            return self._json(h, 404, {"error": "Entry not found"}, code="EntryNotFound",
                              extra={"X-Repo-Commit": sha})
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest()
        if method == "GET":
            self.ranges.append(h.headers.get("Range"))
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or "")
        if asked and method == "GET":  # a part of the file (the safetensors header, read before any download)
            start, end = int(asked.group(1)), int(asked.group(2) or len(data) - 1)
            part = data[start:end + 1]
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
            h.send_header("Content-Length", str(len(part)))
            h.send_header("ETag", f'"{etag}"')
            h.send_header("X-Repo-Commit", sha)
            h.end_headers()
            h.wfile.write(part)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Repo-Commit", sha)
        h.end_headers()
        if method == "GET":
            h.wfile.write(data)

    # ------------------------------------------------------------------ jobs

    def _jobs(self, h, method: str, path: str, body: bytes, user: str | None, role: str | None):
        if path == "/api/jobs/hardware" and method == "GET":
            return self._json(h, 200, self.hardware)
        if user is None:
            return self._json(h, 401, {"error": "Invalid credentials in Authorization header"})
        m = re.fullmatch(r"/api/jobs/([^/]+)(?:/([0-9a-f]+)(?:/(logs|cancel))?)?", path)
        if m is None:
            return self._json(h, 404, {"error": f"not implemented by the fake hub: {method} {path}"})
        namespace, job_id, action = m.groups()
        if namespace != user or user in self.jobs_denied or role != "write":
            return self._json(h, 403, {"error": "This token does not have the permission to manage jobs in "
                                                f"{namespace}"})
        if job_id is None and method == "POST":
            return self._run_job(h, namespace, json.loads(body))
        if job_id is None and method == "GET":
            return self._json(h, 200, [self._job_info(j) for j in self.jobs.values() if j["owner"] == namespace])
        job = self.jobs.get(job_id)
        if job is None or job["owner"] != namespace:
            return self._json(h, 404, {"error": "Job not found"})
        if action is None and method == "GET":
            return self._json(h, 200, self._job_info(job))
        if action == "cancel" and method == "POST":
            if job["stage"] in ("SCHEDULING", "RUNNING"):
                job["stage"], job["cancelled"] = "CANCELED", True
                if job.get("proc") is not None and job["proc"].poll() is None:
                    _kill(job["proc"], signal.SIGTERM)
            return self._json(h, 200, {})
        if action == "logs" and method == "GET":  # server-sent events: the log so far, then the stream ends
            data = "".join(f"data: {json.dumps({'timestamp': t, 'data': line})}\n\n"
                           for t, line in list(job["log"])).encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        return self._json(h, 404, {"error": f"not implemented by the fake hub: {method} {path}"})

    def _run_job(self, h, namespace: str, spec: dict):
        flavors = {hw["name"]: hw for hw in self.hardware}
        if spec.get("flavor") not in flavors:
            return self._json(h, 400, {"error": f"Invalid flavor: {spec.get('flavor')}"})
        if namespace in self.no_credit and flavors[spec["flavor"]]["unitCostMicroUSD"] > 0:
            return self._json(h, 402, {"error": "Payment required: add a payment method to use paid hardware"})
        job_id = secrets.token_hex(12)
        job = self.jobs[job_id] = {"id": job_id, "spec": spec, "owner": namespace, "stage": "SCHEDULING",
                                   "message": None, "log": [], "proc": None, "created": time.time(),
                                   "folder": tempfile.mkdtemp(prefix=f"fake-job-{job_id[:6]}-")}
        threading.Thread(target=self._execute, args=(job,), daemon=True).start()
        return self._json(h, 200, self._job_info(job))

    def _execute(self, job: dict) -> None:
        """The job's command, as the Jobs service would run it in its image: here, this machine's Python."""
        time.sleep(self.scheduling_s)
        if job["stage"] != "SCHEDULING":  # cancelled while it waited
            return
        spec, folder = job["spec"], job["folder"]
        env = {"PATH": os.pathsep.join([*self.image_path, os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
               "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8", **spec.get("environment", {}),
               **spec.get("secrets", {})}
        job["stage"] = "RUNNING"
        job["proc"] = proc = subprocess.Popen(spec["command"], cwd=folder, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                              start_new_session=True)
        timeout = spec.get("timeoutSeconds")
        if timeout:
            threading.Timer(timeout, self._time_up, args=(job,)).start()
        for line in proc.stdout:
            job["log"].append((time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), line.rstrip("\n")))
        rc = proc.wait()
        if job["stage"] == "RUNNING":
            job["stage"], job["message"] = ("COMPLETED", None) if rc == 0 else ("ERROR", f"exit code {rc}")

    def _time_up(self, job: dict) -> None:
        if job["stage"] == "RUNNING" and job["proc"].poll() is None:
            job["stage"], job["message"] = "ERROR", "Job timeout"
            _kill(job["proc"], signal.SIGKILL)

    def _job_info(self, job: dict) -> dict:
        spec = job["spec"]
        image = {"spaceId": spec["spaceId"]} if "spaceId" in spec else {"dockerImage": spec.get("dockerImage")}
        return {"id": job["id"], "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(job["created"])),
                **image, "command": spec["command"], "arguments": spec.get("arguments", []),
                "environment": spec.get("environment", {}),
                "secrets": {k: "***" for k in spec.get("secrets", {})}, "flavor": spec["flavor"],
                "labels": spec.get("labels"), "status": {"stage": job["stage"], "message": job["message"]},
                "owner": {"id": "0" * 24, "name": job["owner"], "type": "user"}}

    # ------------------------------------------------------------------ helpers

    def _user(self, h) -> tuple[str | None, str | None]:
        if h.headers.get("Authorization", "").removeprefix("Bearer ") in self.revoked:
            return None, None
        m = re.fullmatch(r"Bearer hf_(write|read)_(\w+)", h.headers.get("Authorization", ""))
        return (m.group(2), m.group(1)) if m else (None, None)

    def _may_write(self, repo_id: str, user, role):
        if user is None:
            return 401, {"error": "Invalid credentials"}
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        if _owner(repo_id) != user or role != "write":
            return 403, {"error": "You don't have the rights to write to this repo"}
        return None

    def _readable(self, repo_id: str, user):
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and _owner(repo_id) != user):
            return None
        return repo

    def _json(self, h, status: int, obj: dict | list, code: str | None = None, extra: dict | None = None):
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if code:
            h.send_header("X-Error-Code", code)
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


HARDWARE = (("cpu-basic", "CPU Basic", None, 167), ("t4-small", "Nvidia T4 - small", ("T4", 1), 6667),
            ("a10g-large", "Nvidia A10G - large", ("A10G", 1), 25000),
            ("a100x4", "4x Nvidia A100", ("A100", 4), 166667))


def _hardware(name: str, pretty: str, gpu, micro_usd: int) -> dict:
    accelerator = {"type": "gpu", "model": gpu[0], "quantity": gpu[1], "vram": "16 GB", "manufacturer": "Nvidia"} \
        if gpu else None
    return {"name": name, "prettyName": pretty, "cpu": "4 vCPU", "ram": "15 GB", "ephemeralStorage": "50 GB",
            "accelerator": accelerator, "unitCostMicroUSD": micro_usd, "unitCostUSD": micro_usd / 1e6,
            "unitLabel": "minute"}


def _key(kind: str, repo_id: str) -> str:
    """How a repo is keyed in FakeHub.repos: models by "user/name", datasets by "datasets/user/name", Spaces by
    "spaces/user/name"."""
    return f"{kind}/{repo_id}" if kind in ("datasets", "spaces") else repo_id


def _owner(key: str) -> str:
    return key.removeprefix("datasets/").removeprefix("spaces/").split("/")[0]


def _kill(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
