"""Where a dataset comes from: a zip (extracted safely: no name inside an archive reaches the file system), a
folder, per-class uploads or a labels.csv manifest; labels, the label review's edits, the export with a manifest."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import weakref
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from PIL import Image

from vit.safety import check_name, safe_join
from vit.data.hub_dataset import fetch as fetch_hub_dataset, is_hub_source
from vit.data.images import IMAGE_SUFFIXES, SAFE_FORMATS, read_rgb
from vit.data.model import (SPLIT_ALIASES, DataError, Dataset, Item, Limits, Skipped, human_size, natural_key,
                            worker_count)
from vit.data.report import deduplicate, make_report, split_items


SPLITS = ("train", "val", "test")


MANIFEST_NAME = "labels.csv"
MAX_CLASSES = 1000  # classes uploaded one by one (the app's form has 8)
MANIFEST_MAX_BYTES = 32 * 1024 ** 2  # a labels.csv of 50,000 rows of long paths is well under this


JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", ".git", ".ipynb_checkpoints"}


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst")
# Formats Pillow may open. Others (EPS runs Ghostscript, for one) are refused.
Image.init()


PROBE_MAX_SIDE = 512  # a dataset check decodes every byte (truncation shows) but keeps only this much


def load_dataset(source: str | os.PathLike | Mapping[str, Sequence[str | os.PathLike]], *,
                 val_fraction: float = 0.2, seed: int = 0, limits: Limits | None = None,
                 workspace_root: str | os.PathLike | None = None,
                 workers: int | None = None, edits: Mapping[str, str | None] | None = None,
                 token: str | bool | None = None, hub_folder: str | os.PathLike | None = None) -> Dataset:
    """Read a dataset from a zip file, a directory, a Hub dataset (`hf-dataset:user/name[@revision][:config]`:
    vit.data.hub_dataset, with `token`, by default this machine's) or a {class name: [image files]} mapping.

    A Hub dataset is downloaded into a temporary workspace (removed with the dataset), or into `hub_folder`, which
    the caller keeps (a folder of class folders that can be read again later).

    `edits` (the label review: image name -> its class, or None to leave it out) are applied as the
    images are read; a name not in the dataset, or a class it does not have, is ignored.

    Raises DataError when the input cannot be read at all (missing, not a zip,
    over a cap); problems a dataset can have (one class, too few images) are
    errors in `report` instead, so the user sees the whole picture at once.
    """
    limits = limits or Limits()
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    workspace = None
    try:
        declared: list[str] = []
        if isinstance(source, Mapping):
            entries, declared = _class_upload_entries(source, limits)
            entries, skipped = _split_off_junk(entries)
            layout, label = "per-class uploads", "uploads"
        elif is_hub_source(source):
            if hub_folder is None:
                workspace = Path(tempfile.mkdtemp(prefix="vit-hub-", dir=workspace_root))
            folder, layout, fetched = fetch_hub_dataset(str(source), hub_folder or workspace / "data", limits,
                                                        token=token)
            entries, skipped, _ = _assign_labels(list(_walk_directory(folder, limits)), limits)
            skipped = fetched + skipped
            label = str(source).strip()
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


def exported_rows(folder: str | os.PathLike) -> list[tuple[str, Path, str, str]]:
    """(name, file, label, split) of each image of a folder export_dataset wrote (a run's copy of its data), from
    its manifest, each file proven inside `folder`; [] when it has no readable manifest."""
    folder = Path(folder)
    try:
        with open(folder / MANIFEST_NAME, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []
    return [(r["path"], safe_join(folder, *r["path"].split("/")), r["label"], r.get("split") or "train")
            for r in rows]


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
    declared = _zip_entries_declared(archive)
    if declared is not None and declared > limits.max_files:
        raise DataError(f"{archive.name} holds {declared:,} files, over the cap of {limits.max_files:,} (max_files). "
                        "Split the dataset or raise the cap.")
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
            raise DataError(f"{archive.name} would unpack to {human_size(total)}, over the cap of "
                            f"{human_size(limits.max_total_bytes)} (max_total_bytes). Use smaller images or raise the "
                            "cap.")
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
                raise DataError(f"{archive.name} unpacks to more than {human_size(limits.max_total_bytes)} "
                                "(max_total_bytes) though it declares less: the archive is malformed or hostile.")
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
                yield Skipped(name, f"cannot be extracted ({e})")
                continue
            yield _Entry(name, target)


def _zip_entries_declared(archive: Path) -> int | None:
    """How many entries a zip's end record declares, read from its last bytes before the central directory (which
    zipfile holds in memory whole) is parsed; None when the record cannot be found (zipfile then says why)."""
    try:
        with open(archive, "rb") as f:
            end = zipfile._EndRecData(f)  # (the standard library's own reader of the end record)
    except (OSError, AttributeError):
        return None
    return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else None


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


def _class_upload_entries(uploads: Mapping[str, Sequence[str | os.PathLike]],
                          limits: Limits) -> tuple[list[_Entry], list[str]]:
    entries = []
    seen = {}
    if len(uploads) > MAX_CLASSES or sum(len(files or []) for files in uploads.values()) > limits.max_files:
        raise DataError(f"At most {MAX_CLASSES} classes and {limits.max_files:,} images in all can be uploaded class "
                        "by class; upload a .zip for more.")
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
    rows = _manifest_rows(manifest.path, limits)
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


def _manifest_rows(path: Path, limits: Limits) -> list[list[str]]:
    """labels.csv's rows, read as a stream and refused (DataError) as soon as they pass a cap: at most one row per
    file the dataset may hold (max_files) and MANIFEST_MAX_BYTES in all, so a hostile manifest costs no more
    memory or time than an honest one."""
    size = path.stat().st_size
    if size > MANIFEST_MAX_BYTES:
        raise DataError(f"{MANIFEST_NAME} is {human_size(size)}, over the cap of {human_size(MANIFEST_MAX_BYTES)} "
                        "for a manifest (one short line per image). Keep only the path,label(,split) columns.")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                rows.append(row)
                if len(rows) > limits.max_files + 1:
                    raise DataError(f"{MANIFEST_NAME} has more than {limits.max_files:,} rows, over the cap on the "
                                    f"images in one dataset (max_files). Split the dataset, or list each image once.")
    except UnicodeDecodeError:
        raise DataError(f"{MANIFEST_NAME} is not UTF-8 text. Save it as UTF-8 CSV with columns path,label.") from None
    except csv.Error as e:
        raise DataError(f"{MANIFEST_NAME} is not a CSV file the app can read (line {len(rows) + 1}: {e}). Save it "
                        "as a plain CSV with columns path,label.") from None
    return rows


# ---------------------------------------------------------------------------
# Helpers: decoding, duplicates, split and report


def _build(entries: list[_Entry], skipped: list[Skipped], layout: str, source: str, declared: list[str],
           val_fraction: float, seed: int, limits: Limits, workspace: Path | None, workers: int | None) -> Dataset:
    with ThreadPoolExecutor(max_workers=worker_count(workers)) as pool:
        probed = list(pool.map(lambda e: _probe(e, limits), entries))
    items: list[Item] = []
    for entry, result in zip(entries, probed):
        if isinstance(result, str):
            skipped.append(Skipped(entry.name, result))
        else:
            items.append(result)
    items.sort(key=lambda it: (natural_key(it.label), it.split or "", natural_key(it.name)))
    items, dup_skipped, duplicates, leakage, conflicts = deduplicate(items)
    skipped.extend(dup_skipped)
    # Every class the user made counts, even one whose every file was skipped: the report must name it.
    classes = sorted({e.label for e in entries} | set(declared), key=natural_key)
    train, val, test = split_items(items, classes, val_fraction, seed)
    label_of = {e.name: e.label for e in entries}
    skipped_per_class = Counter(label_of.get(s.name) for s in skipped)
    report = make_report(source, layout, classes, items, train, val, test, skipped, duplicates, leakage, conflicts,
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
