"""Command line.

    python -m vit data check PATH [--json]
    python -m vit train --data PATH|hf-dataset:USER/NAME[@REVISION][:CONFIG] [--model NAME] [--no-pretrained]
                        [--weights FILE] [--img-size S]
                        [--patch-size P] [--epochs N] [--batch-size B] [--lr LR] [--progressive]
                        [--out RUN_DIR] [--resume] [--remote hf-jobs --flavor t4-small]
        (a setting left out is chosen by vit.train.recipe: from the data, when training from scratch;
        --remote hf-jobs trains on a Hugging Face GPU, billed to the account of HF_TOKEN, and follows it here)
    python -m vit predict --model RUN|FOLDER|hf-hub:ID --image FILE [FILE ...] [--topk 5]
                          [--explain METHOD] [--target CLASS] [--out overlay.png] [--json]
    python -m vit push --run RUN_DIR --repo user/name [--private] [--no-demo] [--with-data]  (token: HF_TOKEN)
    python -m vit export --run RUN_DIR --format onnx [--out model.onnx] [--int8]

Several GPUs or machines: run the same command under torchrun, e.g.
`torchrun --nproc_per_node 2 -m vit train --data D --out checkpoints/run1` (rank 0 writes the run).

Exit codes (vit.runs.Exit): 0 success, 1 cancelled, 2 the input cannot be used or training failed (the message
says why).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from vit import data, env, figures, models, runs
from vit.runs import RunState


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return runs.Exit.FAILED
    from vit.explain import ExplainError
    from vit.hub import HubError
    from vit.jobs import JobError
    from vit.predict import PredictError
    from vit.train import TrainError
    try:
        return args.func(args)
    except (data.DataError, models.ModelError, TrainError, PredictError, ExplainError, HubError, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return runs.Exit.FAILED


def data_check(args) -> int:
    limits = data.Limits(max_files=args.max_files, max_total_bytes=args.max_bytes,
                         max_ratio=args.max_ratio, max_pixels=args.max_pixels)
    with data.load_dataset(args.path, val_fraction=args.val_fraction, seed=args.seed, limits=limits) as ds:
        report = ds.report
        if args.json:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            print(report.to_text())
        if not report.ok:
            print("error: " + " ".join(report.errors), file=sys.stderr)
            return runs.Exit.FAILED
    return runs.Exit.OK


def train_command(args) -> int:
    from vit.train import TrainConfig, recipe, train

    distributed = env.number("WORLD_SIZE", 1) > 1
    data_path, settings, val_fraction, seed = _train_request(args, distributed)
    ds = data.load_dataset(data_path, val_fraction=val_fraction, seed=seed)
    if not ds.report.ok:
        ds.close()
        raise data.DataError(f"{ds.report.refusal()} (python -m vit data check {data_path} shows the full report)")
    config, run_dir = None, Path(args.out) if args.out else None  # resumed: the run's own config
    if settings is not None:
        # what the user left open is chosen by the recipe (from the data, for random weights)
        config = recipe.choose(TrainConfig(**settings), recipe.DataFacts.of(ds), given=settings)
        if args.remote:
            with ds:
                return _train_remote(args, ds, config.check())
        run_dir = run_dir or runs.create_run_dir(None, args.model)
        run_dir.mkdir(parents=True, exist_ok=True)
    main_process = env.number("RANK") == 0
    stop = _cancel_on_ctrl_c()
    progress = _Progress() if main_process else None
    with ds:
        if main_process:
            print(f"run directory: {run_dir}")
            print(f"data: {len(ds.items)} images, {len(ds.classes)} classes, {len(ds.train)} train / {len(ds.val)} val")
        result = train(ds, config, run_dir, on_event=progress, should_stop=lambda: stop["requested"],
                       resume=args.resume)
    if progress:
        progress.close()
    if result.get("cancelled"):
        print(f"cancelled; run directory: {run_dir}", file=sys.stderr)
        return runs.Exit.CANCELLED
    if main_process:
        print(f"run directory: {run_dir}")
    return runs.Exit.OK


def _train_remote(args, ds, config) -> int:
    """Train on a Hugging Face GPU (vit.jobs.remote) and follow the job here: its epochs as they finish, then its
    model fetched into the run directory. Ctrl-C cancels the job (a second one stops following; the job goes on)."""
    from dataclasses import asdict, replace

    from huggingface_hub import get_token
    from vit.jobs import JobError, remote
    from vit.train import epoch_line
    why = remote.refusal(config)
    if why or args.resume:
        raise JobError(why or "--resume with --remote: resume a run on Hugging Face from the app (Resume), which "
                              "follows its job again or starts a new one from its last checkpoint.")
    where = remote.Remote(args.flavor, get_token() or "")
    hf = where.connect()
    run_dir = Path(args.out) if args.out else runs.create_run_dir(None, config.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config, data=str(data.export_dataset(ds, run_dir / runs.DATA_DIR)))
    job = {"config": asdict(config), "source": Path(str(ds.report.source)).name, "classes": ds.classes,
           "name": run_dir.name, "images": len(ds.items), "device": f"hf:{args.flavor}",
           "data_sha256": ds.report.content_sha256,
           remote.REMOTE: remote.prepare(run_dir, hf, where, config, ds)}
    runs.write_json(run_dir / runs.JOB, job)
    guess = job[remote.REMOTE]
    print(f"run directory: {run_dir}\ntraining on Hugging Face {args.flavor}: about {guess['estimate_s'] / 60:.0f} "
          f"min, about ${guess['estimate_usd']:.2f} (an estimate); the job stops at {guess['timeout_s'] / 60:.0f} min")
    follower = remote.Follower(run_dir, hf, new_job=True)
    stop = _cancel_on_ctrl_c()
    follower.start()
    shown, said = 0, None
    try:
        while follower.is_alive():
            if stop["requested"]:
                follower.cancel()
            status, rows = runs.read_status(run_dir), runs.read_metrics_log(run_dir)
            for row in rows[shown:]:
                print(epoch_line({**row, "epochs": status.get("epochs") or config.epochs}), flush=True)
            shown = max(shown, len(rows))
            if status.get("message") != said:
                said = status.get("message")
                print(said, file=sys.stderr)
            follower.join(timeout=1.0)
    except KeyboardInterrupt:
        print(f"Stopped following. {remote.detached_message(run_dir)}", file=sys.stderr)
        return runs.Exit.CANCELLED
    final = runs.read_status(run_dir)
    print(final.get("message"), file=sys.stderr)
    print(f"run directory: {run_dir}")
    return {RunState.COMPLETED: runs.Exit.OK, RunState.CANCELLED: runs.Exit.CANCELLED}.get(
        final.get("state"), runs.Exit.FAILED)


def _train_request(args, distributed: bool) -> tuple[str, dict | None, float, int]:
    """Where the images come from, the settings given (None on --resume: the run's own) and the split's
    validation fraction and seed."""
    from vit.train import TrainError

    if args.resume:
        if not args.out:
            raise TrainError("--resume needs --out RUN_DIR: the run to continue.")
        saved = runs.load_resume_state(Path(args.out))
        if saved is None:
            raise TrainError(f"{args.out} has no saved state (last.pt) to resume from.")
        data_path, settings = args.data or saved["config"].get("data"), None
        val_fraction, seed = saved["config"]["val_fraction"], saved["config"]["seed"]
    else:
        if not args.data:
            raise TrainError("--data PATH is required (a .zip or folder of class folders, or hf-dataset:user/name).")
        if args.out and (Path(args.out) / runs.STATUS).exists() and not distributed:
            raise TrainError(f"{args.out} already holds a run. Use --resume to continue it, or another --out.")
        if distributed and not args.out:
            raise TrainError("Under torchrun give --out RUN_DIR, so that every process writes to the same run.")
        data_path = args.data
        where = data_path if data.is_hub_source(data_path) else str(Path(data_path).resolve())
        settings = _given_settings(args, data=where)
        val_fraction, seed = settings["val_fraction"], settings["seed"]  # flags with defaults: always given
    if not data_path:
        raise TrainError("--data PATH is required: the run does not record where its data came from.")
    return data_path, settings, val_fraction, seed


def _cancel_on_ctrl_c() -> dict:
    """Ctrl-C asks the run to stop after its step ({"requested": True}); a second one aborts at once."""
    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nCancelling after this step (Ctrl-C again to abort at once)...", file=sys.stderr)

    signal.signal(signal.SIGINT, on_sigint)
    return stop


def predict_command(args) -> int:
    from vit import explain, predict

    loaded = predict.load_model(args.model)
    results = []
    explaining = args.explain is not None
    if explaining and len(args.image) > 1 and args.out and not args.out.endswith("/"):
        raise predict.PredictError("--out names one file; with several images give a folder ending in '/'.")
    accept = _acceptance(args.accept)
    threshold = loaded.trust.threshold(accept)
    for path in args.image:
        if explaining:  # the heatmap and the answer from one pass, as the app's Classify tab
            done = predict.classify_and_explain(loaded, path, args.explain, args.target, accept=accept,
                                                head_fusion=args.head_fusion, discard_ratio=args.discard_ratio)
            image, answer = done.image, done.answer
        else:
            image = predict.read_image(path)
            (answer,) = loaded.answers([image], accept)
        result = {"image": str(path), "unsure": answer.unsure,
                  "ood_score": None if answer.ood_score is None else round(answer.ood_score, 6),
                  "top": [{"label": lb, "probability": round(p, 6)} for lb, p in answer.top(loaded.labels, args.topk)]}
        if explaining:
            e = done.explanation
            out = _overlay_path(args.out, path, args.explain, len(args.image))
            explain.overlay(image, e.heatmap, box=loaded.input_box(image.size), opacity=args.opacity,
                            colormap=args.colormap).save(out)
            result["explanation"] = {"method": e.method, "target": loaded.labels[e.target], "overlay": str(out),
                                     "grid": list(e.heatmap.shape), "notes": e.notes}
        results.append(result)
    if args.json:
        print(json.dumps({"model": str(args.model), "labels": loaded.labels, "temperature": loaded.trust.temperature,
                          "threshold": threshold, "accept": accept if threshold is not None else None,
                          "check": loaded.trust.method, "note": loaded.trust.note or None, "results": results},
                         indent=2))
    else:
        if threshold is None:
            print(f"note: {loaded.trust.note}", file=sys.stderr)
        for r in results:
            unsure = " (not sure: this does not look like the training images)" if r["unsure"] else ""
            print(f"{r['image']}: " + ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top"]) + unsure)
            if "explanation" in r:
                x = r["explanation"]
                print(f"  {x['method']} map for '{x['target']}' -> {x['overlay']}"
                      + "".join(f"\n  note: {n}" for n in x["notes"]))
    return runs.Exit.OK


def _acceptance(value: float | None) -> float | None:
    """--accept: the share of the run's validation images that count as familiar (None: the run's)."""
    if value is not None and not 0.5 <= value <= 1.0:
        from vit.predict import PredictError
        raise PredictError(f"--accept must be from 0.5 to 1 (the share of your own validation images accepted; "
                           f"got {value:g}).")
    return value


def push_command(args) -> int:
    from huggingface_hub import get_token

    from vit import hub
    token = get_token()  # HF_TOKEN, else the token of `hf auth login` (read, never written)
    pushed = hub.push_run(args.run, args.repo, token, private=args.private, include_resume=args.include_resume,
                          demo=args.demo, data=args.with_data)
    print(f"pushed {Path(args.run).name} to {pushed.url}")
    if pushed.space_id:
        print(f"demo Space: https://huggingface.co/spaces/{pushed.space_id} (it builds in a few minutes)")
    if pushed.dataset_id:
        print(f"its data (private): https://huggingface.co/datasets/{pushed.dataset_id}")
    return runs.Exit.OK


def export_command(args) -> int:
    from vit import hub
    path, diff = hub.export_onnx(args.run, args.out)
    print(f"wrote {path} (dynamic batch); largest logit difference from PyTorch: {diff:.2e}")
    if diff > 1e-3:
        print("warning: the ONNX model differs from PyTorch by more than 1e-3", file=sys.stderr)
        return runs.Exit.FAILED
    if args.int8:
        int8 = hub.quantize_onnx(path, path.with_name(path.stem + ".int8.onnx"))
        print(f"wrote {int8} (int8: {int8.stat().st_size / 1e6:.1f} MB against {path.stat().st_size / 1e6:.1f} MB)")
        compared = hub.compare(args.run, {"ONNX float32": path, "ONNX int8": int8}, limit=figures.ONNX_COMPARE_IMAGES)
        for r in compared["rows"] if compared["images"] else []:
            print(f"  {r['name']}: {r['accuracy']:.1%} on {compared['images']} validation images, same answer as "
                  f"PyTorch {r['agree']:.1%}, {r['ms']:.1f} ms/image")
    return runs.Exit.OK


def _overlay_path(out: str | None, image: str, method: str, count: int) -> Path:
    stem = Path(image).stem
    if out and (out.endswith("/") or Path(out).is_dir()):
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out) / f"{stem}.{method}.png"
    return Path(out) if out else Path(f"{stem}.{method}.png")


class _Progress:
    """A tqdm bar per epoch and a line per finished epoch."""

    def __init__(self):
        self.bar = None
        self.recipe_shown = False

    def __call__(self, e: dict) -> None:
        from tqdm import tqdm
        kind = e.get("type")
        if kind == "recipe":
            if not self.recipe_shown:
                print("From scratch: the recipe chose (a flag you give always wins):", file=sys.stderr)
                self.recipe_shown = True
            print(f"  {e['text']}", file=sys.stderr)
        elif kind == "status" and e.get("message") and e.get("state") != RunState.FAILED:  # main() prints the error
            print(e["message"], file=sys.stderr)
        elif kind == "step":
            if self.bar is None:
                self.bar = tqdm(total=e["steps"], desc=f"epoch {e['epoch'] + 1}", leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{e['loss']:.3f}", lr=f"{e['lr']:.2e}")
        elif kind == "epoch":
            self.close()
            from vit.train import epoch_line
            print(epoch_line(e), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _given_settings(args, **more) -> dict:
    """The TrainConfig settings the command line gave: a flag left out is not among them (the recipe
    chooses it). Flags with a default (TrainConfig's) are always given."""
    from vit.train import zero_means_off
    from vit.train.config import SETTINGS
    settings = {name: getattr(args, name) for name, s in SETTINGS.items() if s.flag != ""}
    settings = {k: v for k, v in {**settings, **more}.items() if v is not None}
    settings = zero_means_off(settings)  # --early-stopping 0, --layer-decay 0, --ema 0: off
    if args.model_arg:
        settings["model_args"] = dict(_parse_model_arg(a) for a in args.model_arg)
    return settings


def _parse_model_arg(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise models.ModelError(f"--model-arg takes KEY=VALUE (e.g. depth=4), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit", description="Fine-tune, explain and share timm ViTs.")
    sub = p.add_subparsers(title="commands")
    _data_parser(sub)
    _train_parser(sub)
    _predict_parser(sub)
    _share_parsers(sub)
    return p


def _data_parser(sub) -> None:
    d = sub.add_parser("data", help="dataset tools").add_subparsers(title="data commands")
    check = d.add_parser("check", help="validate a dataset and print its health report")
    check.add_argument("path", help="a .zip of class folders, a folder, or hf-dataset:user/name[@revision][:config] "
                                    "(see README)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--val-fraction", type=float, default=0.2)
    check.add_argument("--seed", type=int, default=0)
    defaults = data.Limits()
    check.add_argument("--max-files", type=int, default=defaults.max_files, help="cap on files in an archive")
    check.add_argument("--max-bytes", type=int, default=defaults.max_total_bytes,
                       help="cap on uncompressed bytes in an archive")
    check.add_argument("--max-ratio", type=float, default=defaults.max_ratio, help="cap on compression ratio")
    check.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="cap on pixels in one image")
    check.set_defaults(func=data_check)


def _train_parser(sub) -> None:
    tr = sub.add_parser("train", help="fine-tune (or train from scratch) a ViT into a run directory")
    tr.add_argument("--data", help="a .zip or folder of class folders, or hf-dataset:user/name[@revision][:config] "
                                   "(a Hub dataset; HF_TOKEN for a private one) (default on --resume: the run's own)")
    _setting_flags(tr)
    tr.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="more timm model arguments, e.g. depth=4 embed_dim=96 (repeatable)")
    tr.add_argument("--out", help="the run directory (default: a new one under VIT_CHECKPOINTS, else checkpoints/)")
    tr.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    tr.add_argument("--remote", choices=["hf-jobs"], help="train on a Hugging Face GPU (Jobs), billed per minute to "
                                                          "the account of your token (HF_TOKEN or `hf auth login`)")
    tr.add_argument("--flavor", default="t4-small", help="the GPU machine of --remote (default t4-small)")
    tr.set_defaults(func=train_command)


