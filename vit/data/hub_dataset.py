"""A dataset on the Hugging Face Hub as a source: `hf-dataset:user/name`, optionally `@revision` and `:config`.

    folder, layout, skipped = fetch("hf-dataset:alice/bees@v1", dest, Limits())   # dest/<split>/<class>/<image>

Two layouts of image classification datasets are read:
- imagefolder: images in class folders, under split folders (train/, validation/, test/) or not;
- parquet: files with an image column (the `Image` feature: {bytes, path}) and a label column (a `ClassLabel`,
  whose names are the classes; or plain text), one split per file name (train-00000-of-00001.parquet) or folder.
A README's `configs:` (data_files per split) says which files make a config; without one, a config is a folder.

Every cap of an upload applies before anything big is read: the number of files and their bytes from the repo's
listing (before any download), the number of rows from each parquet file's footer (before any row is read); the
images' pixels are checked from their headers when the folder is read as any other (vit.data.sources). Paths and
labels from the repo are hostile: a path is used only as a name, and every written path is proven inside `dest`.
"""
from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from vit.data.images import IMAGE_SUFFIXES
from vit.data.model import SPLIT_ALIASES, DataError, Limits, Skipped
from vit.safety import check_name, safe_join

PREFIX = "hf-dataset:"
SPLITS = {**SPLIT_ALIASES, "dev": "val"}  # a Hub split -> ours (an upload's aliases, and the Hub's "dev")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")
_CONFIG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
DOWNLOADS = 8  # files fetched at once


@dataclass(frozen=True)
class HubSource:
    repo: str
    revision: str | None = None
    config: str | None = None

    def __str__(self) -> str:
        return PREFIX + self.repo + (f"@{self.revision}" if self.revision else "") + \
            (f":{self.config}" if self.config else "")


def is_hub_source(source) -> bool:
    return isinstance(source, str) and source.strip().startswith(PREFIX)


def parse(text: str) -> HubSource:
    """`hf-dataset:user/name[@revision][:config]` checked, or DataError saying how to write it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    how = "Write it as hf-dataset:user/name, optionally @revision (a branch, tag or commit) and :config."
    body = text.strip()[len(PREFIX):] if is_hub_source(text) else ""
    m = re.fullmatch(r"([^@:\s]+)(?:@([^:\s]+))?(?::(\S+))?", body)
    if not m:
        raise DataError(f"{text.strip()[:120]!r} is not a Hub dataset. {how}")
    repo, revision, config = m.groups()
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise DataError(f"{repo[:100]!r} is not a Hub dataset id (user/name). {how}") from None
    if "/" not in repo:
        raise DataError(f"{repo[:100]!r} needs its owner: user/name. {how}")
    if revision and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise DataError(f"{revision[:100]!r} is not a revision (a branch, tag or commit sha). {how}")
    if config and not _CONFIG.fullmatch(config):
        raise DataError(f"{config[:100]!r} is not a config name (letters, digits, . _ -). {how}")
    return HubSource(repo, revision, config)


def fetch(text: str, dest: str | Path, limits: Limits | None = None, *, token: str | bool | None = None,
          endpoint: str | None = None) -> tuple[Path, str, list[Skipped]]:
    """Download the Hub dataset `text` into `dest` as <split>/<class>/<image>; return the folder, its layout in
    words, and what was left out (and why). `token`: None for this machine's (HF_TOKEN, `hf auth login`), False
    for none (a visitor without one), or the visitor's own. DataError when it cannot be used."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    source, limits, dest = parse(text), limits or Limits(), Path(dest)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(source):
        sha = api.dataset_info(source.repo, revision=source.revision).sha
        files = [f for f in api.list_repo_tree(source.repo, repo_type="dataset", revision=sha, recursive=True)
                 if isinstance(f, RepoFile)]
        readme = _readme(api, source, sha, files, dest)
    chosen = _chosen(files, readme, source)
    parquet = [f for f in chosen if f.path.endswith(".parquet")]
    images = [f for f in chosen if Path(f.path).suffix.lower() in IMAGE_SUFFIXES]
    if not parquet and not images:
        raise DataError(f"{source} has no images and no parquet files{_in_config(source)}: it is not an image "
                        "classification dataset ViT Studio can read (imagefolder or parquet).")
    picked = parquet or images
    if not parquet and len(images) > limits.max_files:
        raise DataError(f"{source} has {len(images):,} images, over the cap of {limits.max_files:,}. Pick a smaller "
                        "config, or a dataset of fewer images.")
    total = sum(f.size or 0 for f in picked)
    if total > limits.max_total_bytes:
        raise DataError(f"{source} holds {total / 1e9:.2f} GB{_in_config(source)}, over the cap of "
                        f"{limits.max_total_bytes / 1e9:.2f} GB. Pick a smaller config or split.")
    dest.mkdir(parents=True, exist_ok=True)

    def download(f) -> Path:
        with _hub_errors(source):
            return _download(api, source, sha, f.path, dest)

    try:
        with ThreadPoolExecutor(DOWNLOADS) as pool:
            got = list(pool.map(download, picked))
        if parquet:
            skipped = _from_parquet(list(zip(parquet, got)), readme, dest, limits, source)
            return dest, f"Hub dataset, parquet, commit {sha[:12]}", skipped
        return dest, f"Hub dataset, imagefolder, commit {sha[:12]}", _from_images(list(zip(images, got)), dest)
    finally:
        shutil.rmtree(_downloads(dest), ignore_errors=True)


