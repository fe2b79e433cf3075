"""The data model: a validated Dataset of Items, what was Skipped and why, its HealthReport, the caps (Limits) and
DataError; small helpers the other modules share."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from vit.safety import HostLimits


# A split's folder name or manifest value (any case) -> the split it is
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


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
    content_sha256: str = ""  # of the images' bytes and labels (report.content_hash): the same data, the same hash

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
        from vit.data.report import render_report
        return render_report(self, markdown=False)

    def to_markdown(self) -> str:
        from vit.data.report import render_report
        return render_report(self, markdown=True)


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


def count(n: int, noun: str) -> str:
    """'1 image', '3 images', '1 class', '2 classes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


def natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def quote_list(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(quoted) + more


def human_size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def worker_count(workers: int | None) -> int:
    return workers or min(4, os.cpu_count() or 1)
