"""``leep-jax rank``: rank a zoo of source models for a target task by LEEP.

Every model in the zoo sees the target task's training images once; LEEP and NCE
come from its logits, H-score from its penultimate features, and the models are
ranked by LEEP (rank 1 = predicted best transfer). ``--verify`` also fine-tunes every
model on the task and reports the accuracy reached and the rank correlation (Kendall's
tau, weighted tau) of each score with it.

The default target task is 5 classes of scikit-learn's handwritten digits (8x8 scans,
upsampled to 28x28) drawn by the task generator with ``--seed`` (seed 0: the digits
0, 2, 4, 6, 7), with 50 training examples per class: a small, cross-domain task for a
zoo trained on FashionMNIST, the regime where picking the right source matters most
(the LEEP paper's small-data setting). The zoo is trained on first use and cached
(``--cache-dir``, else ``$LEEP_JAX_CACHE``, else ``~/.cache/leep_jax``); later runs
load it from there.
"""

from __future__ import annotations

import argparse
import os
import sys

from leep_jax.cli.errors import CLIError, one_line
from leep_jax.cli.subcommand import subcommand_parser
from leep_jax.data.target import load_target_task
from leep_jax.experiments.rank import SCORE_NAMES, VERIFY_METHODS, rank_models
from leep_jax.transfer import presets
from leep_jax.transfer.zoo import load_zoo

_ZOOS = ("default", "tiny")
_DEFAULT_TARGET = "digits"
_DEFAULT_NUM_CLASSES = 5
_DEFAULT_TRAIN_PER_CLASS = 50
_DEFAULT_TEST_PER_CLASS = 500
# The zoo's models are trained on 28x28 FashionMNIST; TFDS targets are resized to match.
_IMAGE_SIZE = 28


def add_parser(subparsers) -> None:
    parser = subcommand_parser(
        subparsers,
        "rank",
        __doc__,
        help="rank a zoo of source models for a target task by LEEP (with NCE, H-score)",
        run=run,
    )
    task = parser.add_argument_group("target task")
    task.add_argument(
        "--target",
        default=_DEFAULT_TARGET,
        metavar="DATASET",
        help="fashion_mnist, digits or tfds:NAME (default: %(default)s)",
    )
    task.add_argument(
        "--classes",
        metavar="C,C,...",
        help="class ids of the target dataset, e.g. 0,1,2 (default: --num-classes classes "
        "drawn with --seed)",
    )
    task.add_argument(
        "--num-classes",
        type=int,
        default=_DEFAULT_NUM_CLASSES,
        metavar="K",
        help="how many classes to draw when --classes is not given (default: %(default)s)",
    )
    task.add_argument(
        "--train-per-class",
        type=int,
        default=_DEFAULT_TRAIN_PER_CLASS,
        metavar="N",
        help="at most N training examples per class, drawn with --seed; 0 keeps all "
        "(default: %(default)s; digits have about 135 per class, FashionMNIST 6000)",
    )
    task.add_argument(
        "--test-per-class",
        type=int,
        default=_DEFAULT_TEST_PER_CLASS,
        metavar="N",
        help="at most N test examples per class for --verify; 0 keeps all (default: %(default)s)",
    )
    task.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the class draw, the example draws and the --verify runs (default: %(default)s)",
    )
    zoo = parser.add_argument_group("source models")
    zoo.add_argument(
        "--zoo",
        choices=_ZOOS,
        default="default",
        help="the model zoo to rank (default: %(default)s; tiny is for quick checks)",
    )
    zoo.add_argument(
        "--models",
        metavar="NAME,...",
        help="rank only these models, by name, from any zoo (instead of --zoo)",
    )
    zoo.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where the trained zoo is cached (default: $LEEP_JAX_CACHE or ~/.cache/leep_jax)",
    )
    scoring = parser.add_argument_group("scoring and verification")
    scoring.add_argument(
        "--metric",
        default="leep",
        metavar="SCORE",
        help=f"the score to rank by: {', '.join(SCORE_NAMES)} (default: %(default)s)",
    )
    scoring.add_argument(
        "--batch-size",
        type=int,
        default=256,
        metavar="B",
        help="images per forward pass when scoring (default: %(default)s)",
    )
    scoring.add_argument(
        "--zoo-strategy",
        choices=("auto", "loop", "vmap"),
        default="auto",
        help="score models of one architecture one by one (loop) or together over "
        "stacked weights (vmap); auto takes the path measured faster on this backend "
        "(default: %(default)s)",
    )
    scoring.add_argument(
        "--verify",
        action="store_true",
        help="also transfer every model to the task and correlate the scores with the "
        "test accuracy reached (slow: minutes)",
    )
    scoring.add_argument(
        "--verify-method",
        default="fine_tune",
        metavar="METHOD",
        help=f"how --verify transfers: {', '.join(VERIFY_METHODS)} (default: %(default)s)",
    )
    scoring.add_argument(
        "--epochs",
        type=int,
        default=10,
        metavar="E",
        help="epochs of each --verify run (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: on when stderr is a terminal)",
    )


def _parse_classes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        classes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CLIError(f"--classes must be comma-separated integers, got {text!r}") from None
    if len(classes) < 2:
        raise CLIError(f"--classes needs at least 2 classes, got {text!r}")
    return classes


def _parse_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise CLIError("--models is empty")
    return names


def _check_args(args: argparse.Namespace) -> None:
    if args.metric not in SCORE_NAMES:
        raise CLIError(f"unknown metric {args.metric!r}; choose from {', '.join(SCORE_NAMES)}")
    if args.verify_method not in VERIFY_METHODS:
        raise CLIError(
            f"unknown --verify-method {args.verify_method!r}; choose from "
            f"{', '.join(VERIFY_METHODS)}"
        )
    for flag, value, low in (
        ("--num-classes", args.num_classes, 2),
        ("--train-per-class", args.train_per_class, 0),
        ("--test-per-class", args.test_per_class, 0),
        ("--batch-size", args.batch_size, 1),
        ("--epochs", args.epochs, 1),
    ):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")


def _zoo_specs(zoo_name: str, names: list[str] | None) -> list:
    """The zoo's specs, or the named models of any zoo (checked before any training)."""
    if names is None:
        return presets.default_zoo() if zoo_name == "default" else presets.tiny_zoo()
    known = {spec.name: spec for spec in (*presets.default_zoo(), *presets.tiny_zoo())}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise CLIError(f"unknown model {unknown[0]!r}; known models: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise CLIError(f"--models names a model twice: {','.join(names)}")
    return [known[name] for name in names]


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    classes = _parse_classes(args.classes)
    specs = _zoo_specs(args.zoo, _parse_names(args.models))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.cache_dir is not None:
        # The zoo (and every other cache of leep_jax) reads this variable.
        os.environ["LEEP_JAX_CACHE"] = os.path.abspath(os.path.expanduser(args.cache_dir))

    try:
        # The task first: bad input fails before minutes of zoo training.
        task = load_target_task(
            args.target,
            classes=classes,
            num_classes=args.num_classes,
            train_per_class=args.train_per_class or None,
            test_per_class=args.test_per_class or None,
            seed=args.seed,
            image_size=_IMAGE_SIZE,
        )
        models = load_zoo(specs, progress=progress)
        result = rank_models(
            models,
            task,
            metric=args.metric,
            verify=args.verify,
            verify_method=args.verify_method,
            verify_epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            zoo_strategy=args.zoo_strategy,
            progress=progress,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CLIError(one_line(error)) from error
    print(result.to_json() if args.json else result.format_table())
    return 0