def _downloads(dest: Path) -> Path:
    """Where the repo's files are downloaded before they are placed in `dest` (beside it, removed after: nothing
    goes to the shared Hugging Face cache, which nothing would ever clear on a hosted app)."""
    return dest.parent / f".{dest.name}-download"


def _download(api, source: HubSource, sha: str, path: str, dest: Path) -> Path:
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(source.repo, path, repo_type="dataset", revision=sha, token=api.token,
                                endpoint=api.endpoint, local_dir=_downloads(dest)))


def _readme(api, source: HubSource, sha: str, files, dest: Path) -> dict:
    """The README's YAML front matter (configs, dataset_info), or {}."""
    if not any(f.path == "README.md" for f in files):
        return {}
    import yaml
    text = _download(api, source, sha, "README.md", dest).read_text(errors="replace")[:1_000_000]
    m = re.match(r"---\s*\n(.*?)\n---\s*\n", text, re.S)
    try:
        meta = yaml.safe_load(m.group(1)) if m else {}
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _chosen(files, readme: dict, source: HubSource) -> list:
    """The files of the config asked for (README configs' data_files, else a folder named after it; without a
    config: the default config, else everything), each with the split it belongs to (`f.split`)."""
    usable = [f for f in files if _plain(f.path)]
    configs = [c for c in readme.get("configs") or [] if isinstance(c, dict)]
    names = [str(c.get("config_name")) for c in configs]
    wanted = source.config or ("default" if "default" in names else names[0] if names else None)
    if configs and wanted in names:
        data_files = configs[names.index(wanted)].get("data_files")
        patterns = [(d.get("split", "train"), p) for d in (data_files if isinstance(data_files, list) else [])
                    if isinstance(d, dict) for p in ([d.get("path")] if isinstance(d.get("path"), str)
                                                      else d.get("path") or [])]
        if isinstance(data_files, str):
            patterns = [("train", data_files)]
        chosen = []
        for f in usable:
            split = next((s for s, p in patterns if fnmatch(f.path, p)), None)
            if split is not None:
                chosen.append(_with_split(f, SPLITS.get(str(split).lower(), "skip")))
        return chosen
    if source.config:
        inside = [f for f in usable if f.path.startswith(source.config + "/")]
        if not inside:
            folders = sorted({f.path.split("/")[0] for f in usable if "/" in f.path})
            raise DataError(f"{source} has no config {source.config!r}; it has: "
                            f"{', '.join(names or folders) or 'none (leave the config out)'}.")
        usable = inside
    return [_with_split(f, _split_of(f.path)) for f in usable]


def _with_split(f, split: str | None):
    f.split = split
    return f


def _plain(path: str) -> bool:
    parts = path.split("/")
    return not path.startswith("/") and all(p and p not in (".", "..") and not p.startswith(".") for p in parts)


def _split_of(path: str) -> str | None:
    """The split a file's path says: a folder named like one, or a parquet file name's prefix (train-0000...)."""
    parts = path.lower().split("/")
    for part in parts[:-1]:
        if part in SPLITS:
            return SPLITS[part]
    stem = parts[-1].split("-")[0].split(".")[0]
    return SPLITS.get(stem)


def _from_images(pairs: list, dest: Path) -> list[Skipped]:
    """imagefolder: each image under its split and class (the folder it is in)."""
    skipped = []
    for k, (f, local) in enumerate(pairs):
        parts = f.path.split("/")
        label = parts[-2] if len(parts) >= 2 else None
        if f.split == "skip":
            skipped.append(Skipped(f.path, "in a split other than train, validation and test"))
        elif label is None or label.lower() in SPLITS or label.lower() == "data":
            skipped.append(Skipped(f.path, "not inside a class folder (its class would come from the folder name)"))
        elif problem := check_name(label, "class folder name"):
            skipped.append(Skipped(f.path, problem))
        else:
            _place(dest, f.split, label, f"{k:06d}{Path(f.path).suffix.lower()}", local.read_bytes())
    return skipped


