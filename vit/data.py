"""Dataset ingestion: turn a zip, a folder, per-class uploads or a labels.csv
manifest into a validated, split dataset with a health report, and keep its
decoded images in memory for training.

    with load_dataset("pets.zip") as ds:
        print(ds.report.to_text())
        cache = DecodeCache(ds.items, short_side=256)
        cache.fill()

Every image is opened with Pillow and normalised to 8-bit RGB (`read_rgb`).
Archives are extracted into a per-upload temporary workspace under
index-based file names, so no name inside an archive ever reaches the file
system; the workspace is removed when the dataset is closed. Input that cannot
be used raises `DataError` with a message that says what is wrong and how to
fix it; single bad files are skipped and listed in the report with a reason.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import io
import os
import random
import re
import shutil
import stat
import statistics
import tempfile
import threading
import weakref
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vit.safety import HostLimits, check_name, safe_join

try:  # HEIC/HEIF/AVIF support where the optional plugin is installed
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - the plugin is optional
    pillow_heif = None

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
MANIFEST_NAME = "labels.csv"
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", ".git", ".ipynb_checkpoints"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst")
# Formats Pillow may open. Others (EPS runs Ghostscript, for one) are refused.
Image.init()
SAFE_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "ICO", "TGA",
                                 "HEIF", "AVIF") if f in Image.OPEN)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
                  ".heic", ".heif", ".avif", ".ppm", ".pgm", ".pbm", ".jfif", ".ico"}

# Images larger than this decode one at a time per process (see read_rgb).
BIG_IMAGE_PIXELS = 16_000_000
_BIG_DECODES = threading.BoundedSemaphore(1)
_REDUCIBLE_MODES = ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK")
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel
PROBE_MAX_SIDE = 512  # a dataset check decodes every byte (truncation shows) but keeps only this much

# Warnings thresholds of the health report.
IMBALANCE_WARN_RATIO = 3.0
TINY_CLASS_IMAGES = 10
SMALL_IMAGE_SIDE = 64


class DataError(ValueError):
    """The input cannot be used as a dataset; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    """Caps that keep hostile or accidental input from exhausting the machine."""

    max_files: int = 50_000                 # entries in an archive
    max_total_bytes: int = 4 * 1024 ** 3    # uncompressed bytes in an archive
    max_ratio: float = 200.0                # uncompressed / compressed, per archive and per large member
    max_pixels: int = field(default_factory=lambda: HostLimits.from_env().max_pixels)  # one image (bombs)
    min_side: int = 8                       # images smaller than this (either side) are skipped
    max_name_chars: int = 1024              # a path inside the dataset
    max_component_bytes: int = 255          # one folder or file name, as on common file systems


@dataclass
class Item:
    """One usable image."""

    name: str            # where the user put it, e.g. "cat/001.jpg"
    path: Path           # where its bytes are now
    label: str
    split: str | None    # split given by the dataset layout, else None
    sha256: str
    width: int           # as displayed (EXIF orientation applied)
    height: int
    mode: str            # Pillow colour mode of the file, before conversion


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class HealthReport:
    source: str
    layout: str
    classes: list[str]
    counts: dict[str, int]
    split_counts: dict[str, dict[str, int]]
    imbalance_ratio: float | None
    sizes: dict[str, dict[str, float]]
    modes: dict[str, int]
    skipped: list[Skipped]
    duplicates: list[list[str]]
    leakage: list[list[str]]
    errors: list[str]
    warnings: list[str]
    reviewed: dict[str, int] = field(default_factory=dict)  # the label review's edits: relabelled, dropped

    @property
    def ok(self) -> bool:
        """True when the dataset can be trained on (warnings allowed)."""
        return not self.errors

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def refusal(self) -> str:
        """Why the dataset cannot be trained on, as every caller says it ("" when it can)."""
        return "The dataset cannot be trained on: " + " ".join(self.errors) if self.errors else ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["total"] = self.total
        return d

    def to_text(self) -> str:
        return _render_report(self, markdown=False)

    def to_markdown(self) -> str:
        return _render_report(self, markdown=True)


