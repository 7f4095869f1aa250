"""LEEP: the Log Expected Empirical Prediction (Nguyen et al., ICML 2020)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.joint import conditional
from leep_jax.scores.validation import (
    accumulation_dtype,
    reduce_checks,
    row_checks,
    score_with_checks,
)


# The row functions widen each row themselves: widening the whole [n, Z] array first
# would materialise a float32 copy of a bfloat16 or float16 input.
def _log_dot(conditional_row, probability_row):
    return jnp.log(jnp.sum(conditional_row * probability_row.astype(conditional_row.dtype)))


def _log_dot_softmax(conditional_row, logit_row, shift, log_total):
    """``log sum_z P(y|z) softmax(l)_z`` given ``shift = max(l)``, ``log_total = log s``.

    ``softmax(l)_z = exp(l_z - shift) / s`` with ``s = sum_z exp(l_z - shift)``. Exact
    for logits of any magnitude: ``l_z - shift <= 0`` is exact near the maximum and
    cannot overflow, and the row's own argmax ``z*`` keeps the sum from underflowing
    (``exp(0) = 1`` and ``P(y_i | z*) > 0``, since row ``i`` itself adds to the joint).
    One exponential per element, against two logsumexps (two maxima, two exponentials).
    """
    logit_row = logit_row.astype(conditional_row.dtype)
    return jnp.log(jnp.sum(conditional_row * jnp.exp(logit_row - shift))) - log_total


def _log_dot_from_logits(conditional_row, logit_row):
    """:func:`_log_dot_softmax` with the row's normaliser computed here (streaming)."""
    logit_row = logit_row.astype(conditional_row.dtype)
    shift = jnp.max(logit_row)
    shift = jnp.where(jnp.isfinite(shift), shift, 0)
    exps = jnp.exp(logit_row - shift)
    return jnp.log(jnp.sum(conditional_row * exps)) - jnp.log(jnp.sum(exps))


def log_eep(
    predictions: jax.Array,
    labels: jax.Array,
    conditional_table: jax.Array,
    *,
    from_logits: bool = False,
) -> jax.Array:
    """Per-example ``log sum_z P(y_i | z) theta_iz``, ``f32[n]``; no masking.

    With logits this is ``log sum_z P(y_i|z) exp(l_iz - m_i) - log sum_z exp(l_iz - m_i)``
    with ``m_i = max_z l_iz``, exact for logits of any magnitude. Rows whose label is
    out of range get a meaningless value: callers mask them.

    Args:
      predictions: ``[n, Z]`` probabilities or logits.
      labels: ``int[n]``.
      conditional_table: ``[Y, Z]`` conditional ``P(y | z)`` (see
        :func:`leep_jax.scores.joint.conditional`).
      from_logits: whether ``predictions`` are logits.
    """
    table = conditional_table.astype(accumulation_dtype(predictions.dtype))
    if from_logits:
        return ops.per_row(_log_dot_from_logits, table, predictions, labels)
    return ops.per_row(_log_dot, table, predictions, labels)


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of ``values`` over ``valid`` rows, NaN-safe for the invalid ones."""
    total = jnp.sum(jnp.where(valid, values, 0))
    return total / jnp.sum(valid, dtype=total.dtype)


def joint_and_normalisers(
    predictions: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    num_target_classes: int,
    *,
    from_logits: bool,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Sweep 1 of LEEP: the unnormalised joint, and for logits what sweep 2 reuses.

    For logits the softmax of each row is formed once here, and its normaliser kept
    (shift and log-sum, ``[n]`` each, see :func:`leep_jax.scores.ops.softmax_sum_into`)
    so that sweep 2 needs one exponential per element and no max.

    Args:
      predictions: ``[n, Z]`` probabilities or logits.
      labels: ``int[n]``.
      valid: ``bool[n]``, the rows that count (:func:`leep_jax.scores.ops.valid_rows`).
      num_target_classes: static ``Y``.
      from_logits: whether ``predictions`` are logits.

    Returns:
      ``(joint_sum f32[Y, Z], normalisers)``: ``normalisers`` is ``()`` for
      probabilities, ``(shift f32[n], log_total f32[n])`` for logits.
    """
    dtype = accumulation_dtype(predictions.dtype)
    shape = (num_target_classes, predictions.shape[-1])
    if from_logits:
        table, *normalisers = ops.softmax_sum_into(shape, predictions, labels, valid, dtype=dtype)
        return table, tuple(normalisers)
    return ops.row_sum_into(shape, predictions, labels, valid, dtype=dtype), ()