def _setting_flags(tr: argparse.ArgumentParser) -> None:
    """A flag for each TrainConfig setting that has one, made from its Setting: a number takes its type; a
    setting the recipe chooses has no default (left out, it is not given); a bool the recipe chooses is
    --x/--no-x, another --x (or --no-x for one that is on by default)."""
    from vit.train.config import DEFAULTS, SETTINGS
    for name, s in SETTINGS.items():
        if s.flag == "":
            continue
        flag, default = s.flag or "--" + name.replace("_", "-"), None if s.auto else DEFAULTS.get(name)
        auto = f"(default: the recipe's: {DEFAULTS[name]} when fine-tuning, chosen from the data from scratch)"
        shown = s.auto and s.kind and DEFAULTS[name] is not None
        about = dict(dest=name, help=" ".join(filter(None, [s.help, auto if shown else ""])) or None)
        if s.kind:
            tr.add_argument(flag, type=int if s.kind == "int" else float, default=default, **about)
        elif isinstance(DEFAULTS.get(name), bool):
            action = ("store_false" if flag.startswith("--no-") else
                      argparse.BooleanOptionalAction if s.auto else "store_true")
            tr.add_argument(flag, action=action, default=True if action == "store_false" else None, **about)
        else:
            tr.add_argument(flag, default=default, choices=s.choices or None, **about)


