"""Sharing (issue 28) in a real browser, against the fake Hub: a dataset taken from the Hub in the Data tab, and a
push with its demo Space and its data from the Share tab. Screenshots: tests/e2e/artifacts/share-*.png."""
import io
import json

import pytest

from fake_hub import FakeHub
from helpers import ARTIFACTS, tiny, visible_text

TOKEN = "hf_write_alice"


@pytest.fixture
def fake_hub(monkeypatch):
    h = FakeHub()
    h.as_the_hub(monkeypatch)  # the app's Hub
    yield h
    h.close()


def _parquet_of_shapes(per_class: int, split: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import random
    from vit.samples import SHAPES, draw_shape
    rng, images, labels = random.Random(split), [], []
    for k in range(per_class * len(SHAPES)):
        buf = io.BytesIO()
        draw_shape(SHAPES[k % 3], 48, rng).save(buf, "JPEG")
        images.append({"bytes": buf.getvalue(), "path": f"{k}.jpg"})
        labels.append(k % 3)
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(SHAPES)}}
    table = pa.table({"image": images, "label": labels}).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_a_hub_dataset_in_the_data_tab(page, app_url, fake_hub):
    fake_hub.add("datasets/bob/shapes", {"data/train-00000-of-00001.parquet": _parquet_of_shapes(10, "train"),
                                         "data/test-00000-of-00001.parquet": _parquet_of_shapes(4, "test")})
    page.goto(app_url)
    page.get_by_text("Or take a dataset from the Hugging Face Hub").click()
    page.get_by_label("Hub dataset").fill("hf-dataset:bob/nothing-here")
    page.get_by_role("button", name="Load from the Hub").click()
    visible_text(page, "was not found on the Hub, or it is private")
    page.get_by_label("Hub dataset").fill("hf-dataset:bob/shapes")
    page.get_by_role("button", name="Load from the Hub").click()
    visible_text(page, "Ready to train: 42 images in 3 classes (Hub dataset, parquet, commit")
    visible_text(page, "Content hash:")
    page.get_by_role("tab", name="Train").click()
    visible_text(page, "Dataset: hf-dataset:bob/shapes")
    page.get_by_role("tab", name="Data").click()
    page.screenshot(path=str(ARTIFACTS / "share-hub-dataset.png"), full_page=True)


def test_push_with_a_demo_space_and_the_data(page, app_url, app_manager, fake_hub, tmp_path):
    from vit.samples import make_shapes_dataset
    run_id = app_manager.submit(make_shapes_dataset(tmp_path / "shapes", per_class=12, size=32), tiny())
    assert app_manager.wait(run_id, 120) == "completed"
    page.goto(app_url)
    page.get_by_role("tab", name="Share").click()
    page.get_by_label("Run", exact=True).last.fill(run_id)
    page.keyboard.press("Enter")
    page.get_by_label("Repo (user/name, or just name)").fill("shapes")
    assert page.get_by_label("Also push a demo Space", exact=False).is_checked()  # on by default
    page.get_by_label("Also push the training data", exact=False).check()
    page.get_by_label("Hugging Face token with write access", exact=False).fill(TOKEN)
    page.get_by_role("button", name="Push to the Hub").click()
    visible_text(page, "Its demo Space: alice/shapes-demo", timeout=60_000)
    visible_text(page, "Its data, as a private dataset: alice/shapes-data")
    assert {"alice/shapes", "spaces/alice/shapes-demo", "datasets/alice/shapes-data"} <= set(fake_hub.repos)
    assert fake_hub.repos["datasets/alice/shapes-data"]["private"]
    page.screenshot(path=str(ARTIFACTS / "share-push.png"), full_page=True)
    assert TOKEN not in page.content()