@dataclass
class Dataset:
    """A validated dataset. Owns the temporary workspace it was extracted into."""

    classes: list[str]
    items: list[Item]
    train: list[int]
    val: list[int]
    test: list[int]
    report: HealthReport
    workspace: Path | None = None
    _finalizer: Callable | None = field(default=None, repr=False)

    def labels(self, indices: Iterable[int]) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[self.items[i].label] for i in indices]

    def close(self) -> None:
        """Remove the temporary workspace (a no-op for datasets read in place)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_dataset(source: str | os.PathLike | Mapping[str, Sequence[str | os.PathLike]], *,
                 val_fraction: float = 0.2, seed: int = 0, limits: Limits = Limits(),
                 workspace_root: str | os.PathLike | None = None,
                 workers: int | None = None, edits: Mapping[str, str | None] | None = None) -> Dataset:
    """Read a dataset from a zip file, a directory, or a {class name: [image files]} mapping.

    `edits` (the label review: image name -> its class, or None to leave it out) are applied as the
    images are read; a name not in the dataset, or a class it does not have, is ignored.

    Raises DataError when the input cannot be read at all (missing, not a zip,
    over a cap); problems a dataset can have (one class, too few images) are
    errors in `report` instead, so the user sees the whole picture at once.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    workspace = None
    try:
        declared: list[str] = []
        if isinstance(source, Mapping):
            entries, declared = _class_upload_entries(source)
            entries, skipped = _split_off_junk(entries)
            layout, label = "per-class uploads", "uploads"
        else:
            path = Path(source)
            label = str(path)
            if not path.exists():
                raise DataError(f"{path} does not exist. Give a .zip file or a folder of class folders.")
            if path.is_dir():
                raw = list(_walk_directory(path, limits))
            elif zipfile.is_zipfile(path):
                workspace = Path(tempfile.mkdtemp(prefix="vit-upload-", dir=workspace_root))
                raw = list(_extract_zip(path, workspace, limits))
            else:
                raise DataError(f"{path.name} is neither a folder nor a .zip archive. "
                                "Zip the class folders (cat/..., dog/...) and upload the .zip.")
            entries, skipped, layout = _assign_labels(raw, limits)
        entries, reviewed = _reviewed(entries, skipped, edits or {}, declared)
        dataset = _build(entries, skipped, layout, label, declared, val_fraction, seed, limits, workspace, workers)
        dataset.report.reviewed = reviewed
        return dataset
    except BaseException:
        if workspace is not None:
            shutil.rmtree(workspace, ignore_errors=True)
        raise


