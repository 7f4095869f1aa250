"""``leep-jax score``: transferability scores of saved model outputs in ``.npy`` files.

Argument parsing, file header checks and printing; the scores come from the scoring
engine (:mod:`leep_jax.streaming.engine`). Without ``--batch-size`` the files are loaded
and scored as one batch. With ``--batch-size`` they are memory-mapped and read one batch
of rows at a time, twice for LEEP (pass 1: joint, NCE counts, feature sums; pass 2:
log-EEP with the frozen conditional), so predictions larger than RAM are scored with
memory bounded by the batch. Both paths give the same scores and reject the same bad
inputs.
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import tqdm

from leep_jax.cli.errors import CLIError
from leep_jax.scores.names import (
    DEFAULT_SCORES,
    FEATURE_SCORES,
    PREDICTION_SCORES,
    SCORE_NAMES,
)
from leep_jax.scores.validation import check_shapes
from leep_jax.streaming import engine, sources

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score saved source-model outputs (.npy) on a target task",
        description=__doc__.splitlines()[0].replace("``", ""),
    )
    parser.add_argument(
        "--predictions",
        required=True,
        metavar="P.npy",
        help="[n, num_source_classes] source-model probabilities (or logits, --from-logits)",
    )
    parser.add_argument(
        "--labels", required=True, metavar="L.npy", help="int[n] target labels in [0, Y)"
    )
    parser.add_argument(
        "--num-target-classes",
        required=True,
        type=int,
        metavar="Y",
        help="number of target classes (never inferred from the labels)",
    )
    parser.add_argument(
        "--from-logits", action="store_true", help="predictions are logits, not probabilities"
    )
    parser.add_argument(
        "--features",
        metavar="F.npy",
        help="[n, feature_dim] penultimate features; enables the feature scores ("
        + ",".join(FEATURE_SCORES)
        + ")",
    )
    parser.add_argument(
        "--metrics",
        help="comma-separated subset of "
        + ",".join(SCORE_NAMES)
        + " (default: "
        + ",".join(DEFAULT_SCORES)
        + " that the given files allow)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="stream memory-mapped files in batches of B rows (memory bounded by the batch)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    metrics = _parse_metrics(args.metrics, has_features=args.features is not None)
    num_target_classes = args.num_target_classes
    if num_target_classes < 1:
        raise CLIError(f"--num-target-classes must be >= 1, got {num_target_classes}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")

    files = {"predictions": args.predictions, "labels": args.labels}
    if args.features is not None:
        files["features"] = args.features
    headers = {name: _open_npy(path, name) for name, path in files.items()}
    _check_headers(headers)
    # Only the inputs a requested metric reads are value-checked (and read at all).
    needed = {"labels"}
    if set(PREDICTION_SCORES) & set(metrics):
        needed.add("predictions")
    if set(FEATURE_SCORES) & set(metrics):
        needed.add("features")
    paths = {name: path for name, path in files.items() if name in needed}

    scores = _scores(paths, num_target_classes, args.from_logits, metrics, args.batch_size)
    n = headers["labels"].shape[0]
    if args.json:
        print(json.dumps({**scores, "n": n}))
    else:
        print(_table(scores, n, headers["predictions"].shape, num_target_classes))
    return 0


def _parse_metrics(text: str | None, *, has_features: bool) -> tuple[str, ...]:
    if text is None:
        return tuple(m for m in DEFAULT_SCORES if has_features or m in PREDICTION_SCORES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CLIError("--metrics is empty; choose from " + ",".join(SCORE_NAMES))
    unknown = [name for name in names if name not in SCORE_NAMES]
    if unknown:
        raise CLIError(f"unknown metric {unknown[0]!r}; choose from " + ",".join(SCORE_NAMES))
    feature_scores = [name for name in names if name in FEATURE_SCORES]
    if feature_scores and not has_features:
        raise CLIError(f"{feature_scores[0]} needs --features F.npy (penultimate features)")
    return tuple(dict.fromkeys(names))  # deduplicated, in the order asked for


def _open_npy(path: str, name: str) -> np.ndarray:
    """Memory-maps a ``.npy`` file: reads its header only, never its data."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise CLIError(f"{name} file not found: {path}") from None
    except (OSError, ValueError, EOFError) as e:
        raise CLIError(f"cannot read {name} file {path} as .npy: {e}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise CLIError(f"{name} file {path} is not a .npy file (an .npz archive?)")
    return array


def _check_headers(headers: dict[str, np.ndarray]) -> None:
    """dtypes, ranks and lengths, from the headers alone."""
    for name in ("predictions", "features"):
        if name in headers and headers[name].dtype not in _FLOAT_DTYPES:
            raise CLIError(
                f"{name} must be float16, float32 or float64, got dtype {headers[name].dtype}"
            )
    if not np.issubdtype(headers["labels"].dtype, np.integer):
        raise CLIError(f"labels must be integers, got dtype {headers['labels'].dtype}")
    try:
        for name in ("predictions", "features"):
            if name in headers:
                check_shapes(name, headers[name], headers["labels"], None)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _scores(paths, num_target_classes, from_logits, metrics, batch_size) -> dict[str, float]:
    """The engine over the files: loaded whole, or memory-mapped and read batch by batch."""
    if batch_size is None:
        try:
            arrays = {name: np.load(path, allow_pickle=False) for name, path in paths.items()}
        except MemoryError:
            raise CLIError(
                "the inputs do not fit in memory; stream them with --batch-size"
            ) from None
    else:
        arrays = {name: sources.NpyRows(path) for name, path in paths.items()}
    labels = arrays.pop("labels")
    n = labels.shape[0]
    batch_size = min(batch_size or n, n)

    def source(second_pass: bool = False):
        # LEEP's second sum reads only the predictions (and labels) again.
        wanted = {k: v for k, v in arrays.items() if k == "predictions" or not second_pass}
        progress = functools.partial(
            tqdm.tqdm,
            desc="pass 2" if second_pass else "pass 1",
            unit="batch",
            leave=False,
            disable=None if len(range(0, n, batch_size)) > 1 else True,
        )
        return sources.array_batches(
            wanted, labels, num_target_classes, batch_size, progress=progress
        )

    try:
        result = engine.run(
            source, num_target_classes, metrics, from_logits=from_logits, keep_predictions=False
        )
    except ValueError as e:
        raise CLIError(str(e).replace("from_logits=True", "--from-logits")) from None
    return result.scores


def _table(scores: dict[str, float], n: int, predictions_shape, num_target_classes) -> str:
    width = max(len(name) for name in (*scores, "metric"))
    lines = [
        f"{n} examples, {predictions_shape[1]} source classes, {num_target_classes} target classes",
        f"{'metric':<{width}}  {'value':>12}",
    ]
    lines += [f"{name:<{width}}  {value:>12.6f}" for name, value in scores.items()]
    return "\n".join(lines)
