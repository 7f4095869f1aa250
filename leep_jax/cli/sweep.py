"""``leep-jax sweep``: every score of every (model, target) pair, into a resumable SQLite file.

  leep-jax sweep --zoo zoo.toml --target digits --target fashion_mnist:0,1,2 --out r.sqlite
  leep-jax sweep --report r.sqlite [--metric leep] [--json] [--csv r.csv]

--zoo is a built-in zoo (default, tiny) or a TOML zoo file (see the README: NNX factory
+ orbax checkpoint, flax.linen module + variables, or precomputed .npy outputs). Each
--target is NAME[:CLASSES] with NAME one of fashion_mnist, digits, tfds:NAME or an .npz
file with images and labels. Each finished pair is committed to --out at once; rerunning
the same command skips finished pairs, so a killed sweep resumes. Models that fail
(loading, output shapes, NaN) are recorded in the failures table and the sweep goes on.

Across processes: --coordinator HOST:PORT --num-processes N --process-id I on every
process (or --distributed under a cluster launcher); process 0's --out receives every
row through JAX's distributed runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leep_jax.cli.errors import CLIError, one_line
from leep_jax.cli.subcommand import subcommand_parser
from leep_jax.scores.names import SCORE_NAMES


def add_parser(subparsers) -> None:
    parser = subcommand_parser(
        subparsers,
        "sweep",
        __doc__,
        help="score a zoo of models on several targets into a resumable SQLite file",
        run=run,
    )
    parser.add_argument("--zoo", metavar="ZOO", help="default, tiny, or a TOML zoo file")
    parser.add_argument(
        "--target",
        action="append",
        metavar="NAME[:CLASSES]",
        help="a target set (repeatable): fashion_mnist, digits, tfds:NAME or an .npz file",
    )
    parser.add_argument("--out", metavar="RESULTS.sqlite", help="the results file")
    parser.add_argument(
        "--metrics",
        metavar="NAME,...",
        help=f"scores to compute (default: all: {','.join(SCORE_NAMES)})",
    )
    parser.add_argument("--batch-size", type=int, default=256, metavar="B")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=5,
        metavar="K",
        help="classes drawn for a named target without :CLASSES (default: %(default)s)",
    )
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=50,
        metavar="N",
        help="at most N examples per class, drawn with --seed; 0 keeps all (default: 50)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the class and example draws")
    parser.add_argument(
        "--retry-failed", action="store_true", help="score the pairs recorded as failures again"
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="where built-in zoos are cached")
    report = parser.add_argument_group("results")
    report.add_argument("--report", metavar="RESULTS.sqlite", help="print the ranking per target")
    report.add_argument(
        "--metric", default="leep", help="the score to rank by in the report (default: leep)"
    )
    report.add_argument("--csv", metavar="FILE", help="also export the scores as CSV")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    report.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on when stderr is a terminal)",
    )
    dist = parser.add_argument_group("across processes (jax.distributed)")
    dist.add_argument("--coordinator", metavar="HOST:PORT")
    dist.add_argument("--num-processes", type=int, metavar="N")
    dist.add_argument("--process-id", type=int, metavar="I")
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with the cluster's own settings (SLURM, MPI, TPU)",
    )


def _metrics(text: str | None) -> tuple[str, ...]:
    if text is None:
        return SCORE_NAMES
    from leep_jax.scores.names import check_score_names

    try:
        return check_score_names([m.strip() for m in text.split(",") if m.strip()])
    except ValueError as error:
        raise CLIError(f"--metrics: {one_line(error)}") from None


def _report(args) -> int:
    from leep_jax.experiments.sweep_store import Store, StoreError, ranking

    if not Path(args.report).is_file():
        raise CLIError(f"no results file {args.report}")
    try:
        store = Store(args.report)
    except StoreError as error:
        raise CLIError(one_line(error)) from None
    with store:
        metrics, table, failures = store.metrics(), store.table(), store.failures()
        if args.metric not in metrics and table:
            raise CLIError(
                f"--metric {args.metric!r} is not in {args.report} ({', '.join(metrics)})"
            )
        if args.csv:
            store.export_csv(args.csv)
    rankings = {target: ranking(models, args.metric) for target, models in table.items()}
    if args.json:
        out = {
            "metric": args.metric,
            "targets": {
                target: [{"rank": r, "model": m, **values} for r, m, values in rows]
                for target, rows in rankings.items()
            },
            "failures": failures,
        }
        print(json.dumps(out, indent=2))
        return 0
    for target, rows in rankings.items():
        print(f"target {target} (ranked by {args.metric})")
        cells = [["rank", "model", *metrics]]
        cells += [
            [str(r), m, *(f"{v[k]:.4f}" if k in v else "-" for k in metrics)] for r, m, v in rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        for row in cells:
            print("  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in
                            enumerate(zip(row, widths, strict=True))).rstrip())  # fmt: skip
        print()
    for failure in failures:
        print(f"failed: {failure['model']} on {failure['target']} ({failure['stage']}): "
              f"{failure['reason']}")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    if args.report is not None:
        return _report(args)
    for flag in ("zoo", "target", "out"):
        if not getattr(args, flag):
            raise CLIError(f"--{flag} is required (or --report RESULTS.sqlite)")
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--num-classes", args.num_classes, 2),
        ("--train-per-class", args.train_per_class, 0),
    ):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    distributed = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in distributed) and not all(v is not None for v in distributed):
        raise CLIError("--coordinator, --num-processes and --process-id go together")
    metrics = _metrics(args.metrics)

    import os

    from leep_jax.experiments import sweep, sweep_targets, zoo_file

    if args.cache_dir is not None:
        os.environ["LEEP_JAX_CACHE"] = os.path.abspath(os.path.expanduser(args.cache_dir))
    try:  # bad input fails here, before any process waits for another
        entries = zoo_file.resolve_zoo(args.zoo)
        for text in args.target:
            sweep_targets.parse_target(text)
    except ValueError as error:
        raise CLIError(one_line(error)) from None
    exchange = None
    if args.coordinator is not None or args.distributed:
        exchange = sweep.init_distributed(args.coordinator, args.num_processes, args.process_id)
    options = sweep_targets.TargetOptions(args.num_classes, args.train_per_class or None, args.seed)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        targets = [sweep_targets.load_target(text, options) for text in args.target]
        summary = sweep.run_sweep(
            entries,
            targets,
            args.out,
            metrics=metrics,
            batch_size=args.batch_size,
            retry_failed=args.retry_failed,
            progress=progress,
            exchange=exchange,
            argv=sys.argv,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CLIError(one_line(error)) from None
    if exchange is not None and exchange.process_index != 0:
        return 0
    if args.csv:
        from leep_jax.experiments.sweep_store import Store

        with Store(args.out) as store:
            store.export_csv(args.csv)
    if args.json:
        import dataclasses

        print(json.dumps({**dataclasses.asdict(summary), "out": args.out}))
    else:
        print(f"{summary.line()} -> {args.out}")
    return 0
