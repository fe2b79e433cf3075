"""The health report: exact duplicates and leakage, the stratified split, and what is wrong, in words."""
from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict

from vit.data.model import HealthReport, Item, Skipped, count, natural_key, quote_list


# Warnings thresholds of the health report.
IMBALANCE_WARN_RATIO = 3.0


TINY_CLASS_IMAGES = 10


SMALL_IMAGE_SIDE = 64


def deduplicate(items: list[Item]):
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
        labels = sorted({it.label for it in same}, key=natural_key)
        if len(labels) > 1:  # which label is right cannot be known: leave every copy out
            conflicts.append((same[0].name, labels))
            for it in same:
                others = [lb for lb in labels if lb != it.label]
                skipped.append(Skipped(it.name, f"the same image is also labelled {quote_list(others)} "
                                                f"(e.g. {next(o.name for o in same if o.label != it.label)}); "
                                                "left out because its label is ambiguous"))
                drop.add(id(it))
            continue
        same = sorted(same, key=lambda it: (len(it.name), natural_key(it.name)))  # the original, not "copy"
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


def split_items(items: list[Item], classes: list[str], val_fraction: float, seed: int):
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


def make_report(source, layout, classes, items, train, val, test, skipped, duplicates, leakage, conflicts,
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
    given_split = any(it.split for it in items)
    errors = _errors(classes, items, counts, split_counts if given_split else {}, skipped, skipped_per_class)
    warnings = _warnings(classes, items, counts, split_counts if given_split else {}, imbalance, skipped, leakage,
                         conflicts, val)
    modes = dict(Counter(it.mode for it in items))
    return HealthReport(source, layout, classes, counts, split_counts, imbalance, sizes, modes,
                        skipped, duplicates, leakage, errors, warnings, content_sha256=content_hash(items))


def content_hash(items) -> str:
    """The sha256 of a dataset's content: each usable image's bytes (their sha256) with its label, in sorted order.
    The same images with the same labels give the same hash whatever the files are called, how they came (a zip,
    a folder, the Hub) and how they are split; one image more, less, changed or relabelled gives another."""
    import hashlib
    lines = sorted(f"{it.sha256}\t{it.label}\n" for it in items)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _errors(classes, items, counts, given_splits, skipped, skipped_per_class) -> list[str]:
    """What makes the dataset impossible to train on. `given_splits`: per split and class, when the dataset
    came with its own split."""
    errors = []
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
    if "train" in given_splits:
        missing = [c for c in classes if given_splits["train"][c] == 0 and counts[c] >= 2]
        if missing:
            errors.append(f"No training images for {quote_list(missing)}. Add some to train/.")
    return errors


def _warnings(classes, items, counts, given_splits, imbalance, skipped, leakage, conflicts, val) -> list[str]:
    """What will make the results weaker or misleading, and what to do about it."""
    warnings = []
    if "val" in given_splits and len(classes) > 1:
        missing = [c for c in classes if given_splits["val"][c] == 0 and counts[c] >= 2]
        if missing:
            warnings.append(f"No validation images for {quote_list(missing)}: their accuracy cannot be measured. "
                            "Add some to val/.")
    if imbalance and imbalance >= IMBALANCE_WARN_RATIO:
        big = max(counts, key=counts.get)
        small = min(counts, key=counts.get)
        warnings.append(f"Classes are imbalanced: '{big}' has {counts[big]} images, '{small}' has {counts[small]} "
                        f"(ratio {imbalance:.1f}). The model will favour '{big}'; add images of the small classes "
                        "and judge it by per-class recall, not accuracy alone.")
    tiny = [c for c in classes if 2 <= counts[c] < TINY_CLASS_IMAGES]
    if tiny:
        warnings.append(f"{quote_list(tiny)} {'has' if len(tiny) == 1 else 'have'} fewer than "
                        f"{TINY_CLASS_IMAGES} images. Results will be noisy; aim for 20 or more per class.")
    small = [it for it in items if min(it.width, it.height) < SMALL_IMAGE_SIDE]
    if small:
        warnings.append(f"{len(small)} image(s) have a side shorter than {SMALL_IMAGE_SIDE} px (e.g. {small[0].name}, "
                        f"{small[0].width}x{small[0].height}). They will be enlarged to the model's input size, which "
                        "blurs them; for tiny images train from scratch at a small image size (e.g. 32 with patch 4).")
    if leakage:
        warnings.append(f"{len(leakage)} image(s) appear in both train and val/test (e.g. {leakage[0][0]} = "
                        f"{leakage[0][1]}). Validation accuracy will be too optimistic; remove the copies from "
                        "val/test.")
    if conflicts:
        name, labels = conflicts[0]
        warnings.append(f"{len(conflicts)} image(s) appear under more than one class (e.g. {name} is labelled "
                        f"{quote_list(labels)}); they were left out. Keep each image in one class only.")
    if val and len(val) < 10:
        warnings.append(f"The validation set has only {len(val)} images, so validation accuracy moves in steps of "
                        f"{100 / len(val):.0f}%. Add more images for a reliable measure.")
    if skipped and items:
        warnings.append(f"{len(skipped)} file(s) were skipped; see the list below for each reason.")
    return warnings


def render_report(r: HealthReport, markdown: bool) -> str:
    b = (lambda s: f"**{s}**") if markdown else (lambda s: s)
    lines = []
    verdict = "Ready to train" if r.ok else "Cannot train yet"
    heading = "### " if markdown else ""
    lines.append(f"{heading}{verdict}: {count(r.total, 'image')} in {count(len(r.classes), 'class')} "
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
    if r.content_sha256 and r.total:
        facts.append(f"Content hash: {r.content_sha256[:16]} (sha256 of the images and their labels: the same data "
                     "gives the same hash, whatever its files are called)")
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