def read_rgb(source: str | os.PathLike | io.BytesIO, *, limits: Limits = Limits(),
             draft_side: int | None = None, max_side: int | None = None
             ) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open an image as 8-bit RGB with EXIF orientation applied.

    Returns (image, original colour mode, displayed size before any reduction). The size is read
    from the header and checked against the caps before anything is decoded. `draft_side` lets
    JPEG decode at a reduced scale while keeping the shorter side at least that long; `max_side`
    reduces a larger image (by an integer factor, at decode time for JPEG) so that its longer side
    is at most that. Images over BIG_IMAGE_PIXELS decode one at a time per process, so concurrent
    requests cannot stack their peaks. Raises DataError with a reason.
    """
    try:
        img = Image.open(source, formats=SAFE_FORMATS)
    except Image.DecompressionBombError:
        raise DataError(f"image has too many pixels (cap max_pixels={limits.max_pixels:,})")
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read")
    except OSError as e:
        raise DataError(f"corrupt or truncated image ({e})")
    with img:
        w, h = img.size
        if w * h > limits.max_pixels:
            raise DataError(f"image has too many pixels ({w}x{h} = {w * h:,}; cap max_pixels={limits.max_pixels:,})")
        if min(w, h) < limits.min_side:
            raise DataError(f"too small ({w}x{h}; each side must be at least {limits.min_side} px)")
        mode = img.mode
        big = w * h > BIG_IMAGE_PIXELS
        try:
            with _BIG_DECODES if big else contextlib.nullcontext():
                orientation = img.getexif().get(0x0112, 1)  # (a PNG is read to its end for this)
                size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
                if img.format == "JPEG":
                    scale = max(min(w, h) / draft_side if draft_side else 1, max(w, h) / max_side if max_side else 1)
                    if scale >= 2:
                        img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
                img.load()
                pixels = img
                if img.mode in WIDE_MODES:
                    pixels = _eight_bit(img)
                    pixels.info = dict(img.info)  # (its EXIF orientation)
                rgb = to_rgb(ImageOps.exif_transpose(reduced(pixels, max_side)))
                rgb = reduced(rgb, max_side)
        except Image.DecompressionBombError:
            raise DataError(f"image has too many pixels (cap max_pixels={limits.max_pixels:,})")
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DataError(f"corrupt or truncated image ({e})")
    return rgb, mode, size


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white; 16-bit and float grey as in
    _eight_bit."""
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_MODES:
        return _eight_bit(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """img shrunk by an integer factor so its longer side is at most max_side, where its mode allows
    (read_rgb reduces the others after conversion to RGB)."""
    if not max_side or max(img.size) <= max_side or img.mode not in _REDUCIBLE_MODES:
        return img
    return img.reduce(math.ceil(max(img.size) / max_side))


def thumbnails(dataset: Dataset, per_class: int = 4, size: int = 128) -> list[tuple[Image.Image, str]]:
    """A few images of each class, as (thumbnail, caption) pairs, for a sample grid."""
    out = []
    for cls in dataset.classes:
        for it in [it for it in dataset.items if it.label == cls][:per_class]:
            img, _, _ = read_rgb(it.path, draft_side=size, max_side=4 * size)
            img.thumbnail((size, size))
            out.append((img, f"{cls}: {PurePosixPath(it.name).name}"))
    return out


def export_dataset(dataset: Dataset, dest: str | os.PathLike) -> Path:
    """Copy the usable images of `dataset` into the folder `dest` with a labels.csv manifest.

    The manifest records every image's label and split, so `load_dataset(dest)`
    gives back the same images, names, classes and split, whatever the
    original came as (a temporary zip workspace, uploads). Skipped files stay out.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    split_of = {i: s for s, idx in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))
                for i in idx}
    rows, used = [], set()
    for i, item in enumerate(dataset.items):
        problem = check_name(item.label, "label")
        if problem:  # every reader checks labels; this is the last line of defence before a write
            raise DataError(f"Cannot save image {item.name!r}: {problem}.")
        name = item.name
        if not _plain_image_name(name) or name.lower() in used:
            name = f"{item.label}/{i:06d}{_image_suffix(item)}"  # a clash or an unsafe uploaded name
        used.add(name.lower())
        target = safe_join(dest, *name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        ours = dataset.workspace is not None and Path(item.path).is_relative_to(dataset.workspace)
        _link_or_copy(item.path, target, link=ours)  # a user's own file is always copied
        rows.append((name, item.label, split_of[i]))
    with open(dest / MANIFEST_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)
    return dest


class DecodeCache:
    """Decoded training images kept in memory as uint8 CHW tensors.

    Each image is decoded once and resized so its shorter side is
    `short_side` (never upscaled). Images beyond `max_bytes` are not kept and
    are decoded from disk when asked for, so a large dataset still trains.
    """

    def __init__(self, items: Sequence[Item] | Sequence[str | os.PathLike], *, short_side: int = 256,
                 max_bytes: int = 2 * 1024 ** 3, limits: Limits = Limits()):
        self.paths = [Path(i.path) if isinstance(i, Item) else Path(i) for i in items]
        self.short_side = short_side
        self.max_bytes = max_bytes
        self.limits = limits
        self.nbytes = 0
        self._images: list = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def cached(self) -> int:
        return sum(t is not None for t in self._images)

    def fill(self, workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> "DecodeCache":
        """Decode every image not yet cached, until the memory cap is reached."""
        todo = [i for i, t in enumerate(self._images) if t is None]
        done = 0
        with ThreadPoolExecutor(max_workers=_workers(workers)) as pool:
            for i, tensor in zip(todo, pool.map(self._decode, todo)):
                self._keep(i, tensor)
                done += 1
                if progress:
                    progress(done, len(todo))
        return self

    def __getitem__(self, i: int):
        tensor = self._images[i]
        if tensor is None:
            tensor = self._decode(i)
            self._keep(i, tensor)
        return tensor

    def pil(self, i: int) -> Image.Image:
        """The cached image as a PIL image (for PIL-based transforms)."""
        return Image.fromarray(self[i].permute(1, 2, 0).numpy())

    def _decode(self, i: int):
        import torch

        img, _, _ = read_rgb(self.paths[i], limits=self.limits, draft_side=self.short_side)
        w, h = img.size
        if min(w, h) > self.short_side:
            scale = self.short_side / min(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR,
                             reducing_gap=None)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()

    def _keep(self, i: int, tensor) -> None:
        size = tensor.numel()
        with self._lock:
            if self._images[i] is None and self.nbytes + size <= self.max_bytes:
                self._images[i] = tensor
                self.nbytes += size


# ---------------------------------------------------------------------------
# Helpers: reading sources into (name, path) entries


@dataclass
class _Entry:
    name: str            # relative path as the user sees it (POSIX separators)
    path: Path
    label: str | None = None
    split: str | None = None


def _walk_directory(root: Path, limits: Limits) -> Iterable[_Entry | Skipped]:
    real_root = root.resolve()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _is_junk(d))
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                yield Skipped(_rel(root, Path(dirpath, d)), "symbolic link to a folder (not followed)")
        for fname in sorted(filenames):
            full = Path(dirpath, fname)
            name = _rel(root, full)
            if _is_junk(fname):
                continue
            count += 1
            if count > limits.max_files:
                raise DataError(f"{root} holds more than {limits.max_files:,} files (cap max_files). "
                                "Point at a smaller folder or raise the cap.")
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(real_root):
                    yield Skipped(name, "symbolic link pointing outside the dataset folder (not followed)")
                    continue
            yield _Entry(name, full)


def _extract_zip(archive: Path, workspace: Path, limits: Limits) -> Iterable[_Entry | Skipped]:
    """Extract the safe members of a zip into `workspace` under index-based names."""
    try:
        zf = zipfile.ZipFile(archive)
    except UnicodeDecodeError:
        raise DataError(f"{archive.name} has a file name that is marked UTF-8 but is not valid UTF-8. "
                        "Re-create the zip with your system's 'Compress' command.")
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive.name} is not a readable zip archive ({e}). Re-create the zip.")
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_files:
            raise DataError(f"{archive.name} holds {len(infos):,} files, over the cap of "
                            f"{limits.max_files:,} (max_files). Split the dataset or raise the cap.")
        total = sum(i.file_size for i in infos)
        if total > limits.max_total_bytes:
            raise DataError(f"{archive.name} would unpack to {_human(total)}, over the cap of "
                            f"{_human(limits.max_total_bytes)} (max_total_bytes). Use smaller images or raise the cap.")
        packed = sum(i.compress_size for i in infos)
        if total > 1024 ** 2 and total > limits.max_ratio * max(packed, 1):
            raise DataError(f"{archive.name} unpacks {total / max(packed, 1):.0f}x larger than it is, over the "
                            f"compression-ratio cap of {limits.max_ratio:g} (max_ratio): it looks like a zip bomb. "
                            "Images barely compress; re-create the zip from the image files.")
        written = 0
        for index, info in enumerate(infos):
            name = _member_name(info)
            problem = _unsafe_member(info, name, limits)
            if problem:
                yield Skipped(name, problem)
                continue
            if any(_is_junk(part) for part in PurePosixPath(name).parts):
                continue
            if name.lower().endswith(ARCHIVE_SUFFIXES):
                yield Skipped(name, "archive inside the archive (ignored; unpack it into class folders)")
                continue
            if info.file_size > 1024 ** 2 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise DataError(f"{archive.name}: {name} unpacks {info.file_size / max(info.compress_size, 1):.0f}x "
                                f"larger than it is, over the compression-ratio cap of {limits.max_ratio:g} "
                                "(max_ratio): it looks like a zip bomb.")
            target = workspace / f"{index:06d}{_safe_suffix(name)}"
            try:
                written += _copy_member(zf, info, target, limits.max_total_bytes - written)
            except _OverCap:
                raise DataError(f"{archive.name} unpacks to more than {_human(limits.max_total_bytes)} "
                                "(max_total_bytes) though it declares less: the archive is malformed or hostile.")
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
                yield Skipped(name, f"cannot be extracted ({e})")
                continue
            yield _Entry(name, target)


class _OverCap(Exception):
    pass


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream one member to disk, never writing more than declared or than `budget`."""
    allowed = min(info.file_size, budget)
    n = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if n > allowed:
                raise _OverCap()
            dst.write(chunk)
    return n


def _member_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & 0x800:
        try:  # zips made without the UTF-8 flag by tools that still wrote UTF-8
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name.replace("\\", "/")


def _unsafe_member(info: zipfile.ZipInfo, name: str, limits: Limits) -> str | None:
    if (info.external_attr >> 16) and stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link inside the archive (ignored for safety)"
    if _escapes(name):
        return "unsafe path that points outside the dataset (ignored for safety)"
    if "\x00" in name or any(ord(c) < 32 for c in name):
        return "file name with control characters (ignored for safety)"
    if len(name) > limits.max_name_chars or any(
            len(p.encode("utf-8", "surrogateescape")) > limits.max_component_bytes for p in name.split("/")):
        return (f"name too long (more than {limits.max_component_bytes} bytes in one part or "
                f"{limits.max_name_chars} characters in all)")
    return None


def _class_upload_entries(uploads: Mapping[str, Sequence[str | os.PathLike]]) -> tuple[list[_Entry], list[str]]:
    entries = []
    seen = {}
    for raw_name, files in uploads.items():
        name = _check_class_name(raw_name)
        if name.lower() in seen:
            raise DataError(f"Two classes are both named '{seen[name.lower()]}' ('{name}' differs only in case). "
                            "Give each class a different name.")
        seen[name.lower()] = name
        for f in files or []:
            p = Path(f)
            entries.append(_Entry(f"{name}/{p.name}", p, label=name))
    return entries, list(seen.values())


def _check_class_name(raw: str) -> str:
    name = (raw or "").strip()
    if not name:
        raise DataError("A class has no name. Type a name for every class.")
    problem = check_name(name, "class name")
    if problem:
        raise DataError(f"{problem[0].upper()}{problem[1:]}. Use a plain name (letters, digits, spaces, - or _).")
    return name


def _split_off_junk(entries: list[_Entry]) -> tuple[list[_Entry], list[Skipped]]:
    kept, skipped = [], []
    for e in entries:
        if _is_junk(PurePosixPath(e.name).name):
            continue
        if e.name.lower().endswith(ARCHIVE_SUFFIXES):
            skipped.append(Skipped(e.name, "archive among the images (ignored; upload the images themselves)"))
            continue
        kept.append(e)
    return kept, skipped


# ---------------------------------------------------------------------------
# Helpers: layout detection


def _assign_labels(raw: list[_Entry | Skipped], limits: Limits) -> tuple[list[_Entry], list[Skipped], str]:
    skipped = [r for r in raw if isinstance(r, Skipped)]
    entries = [r for r in raw if isinstance(r, _Entry)]
    prefix = _common_root(entries)
    for e in entries:
        e.name = e.name[len(prefix):]
    manifests = [e for e in entries if e.name.lower() == MANIFEST_NAME]
    if manifests:
        return (*_manifest_labels(manifests[0], entries, skipped, limits), "labels.csv manifest")
    tops = {e.name.split("/")[0].lower() for e in entries if "/" in e.name}
    split_layout = bool(tops) and "train" in {SPLIT_ALIASES.get(t) for t in tops}
    labelled = []
    for e in entries:
        parts = e.name.split("/")
        if split_layout:
            split = SPLIT_ALIASES.get(parts[0].lower())
            if split is None or len(parts) < 3:
                skipped.append(Skipped(e.name, "not inside a train/, val/ or test/ class folder"))
                continue
            e.split, e.label = split, parts[1]
        else:
            if len(parts) < 2:
                skipped.append(Skipped(e.name, "not inside a class folder (put it in a folder named after its class)"))
                continue
            e.label = parts[0]
        problem = check_name(e.label, "class folder name")
        if problem:
            skipped.append(Skipped(e.name, f"{problem}; rename the folder"))
            continue
        labelled.append(e)
    return labelled, skipped, "train/val class folders" if split_layout else "class folders"


def _common_root(entries: list[_Entry]) -> str:
    """The enclosing folder(s) that hold everything, e.g. 'pets/' in pets/cat/1.jpg.

    Descends only while the single folder holds more folders, so a lone class
    folder stays a class. A folder named like a split is never an enclosure.
    """
    prefix = ""
    for _ in range(3):
        rest = [e.name[len(prefix):] for e in entries]
        tops = {r.split("/")[0] for r in rest}
        if len(tops) != 1 or not all("/" in r for r in rest):
            break
        top = tops.pop()
        if top.lower() in SPLIT_ALIASES or not any(r.count("/") >= 2 for r in rest):
            break
        prefix += top + "/"
    return prefix


def _manifest_labels(manifest: _Entry, entries: list[_Entry], skipped: list[Skipped],
                     limits: Limits) -> tuple[list[_Entry], list[Skipped]]:
    base = PurePosixPath(manifest.name).parent
    by_name = {e.name: e for e in entries if e is not manifest}
    try:
        text = manifest.path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{MANIFEST_NAME} is not UTF-8 text. Save it as UTF-8 CSV with columns path,label.")
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "path" not in header or "label" not in header:
        raise DataError(f"{MANIFEST_NAME} needs a header row with columns 'path' and 'label' "
                        f"(found {', '.join(header) or 'nothing'}).")
    ip, il = header.index("path"), header.index("label")
    isplit = header.index("split") if "split" in header else None
    labelled, used = [], set()
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ip, il):
            skipped.append(Skipped(f"{MANIFEST_NAME}:{lineno}", "row has fewer columns than the header"))
            continue
        rel, label = row[ip].strip().replace("\\", "/"), row[il].strip()
        name = str(base / rel) if str(base) != "." else rel
        if _escapes(rel):
            skipped.append(Skipped(f"{MANIFEST_NAME}:{lineno}", f"path {rel!r} points outside the dataset (ignored)"))
            continue
        entry = by_name.get(PurePosixPath(name).as_posix())
        if entry is None:
            skipped.append(Skipped(f"{MANIFEST_NAME}:{lineno}", f"file {rel!r} is not in the dataset"))
            continue
        used.add(entry.name)  # listed: skipped below for its own reason, never also as "not listed"
        if not label:
            skipped.append(Skipped(entry.name, f"{MANIFEST_NAME} line {lineno} gives no label"))
            continue
        problem = check_name(label, "label")
        if problem:
            skipped.append(Skipped(entry.name, f"{MANIFEST_NAME} line {lineno}: {problem}; use a plain class name"))
            continue
        split = None
        if isplit is not None and len(row) > isplit and row[isplit].strip():
            split = SPLIT_ALIASES.get(row[isplit].strip().lower())
            if split is None:
                skipped.append(Skipped(entry.name, f"{MANIFEST_NAME} line {lineno}: unknown split "
                                                   f"{row[isplit].strip()!r} (use train, val or test)"))
                continue
        used.add(entry.name)
        labelled.append(_Entry(entry.name, entry.path, label=label, split=split))
    splits = {e.split for e in labelled}
    if None in splits and len(splits) > 1:
        raise DataError(f"{MANIFEST_NAME} gives a split for some rows but not others. "
                        "Fill the split column on every row, or leave it out.")
    for e in entries:
        if e is not manifest and e.name not in used:
            skipped.append(Skipped(e.name, f"not listed in {MANIFEST_NAME}"))
    return labelled, skipped


