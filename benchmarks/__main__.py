"""``python -m benchmarks [--quick | --tiny] [--only NAME ...] [--scores A,B]``: runs the suite."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from benchmarks import BENCHMARKS, harness


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (~2 min on 2 CPUs)")
    size.add_argument(
        "--tiny", action="store_true", help="smoke-test sizes: checks that everything runs"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: benchmarks/results/<device>[-quick|-tiny])",
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=12.0,
        help="skip combinations whose working set exceeds this (default 12)",
    )
    parser.add_argument(
        "--headline",
        action="store_true",
        help="core: only the headline size (to repeat it on a quiet machine)",
    )
    parser.add_argument(
        "--scores",
        type=lambda text: tuple(name for name in text.split(",") if name),
        metavar="NAME,NAME",
        help="scores: only these scores (e.g. transrate,nleep), merged into the existing "
        "scores results",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    label = harness.device_label() + ("" if mode == "full" else f"-{mode}")
    config = harness.Config(
        mode=mode,
        out_dir=args.out or harness.RESULTS_DIR / label,
        memory_budget_gb=args.memory_budget_gb,
        headline_only=args.headline,
        scores=args.scores,
    )
    print(f"benchmarks ({mode}) -> {config.out_dir}", flush=True)
    print(harness.machine_line(harness.machine()), flush=True)
    failed = []
    for name in args.only or BENCHMARKS:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            summary = importlib.import_module(f"benchmarks.{name}").run(config)
        except Exception as error:  # report and go on: one broken benchmark != no results
            import traceback

            traceback.print_exc()
            failed.append(f"{name}: {type(error).__name__}: {error}")
            continue
        elapsed = time.perf_counter() - start
        print(f"== {name} done in {elapsed:.0f} s: {json.dumps(summary, default=str)}", flush=True)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
