"""Redraw the README's screenshots (docs/screenshots/*.png) from a real session: the sample data, a model
trained from scratch with the app's defaults (every field left empty: the recipe chooses), a classification
with its heatmap, the model card.

    .venv/bin/python docs/screenshots.py [--per-class N] [--epochs N]     (default: the app's own)

Needs Debian's chromium (/usr/bin/chromium) and the playwright package (requirements-test.txt). It refuses
to write the Classify screenshot when the model gets the example wrong.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = ROOT / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, help="sample images per class (default: the app's)")
    ap.add_argument("--epochs", type=int, help="(default: the recipe's)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    from vit.jobs import JobManager
    from vit.ui import build_app, launch_options
    with tempfile.TemporaryDirectory() as tmp:
        manager = JobManager(Path(tmp) / "checkpoints", gpus=0)
        app = build_app(manager)
        _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_options())
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                            args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(60_000)
                _session(page, url, args, manager)
                phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
                phone.goto(url)
                phone.get_by_role("tab", name="Train").click()
                phone.get_by_text("Runs (newest first)").first.wait_for()
                phone.wait_for_timeout(2500)
                phone.screenshot(path=str(OUT / "phone-train.png"), full_page=True)
                browser.close()
        finally:
            app.close()
            manager.shutdown(grace_s=2)
    print(f"screenshots written to {OUT}")


def _session(page, url: str, args, manager) -> None:
    page.goto(url)
    if args.per_class:
        page.get_by_role("slider", name="Images per class (sample data)").fill(str(args.per_class))
    page.get_by_role("button", name="Use the sample dataset (generated shapes)").click()
    page.get_by_text("Ready to train").first.wait_for()
    page.screenshot(path=str(OUT / "tab-data.png"), full_page=True)

    page.get_by_role("tab", name="Train").click()
    if args.epochs:
        page.get_by_label("Epochs", exact=True).fill(str(args.epochs))
    page.get_by_label("Run name (optional)").fill("shapes, from scratch")
    page.get_by_text("Chosen for your data").first.wait_for()  # what will run is shown before Start
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"Finished: accuracy")).filter(visible=True).first.wait_for(
        timeout=900_000)
    page.get_by_text("Per class (validation)").first.wait_for()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(OUT / "tab-train.png"), full_page=True)

    page.get_by_role("tab", name="Classify").click()
    page.wait_for_timeout(2500)  # the picker follows the finished run; its validation images become examples
    examples = page.locator(".gallery-item").filter(visible=True)
    right = []
    for i in range(examples.count()):
        examples.nth(i).click()
        page.get_by_role("button", name="Classify", exact=True).click()
        notes = page.get_by_text(re.compile(r"for class \w+")).filter(visible=True).first
        notes.wait_for()
        page.wait_for_timeout(500)
        predicted = re.search(r"for class (\w+)", notes.inner_text()).group(1)
        truth = ("circle", "square", "triangle")[min(2, i // max(1, examples.count() // 3))]
        right.append(predicted == truth)
    print(f"examples classified correctly: {sum(right)} of {len(right)}")
    if not right or not right[0]:
        raise SystemExit("the model gets the first example wrong: train longer before taking screenshots")
    examples.nth(0).click()
    page.get_by_role("button", name="Classify", exact=True).click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(OUT / "tab-classify.png"), full_page=True)

    page.get_by_role("tab", name="Share").click()
    page.get_by_label("Repo (user/name, or just name)").fill("your-name/shapes-vit")
    page.get_by_role("button", name="Preview model card").click()
    page.get_by_text("Intended use and limitations").first.wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(OUT / "tab-share.png"), full_page=True)


if __name__ == "__main__":
    main()