# ---------------------------------------------------------------------------
# Helpers: decoding, duplicates, split and report


def _build(entries: list[_Entry], skipped: list[Skipped], layout: str, source: str, declared: list[str],
           val_fraction: float, seed: int, limits: Limits, workspace: Path | None, workers: int | None) -> Dataset:
    with ThreadPoolExecutor(max_workers=_workers(workers)) as pool:
        probed = list(pool.map(lambda e: _probe(e, limits), entries))
    items: list[Item] = []
    for entry, result in zip(entries, probed):
        if isinstance(result, str):
            skipped.append(Skipped(entry.name, result))
        else:
            items.append(result)
    items.sort(key=lambda it: (_natural_key(it.label), it.split or "", _natural_key(it.name)))
    items, dup_skipped, duplicates, leakage, conflicts = _deduplicate(items)
    skipped.extend(dup_skipped)
    # Every class the user made counts, even one whose every file was skipped: the report must name it.
    classes = sorted({e.label for e in entries} | set(declared), key=_natural_key)
    train, val, test = _split(items, classes, val_fraction, seed)
    label_of = {e.name: e.label for e in entries}
    skipped_per_class = Counter(label_of.get(s.name) for s in skipped)
    report = _report(source, layout, classes, items, train, val, test, skipped, duplicates, leakage, conflicts,
                     skipped_per_class)
    dataset = Dataset(classes, items, train, val, test, report, workspace)
    if workspace is not None:
        dataset._finalizer = weakref.finalize(dataset, shutil.rmtree, workspace, True)
    return dataset


