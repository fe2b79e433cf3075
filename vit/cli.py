"""Command line: `python -m vit data check PATH [--json]` (more commands join as they are built).

Exit codes: 0 success, 2 the input cannot be used (the message says why).
"""
from __future__ import annotations

import argparse
import json
import sys

from vit import data


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
            return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit", description="Fine-tune, explain and share timm ViTs.")
    sub = p.add_subparsers(title="commands")
    d = sub.add_parser("data", help="dataset tools").add_subparsers(title="data commands")
    check = d.add_parser("check", help="validate a dataset and print its health report")
    check.add_argument("path", help="a .zip of class folders or a folder (see README for layouts)")
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
    return p
