"""`make mutants`: deliberate bugs, one at a time, each in a temporary copy of the project, and whether the tests
that guard that feature catch it (fail). A test suite that stays green under a bug in its feature guards nothing.

    python tests/mutants.py                    # every mutant; a table; exit 1 if any is not caught
    python tests/mutants.py -k resume          # the mutants whose name contains "resume"
    python tests/mutants.py --project DIR      # another checkout (e.g. an older commit, for a before/after table)

Each mutant names one piece of source text and its replacement (the text must appear exactly once: a mutant that
no longer applies is reported, not skipped silently; when a change moves the code a mutant patches, update the
mutant with it), and the tests to run: test files with a -k expression. First the selected tests run once on the
unchanged copy (they must pass there, or "caught" would mean nothing), then each mutant in its own copy and its own
process, with PYTHONPATH pointing at the copy so that the copy's `vit` is the one imported, training child
processes included. A mutant that does not compile, or no longer applies, is reported as such and counts as not
caught. Not part of `make test`: about 7 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "checkpoints", "artifacts", "__pycache__", ".pytest_cache",
                                 "*.egg-info", "bench", "docs", ".gradio")
LIMIT_S = 300  # one mutant's tests; a hang counts as caught (CI would time out), and says so


@dataclass
class Mutant:
    name: str
    file: str           # the source file patched, relative to the project
    old: str            # text that must appear exactly once in it
    new: str            # what it becomes
    tests: list[str]    # pytest arguments: test files and a -k expression


def k(files: str, expression: str) -> list[str]:
    return [*files.split(), "-k", expression]


RESUME = k("tests/test_train.py", "resume")
EXPLAIN = k("tests/test_predict.py", "(chefer or rollout or grad or attention or maps or class) and not background")
DISTIL = k("tests/test_distill.py", "not cnn_trains")
ENGINE_PARTS = k("tests/test_train.py", "ema or mixup or checkpointing or accumulation")
REMOTE = k("tests/test_remote.py", "not train_tab and not command_line")
SHARE = k("tests/test_share.py tests/test_hub.py", "hash or hub_dataset or parquet or imagefolder or caps or hostile "
                                                  "or demo or int8 or compare or push_with")

MUTANTS = [
    # resume, progressive resizing and colour jitter: the three the audit found unguarded
    Mutant("resume: a resumed run retrains from epoch 1 (state not restored)", "vit/train/engine.py",
           "    if resume:\n        _restore(run)\n", "    if resume:\n        pass\n", RESUME),
    Mutant("resume: the optimizer's moments are not restored", "vit/train/engine.py",
           '    run.optimizer.load_state_dict(state["optimizer"])\n', "", RESUME),
    Mutant("resume: the random state is not restored", "vit/train/engine.py",
           '    _set_rng_state(state["rng"])\n', "", RESUME),
    Mutant("progressive resizing: every epoch at full size", "vit/train/engine.py",
           "loader.sampler.set_epoch(epoch, run.sizes[epoch] if run.sizes else None)",
           "loader.sampler.set_epoch(epoch, None)", k("tests/test_recipe.py", "progressive")),
    Mutant("colour jitter: the batch is never jittered", "vit/train/transforms.py",
           "self.jitter = 0.0 if config.randaugment else float(config.color_jitter or 0.0)", "self.jitter = 0.0",
           k("tests/test_train.py", "jitter or colour")),
    # the engine's other parts
    Mutant("EMA: the average is never updated", "vit/train/engine.py",
           "                run.ema.update(run.model, step=run.update)\n", "                pass\n", ENGINE_PARTS),
    Mutant("mixup: the model trains on the unmixed batch", "vit/train/engine.py",
           "            x, target = run.mixup(x, y)", "            _, target = run.mixup(x.clone(), y)",
           ENGINE_PARTS),
    Mutant("gradient checkpointing: the setting is ignored", "vit/train/engine.py",
           "    if config.grad_checkpointing:\n", "    if False:\n", ENGINE_PARTS),
    Mutant("test split: measured after every epoch too", "vit/train/engine.py",
           "        val = evaluate(run.eval_model, run.val_set, config, run.device, run.autocast)\n",
           "        val = evaluate(run.eval_model, run.val_set, config, run.device, run.autocast)\n"
           "        if dataset.test:\n"
           "            evaluate(run.eval_model, Images(run.eval_cache, dataset.test, run.labels, run.pixels.tensor),"
           " config, run.device, run.autocast)\n", k("tests/test_train.py", "test_split")),
    # the numbers delivered
    Mutant("one pipeline: validation reads the draft-decoded, bilinear-shrunk cache (the old way)",
           "vit/train/prepare.py", "decode=lambda path: pixels.crop(read_for_model(path)))",
           "decode=lambda path: pixels.crop(cache.pil(dataset.items.index(next(it for it in dataset.items "
           "if it.path == path)))))", ["tests/test_pixels.py"]),
    Mutant("accuracy estimate: measured on the images that chose the epoch", "vit/train/metrics.py",
           "    scored = [by_index[i] for i in split.estimate if i in by_index]",
           "    scored = [by_index[i] for i in split.select or split.estimate if i in by_index]",
           k("tests/test_train.py", "half_of or few_val or test_split")),
    Mutant("accuracy estimate: the last epoch is not kept when nothing is chosen", "vit/train/engine.py",
           "    choosing = bool(run.split.select)", "    choosing = True", k("tests/test_train.py", "few_val")),
    # the recipe
    Mutant("recipe: lr 1e-2 for a batch of 32", "vit/train/recipe.py",
           "BASE_LR, BASE_BATCH = 1e-3, 32", "BASE_LR, BASE_BATCH = 1e-2, 32", ["tests/test_recipe.py"]),
    Mutant("recipe: half the updates per class", "vit/train/recipe.py",
           "UPDATES_PER_CLASS = 200 ", "UPDATES_PER_CLASS = 100 ", ["tests/test_recipe.py"]),
    # the diagnostics
    Mutant("label errors: listed whatever the features", "vit/data/features.py",
           "JUDGE_FLOOR = 0.90 ", "JUDGE_FLOOR = 0.0 ", k("tests/test_probe.py", "weak_features")),
    Mutant("near-duplicates: shown where distinct images are as close as copies", "vit/data/features.py",
           "        if s_ij - max(other_i, other_j) >= rule[\"margin\"]:", "        if True:",
           k("tests/test_probe.py", "withheld or stands_out")),
    Mutant("label review: relabelling preselected", "vit/ui/results.py",
           'return gr.Dropdown(choices=choices, value="keep")',
           'return gr.Dropdown(choices=choices, value=choices[1][1])',
           k("tests/test_probe.py", "review")),
    # the heatmaps
    Mutant("explain: gradient-weighted attention keeps the negative part", "vit/explain.py",
           "cam = (grad.float() * attn.float()).clamp(min=0).mean(0)", "cam = (grad.float() * attn.float()).mean(0)",
           EXPLAIN),
    Mutant("explain: Grad-CAM without its ReLU", "vit/explain.py",
           "return (acts * weights).sum(-1).clamp(min=0)", "return (acts * weights).sum(-1)", EXPLAIN),
    Mutant("explain: rollout without a class token keeps each patch's path to itself", "vit/explain.py",
           "return _reader_rows(result * (1 - eye), layout)", "return _reader_rows(result, layout)", EXPLAIN),
    # the quick model and the label review
    Mutant("quick model: the fitted head is not put into the model", "vit/train/quick.py",
           "        layer.weight.copy_(head.weight)\n        layer.bias.copy_(head.bias)\n", "        pass\n",
           k("tests/test_probe.py", "quick and not hub")),
    Mutant("label review: 'drop' keeps the image", "vit/ui/results.py",
           'if action == "keep" else None if action == "drop" else action',
           'if action in ("keep", "drop") else action', k("tests/test_probe.py", "review")),
    # answers you can trust: probabilities, calibration, "none of these", class balance
    Mutant("calibration: probabilities that do not sum to 1 (sigmoid for softmax)", "vit/trust.py",
           "return (logits.float() / self.temperature).softmax(-1)",
           "return (logits.float() / self.temperature).sigmoid()",
           k("tests/test_predict.py tests/test_trust.py", "colour_mode or identical or unsure")),
    Mutant("calibration: the temperature is not applied at inference", "vit/trust.py",
           "return (logits.float() / self.temperature).softmax(-1)", "return logits.float().softmax(-1)",
           k("tests/test_trust.py", "calibrated")),
    Mutant("none of these: an image is never unsure", "vit/predict.py",
           "else self.ood_score > self.threshold", "else False", k("tests/test_trust.py", "not_sure")),
    Mutant("none of these: the first block's statistics are left out", "vit/trust.py",
           '    if train.get("early") is not None and held is not None and held.get("early") is not None:',
           "    if False:", k("tests/test_trust.py", "first_block")),
    Mutant("class balance: auto never balances", "vit/train/recipe.py",
           "    on = facts.imbalance >= BALANCE_FROM", "    on = False", k("tests/test_recipe.py", "class_balance")),
    Mutant("class balance: sampling draws every image alike", "vit/train/transforms.py",
           "if self.weights is not None else torch.randperm", "if False else torch.randperm",
           k("tests/test_train.py", "imbalanced")),
    Mutant("class balance: the loss is not weighted", "vit/train/engine.py",
           'if balance == "weights" or (balance == "sampling" and run.ddp.world > 1) else None)', "if False else None)",
           k("tests/test_train.py", "imbalanced")),
    # data safety, ownership, hosting
    Mutant("data safety: zip members named ../ or /abs are extracted", "vit/data/sources.py",
           "    if _escapes(name):\n        return \"unsafe path", "    if False:\n        return \"unsafe path",
           k("tests/test_data.py", "slip or symlink")),
    Mutant("data safety: no pixel cap from the image header", "vit/data/images.py",
           "        if w * h > limits.max_pixels:\n            raise DataError(f\"image has too many pixels ({w}x{h}",
           "        if False:\n            raise DataError(f\"image has too many pixels ({w}x{h}",
           k("tests/test_data.py tests/test_predict.py", "bomb or pixel")),
    Mutant("ownership: any visitor owns any run", "vit/safety.py",
           "    return stored == owner_hash(token)", "    return True",
           k("tests/test_jobs.py", "multi_user")),
    Mutant("hosting: classifications unbounded (no concurrency limit)", "vit/ui/classify_tab.py",
           'dict(concurrency_limit=page.limits.concurrency, concurrency_id="classify")',
           'dict(concurrency_limit=None, concurrency_id="classify")',
           k("tests/test_hosting.py", "concurrent_classifications")),
    Mutant("hosting: classifications served one at a time", "vit/ui/classify_tab.py",
           'dict(concurrency_limit=page.limits.concurrency, concurrency_id="classify")',
           'dict(concurrency_limit=1, concurrency_id="classify")',
           k("tests/test_hosting.py", "concurrent_classifications")),
    # hosting, second round (issue 24)
    Mutant("hosting: batches share the single images' lane", "vit/ui/classify_tab.py",
           'concurrency_id="classify_batch"', 'concurrency_id="classify"', k("tests/test_hosting.py", "heavy_batches")),
    Mutant("hosting: a visitor may hold two batches at once", "vit/ui/page.py",
           "            if who in self.busy:\n", "            if False:\n",
           k("tests/test_hosting.py", "heavy_batches")),
    Mutant("hosting: the browsers' key is made anew at every start", "vit/safety.py",
           "        if len(kept) >= 32:\n            return kept", "        if False:\n            return kept",
           k("tests/test_strangers.py", "browsers_key or two_starts")),
    Mutant("hosting: no cap on all visitors' runs together", "vit/jobs/quota.py",
           "            if everyone >= self.total:", "            if False:", k("tests/test_strangers.py", "together")),
    Mutant("hosting: labels.csv read whole, whatever its length", "vit/data/sources.py",
           "                if len(rows) > limits.max_files + 1:", "                if False:",
           k("tests/test_strangers.py", "labels_csv")),
    Mutant("hosting: ended runs never expire", "vit/jobs/listing.py",
           "            if info.state in runs.ACTIVE_STATES or now - finished < self.keep_s:", "            if True:",
           k("tests/test_strangers.py", "expire")),
    Mutant("hosting: the session store keeps values of any size", "vit/sessions.py",
           "    return value if size <= MAX_BYTES[key] else None", "    return value",
           k("tests/test_strangers.py", "session_store")),
    Mutant("hosting: training ignores the model-size cap", "vit/ui/train_tab.py",
           "    if max_params_m and n > max_params_m * 1e6:", "    if False:",
           k("tests/test_strangers.py", "over_the_cap")),
    Mutant("hosting: the listing reads every run's files on every call", "vit/runs.py",
           "                if hit is None or hit[0] != key:", "                if True:",
           k("tests/test_strangers.py", "listing_reads_only")),
    # distillation and CNN runs (issue 26)
    Mutant("distil: hard distillation learns the teacher's probabilities instead of its top class",
           "vit/train/teacher.py", "kd = nn.functional.cross_entropy(logits_kd, teacher_logits.argmax(1))",
           "kd = nn.functional.cross_entropy(logits_kd, teacher_logits.softmax(1))", DISTIL),
    Mutant("distil: the teacher gets the student's normalisation", "vit/train/teacher.py",
           "        x = ((x - self.t_mean) / self.t_std)", "        x = ((x - self.s_mean) / self.s_std)", DISTIL),
    Mutant("distil: a teacher that trained on the held-out images is let through", "vit/train/teacher.py",
           "    seen = trained_on(loaded.folder) & held_out_sha", "    seen = set()", DISTIL),
    Mutant("distil: the teacher's classes are not compared", "vit/train/teacher.py",
           "    if missing or extra:", "    if False:", DISTIL),
    Mutant("distil: the teacher picker lists every finished run, the visitor's or not", "vit/ui/app.py",
           "    rows = manager.list(owner or None)\n    finished",
           "    rows = manager.list(None)\n    finished", DISTIL),
    Mutant("distil: a distillation token is not used", "vit/train/engine.py",
           "        run.model.set_distilled_training(True)", "        pass", DISTIL),
    Mutant("cnn: Grad-CAM weighs the channels equally", "vit/explain.py",
           "    cam = (acts * grad.mean((1, 2))[:, None, None]).sum(0).clamp(min=0)",
           "    cam = acts.sum(0).clamp(min=0)", DISTIL),
    # training on a Hugging Face GPU (vit.jobs.remote, vit.jobs.hf)
    Mutant("remote: the token is written into the run's job.json", "vit/jobs/remote.py",
           '"endpoint": hf.endpoint,', '"endpoint": hf.endpoint, "token": remote.token,', REMOTE),
    Mutant("remote: the job's epochs are not shown while it runs", "vit/jobs/remote.py",
           '                self._rows[row["epoch"]] = row\n', "", REMOTE),
    Mutant("remote: Cancel never reaches the job", "vit/jobs/remote.py",
           '                self.hf.cancel(self._job_id(), rec["namespace"])\n', "", REMOTE),
    Mutant("remote: a new job after a cancel starts over", "vit/jobs/remote.py",
           '        resume = bool(rec.get("jobs"))', "        resume = False", REMOTE),
    Mutant("remote: the job gets no time limit", "vit/jobs/hf.py", "flavor=spec.flavor, timeout=spec.timeout_s,",
           "flavor=spec.flavor, timeout=None,", REMOTE),
    Mutant("remote: the GPU is not checked against the Hub's list", "vit/jobs/remote.py",
           "        if self.flavor not in names:", "        if False:", REMOTE),
    # sharing (issue 28)
    Mutant("share: the content hash ignores the labels", "vit/data/report.py",
           'lines = sorted(f"{it.sha256}\\t{it.label}\\n" for it in items)',
           'lines = sorted(f"{it.sha256}\\n" for it in items)', SHARE),
    Mutant("share: a Hub dataset's splits are ignored", "vit/data/hub_dataset.py",
           'safe_join(dest, split or "train", label, name)', 'safe_join(dest, "train", label, name)', SHARE),
    Mutant("share: a revision is not honoured", "vit/data/hub_dataset.py",
           "sha = api.dataset_info(source.repo, revision=source.revision).sha",
           "sha = api.dataset_info(source.repo).sha", SHARE),
    Mutant("share: the parquet row cap is not checked", "vit/data/hub_dataset.py",
           "    if rows > limits.max_files:", "    if False:", SHARE),
    Mutant("share: the class names of a parquet dataset are lost", "vit/data/hub_dataset.py",
           "    names = features.get(label, {}).get(\"names\")", "    names = None", SHARE),
    Mutant("share: the int8 file is the float32 file", "vit/hub/onnx.py",
           "        quantize_dynamic(fp32, out, op_types_to_quantize=INT8_OPS, weight_type=QuantType.QInt8)",
           "        import shutil; shutil.copyfile(fp32, out)", SHARE),
    Mutant("share: the dataset version is public", "vit/hub/push.py",
           'api.create_repo(target, private=True, exist_ok=True, repo_type="dataset")',
           'api.create_repo(target, private=False, exist_ok=True, repo_type="dataset")', SHARE),
    Mutant("share: the demo app ignores the temperature", "vit/hub/demo_app.py.tmpl",
           "probs = (model(x.unsqueeze(0)) / temperature).softmax(-1)[0]",
           "probs = model(x.unsqueeze(0)).softmax(-1)[0]", SHARE),
]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    project = Path(args.project).resolve()
    chosen = [m for m in MUTANTS if args.k.lower() in m.name.lower()]
    if not chosen:
        print(f"no mutant's name contains {args.k!r}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vit-mutants-"))
    try:
        print(f"project {project}; {len(chosen)} mutants; copies in {work}", flush=True)
        clean = _copy(project, work / "clean")
        broken = _baseline(clean, chosen)
        if broken:
            print("\nThe tests fail without any mutant; fix them first:\n" + "\n".join(broken), file=sys.stderr)
            return 2
        rows = [_run(m, project, work / f"m{i:02d}") for i, m in enumerate(chosen)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| mutant | tests | result | s |\n|---|---|---|---|")
    for m, (verdict, seconds) in zip(chosen, rows):
        print(f"| {m.name} | `{' '.join(m.tests)}` | {verdict} | {seconds:.0f} |")
    missed = [m.name for m, (verdict, _) in zip(chosen, rows) if not verdict.startswith("caught")]
    print(f"\n{len(chosen) - len(missed)} of {len(chosen)} mutants caught" + (": NOT caught: " + "; ".join(missed)
                                                                       if missed else ""))
    return 1 if missed else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--project", default=str(ROOT), help="the project to copy and break (default: this checkout)")
    p.add_argument("-k", default="", help="only the mutants whose name contains this")
    return p


def _copy(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest, ignore=IGNORED, symlinks=True)
    return dest


def _env(copy: Path) -> dict:
    """The copy's `vit` first on the path (for the training processes the tests start too); offline; no CI=true
    (no browser test is among these)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)
    return env