def _reviewed(entries: list[_Entry], skipped: list[Skipped], edits: Mapping[str, str | None],
              declared: list[str]) -> tuple[list[_Entry], dict[str, int]]:
    """The entries after the label review: relabelled to a class the dataset has, or dropped (skipped,
    saying so); how many of each."""
    if not edits:
        return entries, {}
    classes = {e.label for e in entries} | set(declared)
    kept, counts = [], {"relabelled": 0, "dropped": 0}
    for e in entries:
        if e.name not in edits or (edits[e.name] is not None and edits[e.name] not in classes):
            kept.append(e)
        elif edits[e.name] is None:
            skipped.append(Skipped(e.name, "dropped in the label review (Train tab)"))
            counts["dropped"] += 1
        else:
            counts["relabelled"] += edits[e.name] != e.label
            kept.append(replace(e, label=edits[e.name]))
    return kept, counts


def _probe(entry: _Entry, limits: Limits) -> Item | str:
    """Validate one file by decoding it fully; return an Item or the reason it is skipped."""
    try:
        data = entry.path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not data:
        return "empty file (0 bytes)"
    try:
        # Decoding at 1/8 scale still reads every byte, so truncation is caught, but costs far less.
        _, mode, (w, h) = read_rgb(io.BytesIO(data), limits=limits, draft_side=limits.min_side,
                                   max_side=PROBE_MAX_SIDE)
    except DataError as e:
        reason = str(e)
        if reason.startswith("not an image") and entry.path.suffix.lower() in IMAGE_SUFFIXES | {""}:
            reason = "corrupt or unreadable image (Pillow cannot identify it)"
        elif reason.startswith("not an image"):
            reason = "not an image file"
        return reason
    return Item(entry.name, entry.path, entry.label, entry.split, hashlib.sha256(data).hexdigest(), w, h, mode)


