"""A useful model in seconds (issue 15), in a real browser: start from one of your runs, click Quick model,
see its accuracy and what the features say about the data, and relabel a likely error in your dataset.
Screenshots: tests/e2e/artifacts/quick-*.png."""
import re

from helpers import ARTIFACTS, tiny, visible_text, use_sample_data
from vit import runs


def test_quick_model_from_your_run_then_review_a_likely_label_error(page, app_url, app_manager, tmp_path):
    from vit.samples import make_shapes_dataset
    weights = app_manager.submit(str(make_shapes_dataset(tmp_path / "s", per_class=12, size=32)), tiny(),
                                 name="weights to start from")
    assert app_manager.wait(weights, 120) == "completed"
    page.goto(app_url)
    use_sample_data(page)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Model (or type any timm ViT name)").click()
    page.get_by_role("option", name=re.compile("Start from your run: weights to start from")).click()
    visible_text(page, "the model of your run")  # the plan names the start
    page.get_by_role("button", name="Quick model (seconds)").click()
    visible_text(page, re.compile(r"Quick model: \d+(\.\d)?% validation accuracy"), timeout=60_000)
    visible_text(page, "Would more images help?")
    quick = next(r["id"] for r in app_manager.list() if "quick model" in r["recipe"])
    assert runs.read_json(app_manager.root / quick / runs.DIAGNOSTICS)["label_errors"], "nothing to review"
    page.screenshot(path=str(ARTIFACTS / "quick-results.png"), full_page=True)

    page.get_by_role("button", name="Apply to my dataset").click()  # the suggested relabelling
    visible_text(page, re.compile(r"relabelled as \w+\. The Data tab's report shows the change"))
    page.get_by_role("tab", name="Data").click()
    visible_text(page, "Label review: 1 relabelled, 0 dropped")
    page.screenshot(path=str(ARTIFACTS / "quick-reviewed.png"), full_page=True)
