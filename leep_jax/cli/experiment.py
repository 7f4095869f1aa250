"""``leep-jax experiment``: the LEEP paper's experiments, offline, resumable.

For each source -> target pair: a source model (a SmallCNN by default; trained on first
use and cached), learning rates chosen on validation tasks, target tasks with distinct
class sets in four regimes (large balanced, small balanced, small imbalanced, small
noisy), every score from one forward pass, and the accuracy actually reached by head
re-training, fine-tuning and training from scratch (a fixed number of SGD steps);
Pearson and class-count-controlled correlations (RQ1, RQ3), convergence (RQ2) and
source selection over a model zoo with baselines (RQ4).

Writes OUT/results.json after every run (atomically), OUT/report.md and PNG figures.
Running again with the same --out resumes where it stopped; a different configuration
in the same --out is refused.

Pairs: SOURCE->TARGET (or SOURCE:TARGET), each side fashion_mnist, fashion_mnist_rot4
(40 classes), digits or tfds:NAME
with optional classes in brackets: 'fashion_mnist[0-4]->fashion_mnist[5-9]',
'fashion_mnist->digits', 'tfds:cifar10->tfds:cifar100' (= 'tfds:cifar10:tfds:cifar100';
needs the tfds extra and prepared TFDS data). Quote pairs in the shell.

--quick is a smoke test (minutes on a 2-core CPU, first run included); the full run
takes hours on a CPU and can be stopped and resumed at any time. --report-only OUT
rewrites OUT/report.md and the figures from OUT/results.json without running anything.

Needs the 'experiments' extra (scikit-learn, matplotlib): pip install 'leep-jax[experiments]'.
"""

from __future__ import annotations

import argparse

from leep_jax.cli.errors import CLIError, one_line, require_extra
from leep_jax.cli.subcommand import subcommand_parser
from leep_jax.experiments.config import DEFAULT_PAIRS, ExperimentConfig
from leep_jax.experiments.pairs import parse_pair
from leep_jax.experiments.results import ConfigMismatchError, read_results


def add_parser(subparsers) -> None:
    parser = subcommand_parser(
        subparsers,
        "experiment",
        __doc__,
        help="reproduce the LEEP paper's experiments (correlations, convergence, selection)",
        run=run,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small smoke-test configuration (minutes)"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: experiment-quick or experiment-full in the current folder)",
    )
    parser.add_argument(
        "--pair",
        action="append",
        metavar="SOURCE->TARGET",
        help="a source -> target pair; repeat for several (default: "
        + ", ".join(DEFAULT_PAIRS)
        + ")",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    parser.add_argument(
        "--max-tasks",
        type=int,
        metavar="N",
        help="stop after N new tasks (results are kept; run again to resume)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="K",
        help="tasks computed side by side (threads; training a small network keeps about "
        "one core busy, so use the number of cores); results do not depend on it "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument(
        "--report-only",
        metavar="OUT",
        help="rewrite OUT/report.md and the figures from OUT/results.json; run nothing",
    )


def _report_only(out: str) -> int:
    from leep_jax.experiments.report import write_report

    try:
        results = read_results(out)
        path = write_report(results, out)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(one_line(error)) from None
    print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    require_extra("experiments", ("sklearn", "matplotlib"), "leep-jax experiment")
    if args.report_only is not None:
        return _report_only(args.report_only)
    pairs = None
    if args.pair:
        try:
            pairs = [str(parse_pair(p)) for p in args.pair]
        except ValueError as error:
            raise CLIError(str(error)) from None
    if args.max_tasks is not None and args.max_tasks < 1:
        raise CLIError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    make = ExperimentConfig.quick if args.quick else ExperimentConfig.full
    try:
        config = make(seed=args.seed, pairs=pairs)
    except ValueError as error:
        raise CLIError(str(error)) from None
    out = args.out or ("experiment-quick" if args.quick else "experiment-full")
    from leep_jax.experiments.runner import run_experiment  # trains models: loads JAX programs

    try:
        results = run_experiment(
            config,
            out,
            progress=not args.no_progress,
            max_new_tasks=args.max_tasks,
            workers=args.workers,
        )
    except ConfigMismatchError as error:
        raise CLIError(str(error)) from None
    except (FileNotFoundError, ImportError) as error:
        raise CLIError(one_line(error)) from None
    except ValueError as error:
        # Bad input detected while loading data (e.g. classes out of range for a TFDS
        # dataset); training code raises no ValueError on valid configurations.
        raise CLIError(one_line(error)) from None
    state = "complete" if results.complete else "incomplete: run again to resume"
    print(
        f"{len(results.tasks)} tasks, {len(results.rq4_rows)} RQ4 runs ({state}); "
        f"{results.duration_s:.0f} s in total; wrote {out}/results.json and {out}/report.md"
    )
    return 0