def per_example_terms(
    joint: jax.Array,
    predictions: jax.Array,
    labels: jax.Array,
    normalisers: tuple[jax.Array, ...],
    *,
    from_logits: bool,
    check: bool = False,
):
    """Sweep 2 of LEEP: ``log sum_z P(y_i | z) theta_iz`` per row, ``f32[n]``; no masking.

    With ``check`` also each row's :func:`row_checks` statistics from the same read,
    returned as ``(terms, row_stats)``.

    Args:
      joint: ``[Y, Z]`` joint (or its unnormalised sum) over every counted row.
      predictions: ``[n, Z]`` probabilities or logits.
      labels: ``int[n]``.
      normalisers: the second result of :func:`joint_and_normalisers`.
      from_logits: whether ``predictions`` are logits.
      check: also return the value-check statistics of each row.
    """
    dtype = accumulation_dtype(predictions.dtype)
    term = _log_dot_softmax if from_logits else _log_dot

    def row_fn(conditional_row, row, *extra):
        value = term(conditional_row, row, *extra)
        if not check:
            return value
        return value, row_checks(row, probabilities=not from_logits)

    return ops.per_row(row_fn, conditional(joint).astype(dtype), predictions, labels, *normalisers)


@functools.partial(jax.jit, static_argnames=("num_target_classes", "from_logits", "check"))
def _leep(predictions, labels, mask, num_target_classes, from_logits, check=False):
    """LEEP, and with ``check`` also the value-check flags, from the same two sweeps.

    Sweep 1 sums the joint (for logits keeping each row's softmax normaliser); sweep 2
    forms the per-example term and, with ``check``, each row's sum (and minimum): no
    extra read of the input.
    """
    valid = ops.valid_rows(labels, num_target_classes, mask)
    table, normalisers = joint_and_normalisers(
        predictions, labels, valid, num_target_classes, from_logits=from_logits
    )
    out = per_example_terms(
        table, predictions, labels, normalisers, from_logits=from_logits, check=check
    )
    if not check:
        return masked_mean(out, valid)
    per_example, row_stats = out
    flags = reduce_checks(
        row_stats, labels, num_target_classes, mask, probabilities=not from_logits
    )
    return masked_mean(per_example, valid), flags


def leep(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    from_logits: bool = False,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """LEEP transferability score of a source model for a target task.

    ``LEEP = (1/n) sum_i log( sum_z P(y_i | z) theta_iz )`` with the empirical
    conditional ``P(y | z)`` of the source model's outputs ``theta`` on the target data
    (Nguyen, Hassner, Seeger, Archambeau, ICML 2020, eq. 2). Always ``<= 0``; higher
    predicts better transfer. Exact in two sweeps over the predictions (joint, then the
    per-example term), in ``O(n Z)`` time and without ``[n, Y]`` intermediates.

    Args:
      predictions: ``[n, num_source_classes]`` source-model probabilities (rows sum to 1)
        or, with ``from_logits=True``, logits (then computed in log space). float32,
        bfloat16 or float16; accumulated in float32 (or wider).
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``Y``, a static Python int. Classes in range but absent from
        the data contribute nothing.
      from_logits: treat ``predictions`` as logits.
      mask: optional ``bool[n]``; False rows are dropped exactly as if absent.
      validate_inputs: on eager calls with concrete arrays, check values (labels in
        range, finite values, probability rows summing to 1 within 1e-3, no negative
        probabilities). Set False in hot loops. Under ``jit``/``vmap`` tracing only
        shapes are checked, and rows with out-of-range labels are dropped like masked
        rows.

    Returns:
      float32 scalar LEEP (NaN only if every row is masked, where it is undefined).

    Raises:
      ValueError: on shape or length mismatches, non-integer labels, labels out of
        range, NaN/Inf, invalid probability rows, ``n = 0`` or ``num_target_classes < 1``.

    Examples:
      >>> import jax.numpy as jnp, leep_jax
      >>> probs = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
      >>> labels = jnp.array([0, 1, 0])
      >>> round(float(leep_jax.leep(probs, labels, num_target_classes=2)), 4)
      -0.3652
    """
    return score_with_checks(
        functools.partial(_leep, from_logits=from_logits),
        "predictions",
        predictions,
        labels,
        num_target_classes,
        mask,
        probabilities=not from_logits,
        check=validate_inputs,
    )
