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

- model.py     Dataset, Item, Skipped, HealthReport, Limits, DataError
- sources.py   zip / folder / per-class uploads / labels.csv, archive safety, caps, the label review, export
- hub_dataset.py  hf-dataset:user/name[@revision][:config]: imagefolder and parquet repos of the Hub, capped
- images.py    header checks, bounded decode to 8-bit RGB, thumbnails
- report.py    duplicates and leakage, the split, the health report
- cache.py     the decode cache training reads from (and the eval cache: validation's crops)
- pixels.py    what a model sees of an image: one pipeline for validation, test, features and inference
- features.py  frozen features: cache, near-duplicates (calibrated on copies), likely label errors (cleanlab),
               learning curve
"""
from vit.data.cache import DecodeCache
from vit.data.hub_dataset import PREFIX as HUB_PREFIX, fetch as fetch_hub_dataset, is_hub_source
from vit.data.images import (BIG_IMAGE_PIXELS, IMAGE_SUFFIXES, SAFE_FORMATS, WIDE_MODES, read_rgb, reduced,
                             thumbnails, to_rgb)
from vit.data.model import DataError, Dataset, HealthReport, Item, Limits, Skipped, count
from vit.data.report import IMBALANCE_WARN_RATIO, SMALL_IMAGE_SIDE, TINY_CLASS_IMAGES
from vit.data.sources import (ARCHIVE_SUFFIXES, JUNK_NAMES, MANIFEST_NAME, PROBE_MAX_SIDE, SPLITS, export_dataset,
                              exported_rows, load_dataset)

__all__ = ["ARCHIVE_SUFFIXES", "BIG_IMAGE_PIXELS", "DataError", "Dataset", "DecodeCache", "HealthReport",
           "HUB_PREFIX", "IMAGE_SUFFIXES", "IMBALANCE_WARN_RATIO", "Item", "JUNK_NAMES", "Limits", "MANIFEST_NAME",
           "PROBE_MAX_SIDE", "SAFE_FORMATS", "SMALL_IMAGE_SIDE", "SPLITS", "Skipped", "TINY_CLASS_IMAGES", "WIDE_MODES",
           "count", "export_dataset", "exported_rows", "fetch_hub_dataset", "is_hub_source", "load_dataset",
           "read_rgb", "reduced", "thumbnails", "to_rgb"]
