"""What a push puts beside the model: a demo Space (a small Gradio app that loads the model with stock timm) and
the dataset version (the run's checked data, as a private imagefolder dataset repo)."""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

from vit import runs
from vit.data import exported_rows
from vit.data.report import content_hash

DEMO_TEMPLATE = Path(__file__).with_name("demo_app.py.tmpl")
DEMO_PACKAGES = ("torch", "torchvision", "timm", "huggingface_hub", "pillow", "numpy")  # gradio: the sdk_version
SPLIT_FOLDERS = {"train": "train", "val": "validation", "test": "test"}  # our split -> the Hub's split folder


def demo_id(repo_id: str) -> str:
    return f"{repo_id}-demo"


def dataset_id(repo_id: str) -> str:
    return f"{repo_id}-data"


def write_demo(dest: str | os.PathLike, repo_id: str) -> Path:
    """The demo Space's files in `dest`: app.py (the model `repo_id` loaded with stock timm), requirements.txt
    (the versions of this machine, pinned) and README.md (the Space's front matter)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "app.py").write_text(DEMO_TEMPLATE.read_text().replace("__MODEL_ID__", repo_id))
    (dest / "requirements.txt").write_text("".join(f"{p}=={metadata.version(p)}\n" for p in DEMO_PACKAGES))
    name = repo_id.split("/")[-1]
    (dest / "README.md").write_text(
        f"---\ntitle: {_yaml_text(name + ' demo')}\nemoji: 🔍\ncolorFrom: indigo\ncolorTo: blue\nsdk: gradio\n"
        f"sdk_version: {metadata.version('gradio')}\napp_file: app.py\npinned: false\nmodels:\n- {repo_id}\n"
        f"short_description: Try the image classifier {_yaml_text(repo_id)[:60]}\n---\n\n"
        f"# {name}\n\nTry the image classifier [{repo_id}](https://huggingface.co/{repo_id}): upload an image or use "
        "the webcam, see its classes and a heatmap of what it looked at. Made with ViT Studio; the app uses stock "
        "timm only.\n")
    return dest


def write_dataset(run_dir: str | os.PathLike, dest: str | os.PathLike, repo_id: str) -> tuple[Path, str]:
    """The run's checked data in `dest` as an imagefolder dataset: <split>/<class>/<image> (train, validation,
    test) with a metadata.csv in each split (the image's original name and sha256), and a README.md dataset card
    with the classes, the counts and the content hash. Images are copied as they are (the bytes the run trained
    on). Returns the folder and the data's content hash (vit.data.report.content_hash)."""
    dest = Path(dest)
    rows = exported_rows(Path(run_dir) / runs.DATA_DIR)
    from vit.safety import safe_join
    per_split: dict[str, list[list[str]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for k, (original, source, label, ours) in enumerate(rows):
        split = SPLIT_FOLDERS.get(ours, "train")
        name = f"{label}/{k:06d}{source.suffix.lower()}"  # (unique, and no name of the user's as a path)
        target = safe_join(dest, split, *name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        per_split.setdefault(split, []).append([name, original, hashlib.sha256(source.read_bytes()).hexdigest()])
        counts.setdefault(split, {}).setdefault(label, 0)
        counts[split][label] += 1
    for split, entries in per_split.items():
        with open(dest / split / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("file_name", "original_name", "sha256"))
            writer.writerows(entries)
    classes = sorted({label for _, _, label, _ in rows})
    content_sha256 = content_hash([SimpleNamespace(sha256=e[2], label=e[0].split("/")[0])
                                   for entries in per_split.values() for e in entries])
    size = "n<1K" if len(rows) < 1000 else "1K<n<10K" if len(rows) < 10_000 else "10K<n<100K"
    table = "\n".join(f"| {split} | " + " | ".join(str(c.get(cls, 0)) for cls in classes) + " |"
                      for split, c in counts.items())
    (dest / "README.md").write_text(
        f"---\ntask_categories:\n- image-classification\ntags:\n- vit-studio\nsize_categories:\n- {size}\n---\n\n"
        f"# The data of {repo_id}\n\nThe exact images and labels the model [{repo_id}](https://huggingface.co/{repo_id})"
        f" was trained and validated on, as ViT Studio checked them: imagefolder layout (split/class/image), each "
        f"split's metadata.csv giving every image's original name and sha256.\n\n"
        f"Content hash (sha256 of the images and their labels): `{content_sha256}`\n\n"
        f"| split | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes) + f"\n{table}\n\n"
        f"Train on it again with ViT Studio: `python -m vit train --data hf-dataset:{dataset_id(repo_id)}` (the splits "
        "are kept).\n")
    return dest, content_sha256


def _yaml_text(text: str) -> str:
    """A YAML string scalar for the Space's front matter (quoted; a name may hold any character)."""
    import json
    return json.dumps(text, ensure_ascii=False)