def _deduplicate(items: list[Item]):
    """Keep one copy of identical files per split; report copies across splits and labels."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.sha256].append(it)
    kept, skipped, duplicates, leakage, conflicts = [], [], [], [], []
    drop = set()
    for same in groups.values():
        if len(same) < 2:
            continue
        duplicates.append([it.name for it in same])
        labels = sorted({it.label for it in same}, key=_natural_key)
        if len(labels) > 1:  # which label is right cannot be known: leave every copy out
            conflicts.append((same[0].name, labels))
            for it in same:
                others = [lb for lb in labels if lb != it.label]
                skipped.append(Skipped(it.name, f"the same image is also labelled {_quote_list(others)} "
                                                f"(e.g. {next(o.name for o in same if o.label != it.label)}); "
                                                "left out because its label is ambiguous"))
                drop.add(id(it))
            continue
        same = sorted(same, key=lambda it: (len(it.name), _natural_key(it.name)))  # the original, not "copy"
        first_in_split: dict[str | None, Item] = {}
        for it in same:
            if it.split in first_in_split:
                first = first_in_split[it.split]
                skipped.append(Skipped(it.name, f"exact duplicate of {first.name}"))
                drop.add(id(it))
            else:
                first_in_split[it.split] = it
        by_split = {s: it.name for s, it in first_in_split.items()}
        if "train" in by_split:
            leakage += [[by_split["train"], by_split[s]] for s in ("val", "test") if s in by_split]
    kept = [it for it in items if id(it) not in drop]
    return kept, skipped, duplicates, leakage, conflicts


def _split(items: list[Item], classes: list[str], val_fraction: float, seed: int):
    """Stratified, seeded split. A split given by the layout is kept as is."""
    given = {it.split for it in items}
    train, val, test = [], [], []
    if given & {"val"}:
        for i, it in enumerate(items):
            {"train": train, "val": val, "test": test}[it.split].append(i)
        return train, val, test
    rng = random.Random(seed)
    for cls in classes:
        idx = [i for i, it in enumerate(items) if it.label == cls and it.split != "test"]
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        if len(idx) >= 2 and val_fraction > 0:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val += sorted(idx[:n_val])
        train += sorted(idx[n_val:])
    test = [i for i, it in enumerate(items) if it.split == "test"]
    return sorted(train), sorted(val), test


def _report(source, layout, classes, items, train, val, test, skipped, duplicates, leakage, conflicts,
            skipped_per_class) -> HealthReport:
    counts = {c: 0 for c in classes}
    for it in items:
        counts[it.label] += 1
    split_counts = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        if idx:
            c = Counter(items[i].label for i in idx)
            split_counts[name] = {cls: c.get(cls, 0) for cls in classes}
    sizes = {}
    if items:
        for key in ("width", "height"):
            values = [getattr(it, key) for it in items]
            sizes[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    imbalance = max(counts.values()) / min(counts.values()) if counts and min(counts.values()) else None
    errors, warnings = [], []
    if not items:
        if skipped:
            reason, n = Counter(s.reason for s in skipped).most_common(1)[0]
            errors.append(f"No usable images: all {len(skipped)} files were skipped; {n} of them because: {reason}.")
        else:
            errors.append("No images found. Put images in one folder per class (cat/001.jpg, dog/001.jpg, ...), "
                          "or add a labels.csv with columns path,label.")
    elif len(classes) == 1:
        errors.append(f"Only one class found ('{classes[0]}'). A classifier needs at least 2 classes: "
                      "add a folder of images for each other class.")
    for cls in classes:
        if counts[cls] < 2:
            has = "no images" if counts[cls] == 0 else "only 1 image"
            if skipped_per_class.get(cls):
                has = f"{'no usable images' if counts[cls] == 0 else 'only 1 usable image'} " \
                      f"({skipped_per_class[cls]} of its files were skipped; the report lists why)"
            errors.append(f"Class '{cls}' has {has}; each class needs at least 2 (one to train on, one to validate).")
    given_split = any(it.split for it in items)
    if given_split and "val" in split_counts and len(classes) > 1:
        missing = [c for c in classes if split_counts["val"][c] == 0 and counts[c] >= 2]
        if missing:
            warnings.append(f"No validation images for {_quote_list(missing)}: their accuracy cannot be measured. "
                            "Add some to val/.")
    if given_split and "train" in split_counts:
        missing = [c for c in classes if split_counts["train"][c] == 0 and counts[c] >= 2]
        if missing:
            errors.append(f"No training images for {_quote_list(missing)}. Add some to train/.")
    if imbalance and imbalance >= IMBALANCE_WARN_RATIO:
        big = max(counts, key=counts.get)
        small = min(counts, key=counts.get)
        warnings.append(f"Classes are imbalanced: '{big}' has {counts[big]} images, '{small}' has {counts[small]} "
                        f"(ratio {imbalance:.1f}). The model will favour '{big}'; add images of the small classes "
                        "and judge it by per-class recall, not accuracy alone.")
    tiny = [c for c in classes if 2 <= counts[c] < TINY_CLASS_IMAGES]
    if tiny:
        warnings.append(f"{_quote_list(tiny)} {'has' if len(tiny) == 1 else 'have'} fewer than "
                        f"{TINY_CLASS_IMAGES} images. Results will be noisy; aim for 20 or more per class.")
    small = [it for it in items if min(it.width, it.height) < SMALL_IMAGE_SIDE]
    if small:
        warnings.append(f"{len(small)} image(s) have a side shorter than {SMALL_IMAGE_SIDE} px (e.g. {small[0].name}, "
                        f"{small[0].width}x{small[0].height}). They will be enlarged to the model's input size, which "
                        "blurs them; for tiny images train from scratch at a small image size (e.g. 32 with patch 4).")
    if leakage:
        warnings.append(f"{len(leakage)} image(s) appear in both train and val/test (e.g. {leakage[0][0]} = "
                        f"{leakage[0][1]}). Validation accuracy will be too optimistic; remove the copies from val/test.")
    if conflicts:
        name, labels = conflicts[0]
        warnings.append(f"{len(conflicts)} image(s) appear under more than one class (e.g. {name} is labelled "
                        f"{_quote_list(labels)}); they were left out. Keep each image in one class only.")
    if val and len(val) < 10:
        warnings.append(f"The validation set has only {len(val)} images, so validation accuracy moves in steps of "
                        f"{100 / len(val):.0f}%. Add more images for a reliable measure.")
    if skipped and items:
        warnings.append(f"{len(skipped)} file(s) were skipped; see the list below for each reason.")
    modes = dict(Counter(it.mode for it in items))
    return HealthReport(source, layout, classes, counts, split_counts, imbalance, sizes, modes,
                        skipped, duplicates, leakage, errors, warnings)


def _render_report(r: HealthReport, markdown: bool) -> str:
    b = (lambda s: f"**{s}**") if markdown else (lambda s: s)
    lines = []
    verdict = "Ready to train" if r.ok else "Cannot train yet"
    lines.append(f"{'### ' if markdown else ''}{verdict}: {count(r.total, 'image')} in {count(len(r.classes), 'class')} "
                 f"({r.layout})")
    if r.errors:
        lines.append("")
        lines.append(b("Errors (fix these first):"))
        lines += [f"- {e}" for e in r.errors]
    if r.warnings:
        lines.append("")
        lines.append(b("Warnings:"))
        lines += [f"- {w}" for w in r.warnings]
    if r.classes:
        lines.append("")
        lines.append(b("Images per class:"))
        splits = list(r.split_counts)
        head = "| class | images | " + " | ".join(splits) + " |" if markdown else None
        if markdown:
            lines += [head, "|" + "---|" * (2 + len(splits))]
        for c in r.classes:
            per = [str(r.split_counts[s][c]) for s in splits]
            if markdown:
                lines.append(f"| {c} | {r.counts[c]} | " + " | ".join(per) + " |")
            else:
                lines.append(f"  {c}: {r.counts[c]}  (" + ", ".join(f"{s} {n}" for s, n in zip(splits, per)) + ")")
        lines.append("")
    facts = []
    if r.imbalance_ratio:
        facts.append(f"Imbalance ratio (largest/smallest class): {r.imbalance_ratio:.1f}")
    if r.sizes:
        w, h = r.sizes["width"], r.sizes["height"]
        facts.append(f"Image size (w x h): min {w['min']}x{h['min']}, median {w['median']:g}x{h['median']:g}, "
                     f"max {w['max']}x{h['max']}")
        facts.append("Colour modes: " + ", ".join(f"{m} {n}" for m, n in sorted(r.modes.items())))
    if any(r.reviewed.values()):
        facts.append(f"Label review: {r.reviewed.get('relabelled', 0)} relabelled, {r.reviewed.get('dropped', 0)} "
                     "dropped")
    if r.duplicates:
        facts.append(f"Exact duplicates: {len(r.duplicates)} group(s), e.g. {' = '.join(r.duplicates[0][:3])}")
    lines += [f"- {f}" for f in facts]
    if r.skipped:
        lines.append("")
        lines.append(b(f"Skipped files ({len(r.skipped)}):"))
        lines += [f"- {s.name}: {s.reason}" for s in r.skipped[:200]]
        if len(r.skipped) > 200:
            lines.append(f"- ... and {len(r.skipped) - 200} more")
    return "\n".join(lines)


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as 8-bit "L": 16-bit data keep their high byte (data that fit
    in 8 bits stay as they are), float data are stretched to 0-255. One working copy of the pixels."""
    arr = np.array(img)
    if img.mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        if hi > lo:
            arr -= np.float32(lo)
            arr *= np.float32(255 / (hi - lo))
            arr += np.float32(0.5)
        else:
            arr[...] = 0
    elif arr.max() > 255:
        if arr.dtype.kind != "u":
            np.clip(arr, 0, 65535, out=arr)
        np.right_shift(arr, 8, out=arr)
    else:
        np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "L")


