"""Input checks shared by the scores (an internal module the other layers use too).

Shape checks always run (shapes are static, even under ``jit``). Value checks (label
range, NaN/Inf, probability rows) need concrete arrays: they run on eager calls with
``validate_inputs=True`` and are skipped under tracing, where the scores instead treat
out-of-range labels like masked rows.

Value checks are two-stage. The fast stage reduces the inputs to a few flags
(:func:`row_checks` per row, :func:`reduce_checks` over rows), either inside the score's
own jitted program (LEEP and H-score: no extra read of the inputs; NCE: its row sums and
minima beside the argmax, one more read on XLA:CPU) or in one fused sweep of its own
(:func:`validate`). Only when a flag says something may be wrong does the detailed
stage (:func:`_value_stats`) run to find the first bad row and raise; a flag can be a
false alarm (a row sum overflowing float32), which the detailed stage clears.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from leep_jax.scores import ops

PROBABILITY_ATOL = 1e-3


def accumulation_dtype(dtype) -> jnp.dtype:
    """float32, or wider when the input is wider (float64 under ``jax_enable_x64``)."""
    return jnp.promote_types(jnp.result_type(dtype), jnp.float32)


def is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


def check_num_classes(num_target_classes) -> int:
    if isinstance(num_target_classes, bool) or not isinstance(
        num_target_classes, (int, np.integer)
    ):
        raise ValueError(
            f"num_target_classes must be a Python int, got {type(num_target_classes).__name__}"
        )
    if num_target_classes < 1:
        raise ValueError(f"num_target_classes must be >= 1, got {num_target_classes}")
    return int(num_target_classes)


def check_label_range(
    labels: np.ndarray, num_target_classes: int, mask: ArrayLike | None = None
) -> None:
    """Raises ValueError for counted host labels outside ``[0, num_target_classes)``.

    On the host, before any cast: 64-bit labels would wrap when cast to int32. Rows that
    ``mask`` excludes are dropped as if absent, whatever their label.
    """
    if mask is not None:
        labels = labels[np.asarray(mask, bool)]
    if labels.size and (labels.min() < 0 or labels.max() >= num_target_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(
            f"labels must lie in [0, num_target_classes={num_target_classes}), found {bad}"
        )


def check_shapes(name: str, values: ArrayLike, labels: ArrayLike, mask: ArrayLike | None):
    """Checks ranks, lengths and dtypes of ``values [n, k]``, ``labels [n]``, ``mask [n]``."""
    values_shape, labels_shape = jnp.shape(values), jnp.shape(labels)
    if len(values_shape) != 2:
        raise ValueError(f"{name} must be 2-D [n, k], got shape {values_shape}")
    if not jnp.issubdtype(jnp.result_type(values), jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {jnp.result_type(values)}")
    if len(labels_shape) != 1:
        raise ValueError(f"labels must be 1-D [n], got shape {labels_shape}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    if labels_shape[0] != values_shape[0]:
        raise ValueError(
            f"length mismatch: {name} has {values_shape[0]} rows but labels has {labels_shape[0]}"
        )
    if values_shape[0] == 0:
        raise ValueError(f"{name} is empty (n = 0); a score needs at least one example")
    if values_shape[1] == 0:
        raise ValueError(f"{name} has no columns (shape {values_shape})")
    if mask is not None:
        if jnp.shape(mask) != labels_shape:
            raise ValueError(f"mask must have shape {labels_shape}, got {jnp.shape(mask)}")
        if jnp.result_type(mask) != jnp.bool_:
            raise ValueError(f"mask must be boolean, got dtype {jnp.result_type(mask)}")


def probability_tolerance(dtype) -> float:
    """How far a probability row's sum may be from 1: 1e-3, or the dtype's epsilon."""
    # bfloat16 rounds each probability by up to 2**-8 relative: allow its epsilon.
    return max(PROBABILITY_ATOL, float(jnp.finfo(jnp.result_type(dtype)).eps))


def row_checks(row: jax.Array, *, probabilities: bool) -> dict[str, jax.Array]:
    """Per-row statistics of a widened ``[k]`` row for the fast value checks.

    The row's sum is non-finite whenever one of its values is (or, rarely, when finite
    values overflow: a false alarm the detailed checks clear); probability rows also
    need their sum near 1 and their minimum.
    """
    stats = {"sum": jnp.sum(row)}
    if probabilities:
        stats["min"] = jnp.min(row)
    return stats


def reduce_checks(
    row_stats: dict[str, jax.Array],
    labels: jax.Array,
    num_target_classes: int,
    mask: jax.Array | None,
    *,
    probabilities: bool,
) -> dict[str, jax.Array]:
    """A few scalar flags from :func:`row_checks` of every row (``[n]`` leaves).

    Traceable; meant to run inside the score's jitted program. Rows dropped by ``mask``
    are ignored, as by the detailed checks.
    """
    valid = jnp.ones(labels.shape, bool) if mask is None else mask
    in_range = (labels >= 0) & (labels < num_target_classes)
    flags = {
        "num_valid": jnp.sum(valid),
        "all_finite": jnp.all(jnp.where(valid, jnp.isfinite(row_stats["sum"]), True)),
        "labels_in_range": jnp.all(jnp.where(valid, in_range, True)),
    }
    if probabilities:
        flags["row_error"] = jnp.max(jnp.where(valid, jnp.abs(row_stats["sum"] - 1), 0))
        flags["min_value"] = jnp.min(jnp.where(valid, row_stats["min"], 0))
    return flags


def reduce_column_checks(
    column_sums: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    mask: jax.Array | None,
) -> dict[str, jax.Array]:
    """Flags for non-probability values from their column sums over the counted rows.

    A column sum is non-finite whenever a counted value is (or finite values overflow:
    a false alarm). The counted rows (labels in range and ``mask``) are the masked rows
    unless a label is out of range, which raises its own flag.
    """
    valid = jnp.ones(labels.shape, bool) if mask is None else mask
    in_range = (labels >= 0) & (labels < num_target_classes)
    return {
        "num_valid": jnp.sum(valid),
        "all_finite": jnp.all(jnp.isfinite(column_sums)),
        "labels_in_range": jnp.all(jnp.where(valid, in_range, True)),
    }


def flags_ok(flags: dict, dtype) -> bool:
    """Whether fetched flags (host values) show nothing wrong."""
    ok = int(flags["num_valid"]) > 0 and bool(flags["labels_in_range"])
    ok = ok and bool(flags["all_finite"])
    if "row_error" in flags:
        ok = ok and float(flags["min_value"]) >= 0
        ok = ok and float(flags["row_error"]) <= probability_tolerance(dtype)
    return ok


def raise_if_flagged(
    flags: dict,
    name: str,
    values: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    mask: ArrayLike | None,
    *,
    probabilities: bool,
) -> None:
    """Fetches the flags; if any is raised, runs the detailed checks, which raise.

    ``flags`` may hold extra entries (e.g. from several inputs); the detailed checks
    run on ``values`` only.
    """
    if not flags_ok(jax.device_get(flags), jnp.result_type(values)):
        _check_values_in_detail(
            name, values, labels, num_target_classes, mask, probabilities=probabilities
        )


def score_with_checks(
    kernel: Callable[..., Any],
    name: str,
    values: ArrayLike,
    labels: ArrayLike,
    num_target_classes,
    mask: ArrayLike | None,
    *,
    probabilities: bool,
    check: bool,
) -> jax.Array:
    """A score whose jitted ``kernel`` computes the value-check flags in its own sweeps.

    :func:`prepare` first (shape and host label checks). Then, when the value checks
    apply (``check`` and concrete inputs), ``kernel(values, labels, mask,
    num_target_classes, check=True)`` returns the score and its :func:`reduce_checks`
    (or :func:`reduce_column_checks`) flags, which go to :func:`raise_if_flagged`;
    otherwise ``kernel(values, labels, mask, num_target_classes)`` returns the score.
    """
    values, labels, mask, num_target_classes, check = prepare(
        name, values, labels, num_target_classes, mask, check=check
    )
    if not check:
        return kernel(values, labels, mask, num_target_classes)
    score, flags = kernel(values, labels, mask, num_target_classes, check=True)
    raise_if_flagged(
        flags, name, values, labels, num_target_classes, mask, probabilities=probabilities
    )
    return score


@functools.partial(jax.jit, static_argnames=("num_target_classes", "probabilities"))
def _value_flags(values, labels, mask, num_target_classes: int, probabilities: bool):
    """The fast stage on its own: one fused sweep over ``values``."""
    row_stats = ops.map_rows(
        functools.partial(row_checks, probabilities=probabilities),
        values,
        accumulation_dtype(values.dtype),
    )
    return reduce_checks(row_stats, labels, num_target_classes, mask, probabilities=probabilities)


@functools.partial(jax.jit, static_argnames=("probabilities",))
def _value_stats(values, labels, mask, probabilities: bool):
    valid = jnp.ones(labels.shape, bool) if mask is None else mask
    big = jnp.iinfo(jnp.int32).max
    values = values.astype(accumulation_dtype(values.dtype))
    finite = jnp.isfinite(values)
    stats = {
        "nonfinite_row": jnp.argmin(jnp.where(valid, jnp.all(finite, axis=1), True)),
        "all_finite": jnp.all(jnp.where(valid[:, None], finite, True)),
        "label_min": jnp.min(jnp.where(valid, labels, big)),
        "label_max": jnp.max(jnp.where(valid, labels, -big)),
        "num_valid": jnp.sum(valid),
    }
    if probabilities:
        row_error = jnp.where(valid, jnp.abs(jnp.sum(values, axis=1) - 1), 0)
        stats["row_error"] = jnp.max(row_error)
        stats["worst_row"] = jnp.argmax(row_error)
        stats["min_value"] = jnp.min(jnp.where(valid[:, None], values, 0))
    return stats


def _check_values_fast(name, values, labels, num_target_classes, mask, *, probabilities):
    """Both stages on device arrays, the host label check done."""
    flags = _value_flags(values, labels, mask, num_target_classes, probabilities)
    raise_if_flagged(
        flags, name, values, labels, num_target_classes, mask, probabilities=probabilities
    )


def _check_values_in_detail(
    name: str,
    values: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    mask: ArrayLike | None,
    *,
    probabilities: bool,
) -> None:
    """The detailed stage: finds the first bad row and raises the ValueError naming it."""
    stats = jax.device_get(_value_stats(values, labels, mask, probabilities))
    if int(stats["num_valid"]) == 0:
        raise ValueError("mask excludes every example; a score needs at least one")
    if not bool(stats["all_finite"]):
        raise ValueError(f"{name} contain NaN or Inf (first in row {int(stats['nonfinite_row'])})")
    low, high = int(stats["label_min"]), int(stats["label_max"])
    if low < 0 or high >= num_target_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"labels must lie in [0, num_target_classes={num_target_classes}), found {bad}"
        )
    if probabilities:
        if float(stats["min_value"]) < 0:
            raise ValueError(
                f"{name} contain negative probabilities (min {float(stats['min_value']):.3g}); "
                "pass from_logits=True for logits"
            )
        tolerance = probability_tolerance(jnp.result_type(values))
        if float(stats["row_error"]) > tolerance:
            raise ValueError(
                f"{name} rows must sum to 1 (tolerance {tolerance:.3g}); row "
                f"{int(stats['worst_row'])} is off by {float(stats['row_error']):.3g}; "
                "pass from_logits=True for logits"
            )


def prepare(
    name: str,
    values: ArrayLike,
    labels: ArrayLike,
    num_target_classes,
    mask: ArrayLike | None,
    *,
    check: bool,
) -> tuple[jax.Array, jax.Array, jax.Array | None, int, bool]:
    """Shape checks and host label checks; the value checks are left to the score.

    For scores that compute :func:`reduce_checks` flags inside their own jitted program
    and pass them to :func:`raise_if_flagged` afterwards (:func:`score_with_checks`).

    Returns:
      ``(values, labels, mask, num_target_classes, check)``: JAX arrays, a Python
      int, and whether the value checks apply (``check`` and concrete inputs).
    """
    num_target_classes = check_num_classes(num_target_classes)
    check_shapes(name, values, labels, mask)
    check = bool(check) and is_concrete(values, labels, mask)
    if check and isinstance(labels, np.ndarray):
        check_label_range(labels, num_target_classes, mask)
    mask = None if mask is None else jnp.asarray(mask)
    return jnp.asarray(values), jnp.asarray(labels), mask, num_target_classes, check


def validate(
    name: str,
    values: ArrayLike,
    labels: ArrayLike,
    num_target_classes,
    mask: ArrayLike | None,
    *,
    probabilities: bool,
    check: bool,
) -> tuple[jax.Array, jax.Array, jax.Array | None, int]:
    """Shape checks always; value checks when ``check`` and the inputs are concrete.

    Returns:
      ``(values, labels, mask, num_target_classes)`` as JAX arrays and a Python int,
      ready for the jitted implementations.
    """
    values, labels, mask, num_target_classes, check = prepare(
        name, values, labels, num_target_classes, mask, check=check
    )
    if check:
        _check_values_fast(
            name, values, labels, num_target_classes, mask, probabilities=probabilities
        )
    return values, labels, mask, num_target_classes


def validate_features(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes,
    mask: ArrayLike | None,
    *,
    check: bool,
) -> tuple[jax.Array, jax.Array, jax.Array | None, int]:
    """`validate` for a feature score's ``features [N, D]`` (finite real values)."""
    return validate(
        "features", features, labels, num_target_classes, mask, probabilities=False, check=check
    )
