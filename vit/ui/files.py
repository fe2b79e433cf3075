"""Files the app serves or receives: downloads (CSV made safe for spreadsheets), their cleanup, refused uploads."""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from vit.safety import HostLimits


DOWNLOADS = Path(tempfile.gettempdir()) / "vit-studio-downloads"  # zips and ONNX files being served


def _unopened_path(component: gr.Image):
    """A preprocess for gr.Image(type="filepath") that hands the handler the uploaded file's path without
    opening it: the app checks the header itself, with a clear message for a file that is not an image
    (Gradio's own open fails without one). Set on the instance: a subclass would make Gradio write a .pyi
    stub beside this module."""
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return gradio_preprocess(payload)
        return str(payload.path)

    return preprocess


def _csv(rows: list[list], header: list[str]) -> str:
    """rows as a CSV file to download (in a fresh downloads folder, swept like the others)."""
    import csv
    path = _download_folder() / "predictions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[spreadsheet_safe(cell) for cell in row] for row in rows])
    return str(path)


def spreadsheet_safe(cell):
    """A text cell a spreadsheet will show, not run: one that begins like a formula (= + - @, a tab or a carriage
    return: a file named '=1+2.png') gets a leading apostrophe (OWASP's advice for CSV injection). Numbers stay
    numbers."""
    if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + cell
    return cell


def _placeholder() -> str:
    path = Path(tempfile.gettempdir()) / "vit-studio-unreadable.png"
    if not path.is_file():
        from PIL import Image
        Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    return str(path)


def csv_rows(path: Path):
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _download_folder() -> Path:
    """A fresh folder for one file to serve; folders older than the temp age limit are removed first."""
    sweep_temp(HostLimits.from_env().temp_max_age_s)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=DOWNLOADS))


def sweep_temp(max_age_s: float, now: float | None = None) -> int:
    """Remove the downloads the app served (zips, ONNX files, CSVs, and the empty folders of failed ones) made longer
    ago than max_age_s; return how many went. Gradio's own copies of uploads and outputs are swept by Gradio
    (delete_cache)."""
    now = time.time() if now is None else now
    removed = 0
    for old in DOWNLOADS.iterdir() if DOWNLOADS.is_dir() else []:
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
                removed += 1
        except OSError:
            pass
    return removed


_sweeping: list[threading.Thread] = []


def sweep_temp_every(max_age_s: float) -> None:
    """sweep_temp on a timer (a quarter of the age limit, at least a minute), in one thread per process: a file
    served once goes after its age limit even if nobody downloads anything again."""
    if _sweeping:
        return
    every = max(60.0, max_age_s / 4)

    def forever():
        while True:
            sweep_temp(HostLimits.from_env().temp_max_age_s)
            time.sleep(every)

    _sweeping.append(threading.Thread(target=forever, name="vit-temp-sweep", daemon=True))
    _sweeping[0].start()


def _remove_upload(path: str | None) -> None:
    """Delete an uploaded file that will not be used (Gradio keeps uploads in its cache otherwise)."""
    try:
        if path and Path(path).is_file():
            Path(path).unlink()
    except OSError:
        pass