def count(n: int, noun: str) -> str:
    """'1 image', '3 images', '1 class', '2 classes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    """Hard-link src to dst where asked and possible (same file system), else copy it."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def _escapes(name: str) -> bool:
    """True for a relative path that leaves its folder: absolute, a drive letter, or a '..' part."""
    return name.startswith("/") or bool(re.match(r"^[A-Za-z]:", name)) or ".." in PurePosixPath(name).parts


def _plain_image_name(name: str) -> bool:
    """A dataset-relative name safe to write as is: every part a valid name, an image suffix."""
    parts = name.split("/")
    return (not _escapes(name) and all(check_name(p) is None for p in parts)
            and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES)


def _image_suffix(item: "Item") -> str:
    """A suffix for an image written under a new name: its own when it is an image suffix, else its format's
    (read from the header here: only a renamed file needs it)."""
    suffix = PurePosixPath(item.name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix
    with Image.open(item.path, formats=SAFE_FORMATS) as header:
        fmt = (header.format or "").upper()
    return {"JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif", "HEIF": ".heic", "PPM": ".ppm"}.get(
        fmt, f".{fmt.lower()}" if f".{fmt.lower()}" in IMAGE_SUFFIXES else ".png")


def _safe_suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def _is_junk(name: str) -> bool:
    low = name.lower()
    return low in JUNK_NAMES or low.startswith("._") or (low.startswith(".") and low != MANIFEST_NAME)


def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _quote_list(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(quoted) + more


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _workers(workers: int | None) -> int:
    return workers or min(4, os.cpu_count() or 1)