def _predict_parser(sub) -> None:
    from vit.explain import COLORMAPS, HEAD_FUSIONS, METHODS
    pr = sub.add_parser("predict", help="classify images with a trained model, optionally with a heatmap")
    pr.add_argument("--model", required=True, help="a run directory, a timm-format folder or hf-hub:user/repo")
    pr.add_argument("--image", required=True, nargs="+", help="one or more image files")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--explain", choices=list(METHODS), help="draw a heatmap overlay with this method")
    pr.add_argument("--target", help="the class to explain (default: the predicted one)")
    pr.add_argument("--out", help="overlay file (default: <image>.<method>.png here), or a folder ending in /")
    pr.add_argument("--opacity", type=float, default=0.5)
    pr.add_argument("--colormap", choices=COLORMAPS, default="turbo")
    pr.add_argument("--head-fusion", choices=HEAD_FUSIONS, default="mean", help="rollout: how heads are fused")
    pr.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: weakest attention links dropped")
    pr.add_argument("--json", action="store_true", help="print the results as JSON (each with unsure and ood_score)")
    pr.add_argument("--accept", type=float, help="'not sure' threshold: the share of the run's validation "
                                                 "images accepted (default: the run's, 0.95)")
    pr.set_defaults(func=predict_command)


def _share_parsers(sub) -> None:
    pu = sub.add_parser("push", help="push a run to the Hugging Face Hub (token from HF_TOKEN or hf auth login)")
    pu.add_argument("--run", required=True, help="the run directory")
    pu.add_argument("--repo", required=True, help="user/name (or just name: under the token's user)")
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--include-resume", action="store_true", help="also upload last.pt (the resume state)")
    pu.add_argument("--no-demo", dest="demo", action="store_false",
                    help="do not push the demo Space <repo>-demo (an app to try the model in the browser)")
    pu.add_argument("--with-data", action="store_true",
                    help="also push the run's checked data as the private dataset repo <repo>-data")
    pu.set_defaults(func=push_command)

    ex = sub.add_parser("export", help="export a run's model (ONNX, dynamic batch, checked against PyTorch)")
    ex.add_argument("--run", required=True, help="the run directory")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", help="output file (default: RUN_DIR/model.onnx)")
    ex.add_argument("--int8", action="store_true", help="also write an int8 copy (NAME.int8.onnx) and compare "
                                                        "both with PyTorch on the run's validation images")
    ex.set_defaults(func=export_command)
