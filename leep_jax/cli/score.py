"""``leep-jax score``: LEEP, NCE and H-score of saved model outputs in ``.npy`` files.

Without ``--batch-size`` the files are loaded and scored by the in-memory functions
(:func:`leep_jax.leep` and friends). With ``--batch-size`` they are memory-mapped and
streamed through the mergeable accumulators of :mod:`leep_jax.streaming` in two passes
(pass 1: joint, NCE counts and H-score sums; pass 2: log-EEP with the frozen
conditional), so predictions larger than RAM are scored with memory bounded by the
batch. Both paths give the same scores and reject the same bad inputs.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import numpy as np
import tqdm

from leep_jax import streaming
from leep_jax.cli.errors import CLIError
from leep_jax.scores import h_score, leep, nce
from leep_jax.scores._validation import PROBABILITY_ATOL, check_shapes

METRICS = ("leep", "nce", "h_score")
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
        help="[n, feature_dim] penultimate features; enables h_score",
    )
    parser.add_argument(
        "--metrics",
        help="comma-separated subset of leep,nce,h_score "
        "(default: leep,nce, plus h_score when --features is given)",
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
    if {"leep", "nce"} & set(metrics):
        needed.add("predictions")
    if "h_score" in metrics:
        needed.add("features")
    paths = {name: path for name, path in files.items() if name in needed}

    if args.batch_size is None:
        scores = _scores_in_memory(paths, num_target_classes, args.from_logits, metrics)
    else:
        scores = _scores_streaming(
            paths, num_target_classes, args.from_logits, metrics, args.batch_size
        )
    n = headers["labels"].shape[0]
    if args.json:
        print(json.dumps({**scores, "n": n}))
    else:
        print(_table(scores, n, headers["predictions"].shape, num_target_classes))
    return 0


def _parse_metrics(text: str | None, *, has_features: bool) -> tuple[str, ...]:
    if text is None:
        return METRICS if has_features else ("leep", "nce")
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CLIError("--metrics is empty; choose from " + ",".join(METRICS))
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise CLIError(f"unknown metric {unknown[0]!r}; choose from " + ",".join(METRICS))
    if "h_score" in names and not has_features:
        raise CLIError("h_score needs --features F.npy (penultimate features)")
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


def _check_labels(labels: np.ndarray, num_target_classes: int, first_row: int) -> None:
    bad = (labels < 0) | (labels >= num_target_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise CLIError(
            f"labels must lie in [0, num_target_classes={num_target_classes}), found "
            f"{labels[row]} (row {first_row + row})"
        )


# The library's value checks (leep_jax.scores._validation), as NumPy on host batches.


def _check_finite(name: str, values: np.ndarray, first_row: int) -> None:
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = first_row + int(np.argmin(finite))
        raise CLIError(f"{name} contain NaN or Inf (first in row {row})")


def _check_probabilities(name: str, values: np.ndarray, first_row: int) -> None:
    low = values.min()
    if low < 0:
        raise CLIError(
            f"{name} contain negative probabilities (min {low:.3g}); pass --from-logits for logits"
        )
    tolerance = max(PROBABILITY_ATOL, float(np.finfo(values.dtype).eps))
    error = np.abs(values.sum(axis=1, dtype=np.float64) - 1)
    worst = int(np.argmax(error))
    if error[worst] > tolerance:
        raise CLIError(
            f"{name} rows must sum to 1 (tolerance {tolerance:.3g}); row {first_row + worst} "
            f"is off by {error[worst]:.3g}; pass --from-logits for logits"
        )


def _scores_in_memory(paths, num_target_classes, from_logits, metrics) -> dict[str, float]:
    try:
        arrays = {name: np.load(path, allow_pickle=False) for name, path in paths.items()}
    except MemoryError:
        raise CLIError("the inputs do not fit in memory; stream them with --batch-size") from None
    labels = arrays["labels"]
    # JAX converts int64 labels to int32 by wrapping, so 2**32 would pass as label 0.
    _check_labels(labels, num_target_classes, first_row=0)
    kwargs = dict(from_logits=from_logits)
    scores = {}
    try:
        for metric in metrics:
            if metric == "h_score":
                value = h_score(arrays["features"], labels, num_target_classes)
            else:
                score = leep if metric == "leep" else nce
                value = score(arrays["predictions"], labels, num_target_classes, **kwargs)
                kwargs["validate_inputs"] = False  # the same checks already passed once
            scores[metric] = float(value)
    except ValueError as e:
        raise CLIError(str(e).replace("from_logits=True", "--from-logits")) from None
    return {metric: scores[metric] for metric in metrics}


class _NpyRows:
    """Reads row ranges of a ``.npy`` file through a memory map of just those rows.

    A map of the whole file kept open for a pass keeps every page it touched resident
    (RSS grew to 195 MB over a 200 MB file); mapping only a batch's rows, and dropping
    the map once they are copied out, keeps memory bounded by the batch.
    """

    def __init__(self, path: str):
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # maps, reads nothing
        self.path, self.dtype, self.shape = path, header.dtype, header.shape
        self.offset = header.offset
        self.row_bytes = header.dtype.itemsize * int(np.prod(header.shape[1:]))
        self.rows_contiguous = header.flags.c_contiguous  # False for Fortran-order files

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            if not self.rows_contiguous:  # rows are strided: map the file, copy the slice
                return np.array(np.load(self.path, mmap_mode="r")[start:stop])
            mapped = np.memmap(
                self.path,
                self.dtype,
                mode="r",
                offset=self.offset + start * self.row_bytes,
                shape=(stop - start, *self.shape[1:]),
            )
            return np.array(mapped)
        except (OSError, ValueError) as e:  # the file changed under us
            raise CLIError(f"cannot read rows {start}:{stop} of {self.path}: {e}") from None


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """Zero rows up to ``size``, so the jitted updates see one shape and compile once."""
    if len(rows) == size:
        return rows
    return np.concatenate([rows, np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)])


def _batches(paths, batch_size: int, n: int, *, description: str):
    """Yields ``(first_row, {name: rows}, mask)`` with every batch padded to one shape."""
    readers = {name: _NpyRows(path) for name, path in paths.items()}
    starts = range(0, n, batch_size)
    for start in tqdm.tqdm(starts, desc=description, unit="batch", leave=False, disable=None):
        stop = min(start + batch_size, n)
        rows = {name: reader.read(start, stop) for name, reader in readers.items()}
        mask = np.arange(batch_size) < stop - start
        yield start, {name: _pad(r, batch_size) for name, r in rows.items()}, mask


@functools.partial(jax.jit, static_argnames=("num_target_classes", "from_logits", "metrics"))
def _pass1_batch(
    predictions, labels, features, shift, mask, *, num_target_classes, from_logits, metrics
):
    """Single-pass sums of one batch for every requested metric (states from ``init``)."""
    sums = {}
    if "leep" in metrics:
        acc = streaming.joint(num_target_classes, predictions.shape[1], from_logits=from_logits)
        sums["leep"] = acc.update(acc.init(), predictions, labels, mask)
    if "nce" in metrics:
        acc = streaming.nce(num_target_classes, predictions.shape[1])
        sums["nce"] = acc.update(acc.init(), predictions, labels, mask)
    if "h_score" in metrics:
        acc = streaming.h_score(num_target_classes, features.shape[1], shift=shift)
        sums["h_score"] = acc.update(acc.init(), features, labels, mask)
    return sums


@functools.partial(jax.jit, static_argnames=("num_target_classes", "from_logits"))
def _pass2_batch(predictions, labels, conditional_table, mask, *, num_target_classes, from_logits):
    """Summed log-EEP of one batch given the conditional frozen after pass 1."""
    acc = streaming.log_eep(num_target_classes, predictions.shape[1], from_logits=from_logits)
    return acc.update(acc.init(), predictions, labels, conditional_table, mask)


class _HostSum:
    """Running float64 sum, on the host, of per-batch states computed on the device.

    Merging is a plain sum; doing it in float64 keeps the rounding error from growing
    with the number of batches. Each batch is fetched one step late, so reading the
    next batch from disk overlaps the device's work on this one.
    """

    def __init__(self):
        self._total, self._pending = None, None

    def add(self, batch_state) -> None:
        self._fold()
        self._pending = batch_state

    def total(self):
        self._fold()
        return self._total

    def _fold(self):
        if self._pending is None:
            return
        batch = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(self._pending))
        self._total = batch if self._total is None else jax.tree.map(np.add, self._total, batch)
        self._pending = None


def _as_float32(state):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), state)


def _scores_streaming(paths, num_target_classes, from_logits, metrics, batch_size):
    n = np.load(paths["labels"], mmap_mode="r").shape[0]
    batch_size = min(batch_size, n)
    static = dict(num_target_classes=num_target_classes, from_logits=from_logits)

    def checked(first_row, rows, mask):
        # Cheap host checks on the real rows before anything is accumulated, so bad
        # values deep in the file stop the run with one clear line, as in memory.
        real = {name: r[mask] for name, r in rows.items()}
        if "predictions" in real:
            _check_finite("predictions", real["predictions"], first_row)
        _check_labels(real["labels"], num_target_classes, first_row)
        if "predictions" in real and not from_logits:
            _check_probabilities("predictions", real["predictions"], first_row)
        if "features" in real:
            _check_finite("features", real["features"], first_row)
        rows["labels"] = rows["labels"].astype(np.int32)  # in range, so exact
        return rows

    pass1, shift = _HostSum(), None
    for first_row, rows, mask in _batches(paths, batch_size, n, description="pass 1"):
        rows = checked(first_row, rows, mask)
        if "h_score" in metrics and shift is None:
            # The first batch's mean as the shift keeps the float32 covariance sums
            # accurate for features far from zero; it cancels exactly in the score.
            shift = rows["features"][mask].mean(axis=0, dtype=np.float64).astype(np.float32)
        sums = _pass1_batch(
            rows.get("predictions"),
            rows["labels"],
            rows.get("features"),
            shift,
            mask,
            metrics=metrics,
            **static,
        )
        pass1.add(sums)

    total, scores = pass1.total(), {}
    if "nce" in metrics:
        acc = streaming.nce(num_target_classes, total["nce"].counts.shape[1])
        scores["nce"] = float(acc.compute(_as_float32(total["nce"])))
    if "h_score" in metrics:
        acc = streaming.h_score(num_target_classes, total["h_score"].feature_sum.shape[0])
        scores["h_score"] = float(acc.compute(_as_float32(total["h_score"])))
    if "leep" in metrics:
        conditional_table = streaming.conditional(_as_float32(total["leep"]))
        pass2 = _HostSum()
        pass2_paths = {name: paths[name] for name in ("predictions", "labels")}
        for _, rows, mask in _batches(pass2_paths, batch_size, n, description="pass 2"):
            sums = _pass2_batch(
                rows["predictions"],
                rows["labels"].astype(np.int32),
                conditional_table,
                mask,
                **static,
            )
            pass2.add(sums)
        eep = pass2.total()
        scores["leep"] = float(eep.log_eep_sum / eep.count)  # float64 on the host
    return {metric: scores[metric] for metric in metrics}


def _table(scores: dict[str, float], n: int, predictions_shape, num_target_classes) -> str:
    width = max(len(name) for name in (*scores, "metric"))
    lines = [
        f"{n} examples, {predictions_shape[1]} source classes, {num_target_classes} target classes",
        f"{'metric':<{width}}  {'value':>12}",
    ]
    lines += [f"{name:<{width}}  {value:>12.6f}" for name, value in scores.items()]
    return "\n".join(lines)
