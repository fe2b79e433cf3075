"""Measured figures that the app quotes to its users, in one place, each with the benchmark that prints it and
where it was measured. A text that cites a figure takes it from here (`figures.LP_FT.text`), so that a new
measurement is one edit, and tests/test_house.py finds no other figure in the recipe's and the Data tab's words.

To refresh one: run its `bench` script (README, Development), then change its `text` and `measured`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    text: str        # as the user reads it, inside a sentence
    bench: str       # the script that prints it
    measured: str    # where and when


CPU = "2-core x86_64 CPU, no GPU"

LP_FT = Figure("81.7% against 15.0% with the fine-tuning recipe, 82.1% against 75.8% at lr 1e-3",
               "bench/probe_bench.py", f"{CPU}, 2026-11")
BALANCE = Figure("digit glyphs at 10:1: balanced accuracy 95.2% against 88.0%", "bench/trust_bench.py",
                 f"{CPU}, 2026-11")
MAX_POOL = Figure("the sample shapes: 97% by epoch 10, against under 70% with a class token",
                  "bench/scratch_bench.py", f"{CPU}, 2026-11")
PROGRESSIVE = Figure("on an 8x8 grid of tokens the glyphs benchmark reaches the same accuracy 1.47x sooner",
                     "bench/scratch_bench.py", f"{CPU}, 2026-11")
SCRATCH_PHOTOS = Figure("Tried on about 400 photos of two insect species, it delivered 74% (chance: 50%), where "
                        "pretrained weights fine-tuned usually reach 90% or more", "bench/scratch_bench.py",
                        f"{CPU}, 2026-11 (the hymenoptera photos)")
SCRATCH_SMALL = Figure("98% on the sample shapes, 98.6% on digit glyphs, in minutes on a CPU",
                       "bench/scratch_bench.py", f"{CPU}, 2026-11")

DISTILL = Figure("digit glyphs, 30 per class: 96.1% soft, 91.3% hard, 86.6% without a teacher",
                 "bench/distill_bench.py", f"{CPU}, 2026-12")

ALL = (LP_FT, BALANCE, MAX_POOL, PROGRESSIVE, SCRATCH_PHOTOS, SCRATCH_SMALL, DISTILL)

# Training on Hugging Face Jobs (vit.hub.hf_jobs): what a run is estimated to take and cost before it starts.
# The hardware list and prices come from the Hub (list_jobs_hardware) when it answers; these are the fallback:
# single-GPU flavors with the Hub's list prices (USD per hour, 2026) and each GPU's peak dense fp16/bf16 TFLOPS
# (NVIDIA's datasheets). The estimate is not a measurement: no job could be run from this machine.
JOB_FLAVORS = (  # (name, title, USD per hour, peak TFLOPS)
    ("t4-small", "Nvidia T4 · small", 0.40, 65.0),
    ("t4-medium", "Nvidia T4 · medium", 0.60, 65.0),
    ("l4x1", "Nvidia L4", 0.80, 121.0),
    ("a10g-small", "Nvidia A10G · small", 1.00, 70.0),
    ("a10g-large", "Nvidia A10G · large", 1.50, 70.0),
    ("l40sx1", "Nvidia L40S", 1.80, 362.0),
    ("a100-large", "Nvidia A100 · large", 2.50, 312.0),
    ("h200", "Nvidia H200", 5.00, 989.0),
)
JOB_GPU_USE = 0.25         # the share of a GPU's peak a small ViT's training loop reaches (the estimate's basis)
JOB_SETUP_S = 300          # pulling the image, downloading the data and the starting weights, pushing the model
JOB_TIMEOUT_FACTOR = 2.0   # a job's time limit: setup + this x the estimated training time + JOB_TIMEOUT_MARGIN_S
JOB_TIMEOUT_MARGIN_S = 600

# The Share tab's ONNX comparison: accuracy and speed of PyTorch, float32 ONNX and int8 ONNX on at most this many of
# the run's validation images (each at batch 1 through each model: about 3 x this many forwards).
ONNX_COMPARE_IMAGES = 100