def _pytest(copy: Path, args: list[str], timeout: float = LIMIT_S) -> tuple[int | None, str]:
    """pytest in the copy (its own `vit`, in this process and in the training processes it starts): the exit code
    (None on a time-out) and the output's closing line."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", *args]
    try:
        out = subprocess.run(command, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return out.returncode, (lines[-1].strip("= ") if lines else out.stderr.strip()[-200:])


BASELINE = """
import sys, pytest, vit, json
assert vit.__file__.startswith(sys.argv[1]), f"vit imported from {vit.__file__}, not the copy"
codes = [int(pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", *json.loads(s)])) for s in sys.argv[2:]]
print("CODES", json.dumps(codes))
"""


def _baseline(clean: Path, chosen: list[Mutant]) -> list[str]:
    """Each distinct selection of tests, once, on the unchanged copy (one process: imports are paid once); the
    selections that do not pass."""
    selections = list(dict.fromkeys(json.dumps(m.tests) for m in chosen))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BASELINE, str(clean), *selections], cwd=clean, env=_env(clean),
                         capture_output=True, text=True, timeout=LIMIT_S * len(selections))
    found = re.search(r"^CODES (.*)$", out.stdout, re.M)
    if not found:
        return [f"the baseline did not finish:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"]
    codes = json.loads(found.group(1))
    print(f"baseline: {len(selections)} selections of tests pass unchanged ({time.perf_counter() - t0:.0f} s)"
          if not any(codes) else "baseline: some selections fail", flush=True)
    return [f"{' '.join(json.loads(s))}: exit {c}" for s, c in zip(selections, codes) if c]


def _run(mutant: Mutant, project: Path, dest: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    source = (project / mutant.file).read_text() if (project / mutant.file).is_file() else ""
    if source.count(mutant.old) != 1:
        verdict = f"DOES NOT APPLY: the text to patch appears {source.count(mutant.old)} times in {mutant.file}"
        print(f"{mutant.name}: {verdict}", flush=True)
        return verdict, 0.0
    broken = source.replace(mutant.old, mutant.new)
    try:  # a mutant must be a bug, not a syntax error that any test run would "catch"
        compile(broken, mutant.file, "exec")
    except SyntaxError as e:
        print(f"{mutant.name}: DOES NOT COMPILE ({e})", flush=True)
        return f"DOES NOT COMPILE: {e}", 0.0
    copy = _copy(project, dest)
    (copy / mutant.file).write_text(broken)
    code, summary = _pytest(copy, mutant.tests)
    shutil.rmtree(copy, ignore_errors=True)
    if code in (None, 1, 2):  # timed out, tests failed, or the mutant broke their collection
        verdict = f"caught ({summary})"
    else:  # 0: every test passed; 5: none ran (the selection no longer names a test)
        verdict = f"NOT CAUGHT: pytest exit {code} ({summary})"
    seconds = time.perf_counter() - t0
    print(f"{mutant.name}: {verdict} [{seconds:.0f} s]", flush=True)
    return verdict, seconds


if __name__ == "__main__":
    sys.exit(main())