def _from_parquet(pairs: list, readme: dict, dest: Path, limits: Limits, source: HubSource) -> list[Skipped]:
    """parquet: each row's image bytes under its split and class (the label column, named by its ClassLabel)."""
    import pyarrow.parquet as pq
    files = [(f, pq.ParquetFile(local)) for f, local in pairs if f.split != "skip"]
    rows = sum(pf.metadata.num_rows for _, pf in files)
    if rows > limits.max_files:
        raise DataError(f"{source} has {rows:,} rows{_in_config(source)}, over the cap of {limits.max_files:,}. "
                        "Pick a smaller config or split.")
    skipped, k = [], 0
    for f, pf in files:
        image_col, label_col, names = _columns(pf, readme, source)
        for batch in pf.iter_batches(batch_size=64, columns=[image_col, label_col]):
            for image, label in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                k += 1
                where = f"{f.path} row {k}"
                blob = image.get("bytes") if isinstance(image, dict) else image if isinstance(image, bytes) else None
                name = names[label] if names and isinstance(label, int) and 0 <= label < len(names) else label
                if not blob:
                    skipped.append(Skipped(where, "no image bytes in the row (an image stored elsewhere)"))
                elif name is None or isinstance(name, int) and label < 0:
                    skipped.append(Skipped(where, "no label"))
                elif problem := check_name(str(name), "label"):
                    skipped.append(Skipped(where, problem))
                else:
                    _place(dest, f.split, str(name), f"{k:06d}{_suffix(blob, image)}", blob)
    return skipped


def _columns(pf, readme: dict, source: HubSource) -> tuple[str, str, list[str] | None]:
    """The image column, the label column and the class names (None: the labels are the names), from the parquet
    file's own features (datasets writes them into its metadata), else the README's dataset_info, else by name."""
    features = {}
    meta = pf.schema_arrow.metadata or {}
    try:
        features = json.loads(meta.get(b"huggingface", b"{}")).get("info", {}).get("features", {}) or {}
    except ValueError:
        pass
    if not features:
        info = readme.get("dataset_info")
        info = info[0] if isinstance(info, list) and info else info
        for feat in (info or {}).get("features", []) if isinstance(info, dict) else []:
            if isinstance(feat, dict) and "name" in feat:
                kind = feat.get("dtype")
                labels = kind.get("class_label") if isinstance(kind, dict) else None
                features[feat["name"]] = {"_type": "ClassLabel", "names": [labels["names"][k] for k in
                                          sorted(labels["names"], key=int)]} if labels else {"_type": kind}
    columns = pf.schema_arrow.names
    image = next((c for c in columns if features.get(c, {}).get("_type") == "Image"), None) or \
        next((c for c in columns if c.lower() in ("image", "img", "picture")), None)
    label = next((c for c in columns if features.get(c, {}).get("_type") == "ClassLabel"), None) or \
        next((c for c in columns if c.lower() in ("label", "labels", "class", "category")), None)
    if image is None or label is None:
        raise DataError(f"{source}: no {'image' if image is None else 'label'} column found among "
                        f"{', '.join(columns[:20])}. ViT Studio reads parquet with an Image column and a ClassLabel "
                        "(or label) column.")
    names = features.get(label, {}).get("names")
    return image, label, [str(n) for n in names] if isinstance(names, list) else None


def _suffix(blob: bytes, image) -> str:
    given = Path(str(image.get("path") or "")).suffix.lower() if isinstance(image, dict) else ""
    if given in IMAGE_SUFFIXES:
        return given
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP":
        return ".webp"
    return next((s for magic, s in _MAGIC if blob.startswith(magic)), ".png")


def _place(dest: Path, split: str | None, label: str, name: str, blob: bytes) -> None:
    target = safe_join(dest, split or "train", label, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob)


def _in_config(source: HubSource) -> str:
    return f" (config {source.config})" if source.config else ""


class _hub_errors:
    """The Hub's refusals and the network's failures as DataError, in words (never with a token)."""

    def __init__(self, source: HubSource):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
        from vit.models import hub_call_failure
        if error is None or isinstance(error, DataError):
            return False
        if isinstance(error, RevisionNotFoundError):
            raise DataError(f"{self.source}: no revision {self.source.revision!r} (a branch, tag or commit of the "
                            "dataset).") from None
        if isinstance(error, RepositoryNotFoundError):
            raise DataError(f"{self.source.repo} was not found on the Hub, or it is private or gated: check the "
                            "name, or give a token that may read it.") from None
        failure = hub_call_failure(error)
        if failure is None:
            return False
        said = {"offline": "Offline mode is on (HF_HUB_OFFLINE is set): unset it to read a dataset from the Hub.",
                "network": f"Cannot reach the Hugging Face Hub ({type(error).__name__}); check the connection.",
                401: "The Hub rejected the token (invalid or revoked).",
                403: f"The token may not read {self.source.repo} (gated: accept its terms on the Hub first)."}
        raise DataError(said.get(failure) or f"The Hugging Face Hub answered {failure} for {self.source}.") from None
