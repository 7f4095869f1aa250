"""NCE: Negative Conditional Entropy (Tran, Nguyen, Hassner, ICCV 2019)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.validation import (
    accumulation_dtype,
    reduce_checks,
    row_checks,
    score_with_checks,
)


def nce_counts(
    predictions: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Co-occurrence counts ``f32[Y, Z]`` of target labels and argmax source classes.

    ``argmax`` takes the first index on ties, as ``numpy.argmax`` does; it is the same
    for probabilities and logits. Mergeable: counts over any split add up.
    """
    hard = jnp.argmax(predictions, axis=-1)
    return _counts_of(hard, labels, num_target_classes, predictions.shape[-1], mask)


def _counts_of(hard, labels, num_target_classes, num_source_classes, mask):
    """Counts ``f32[Y, Z]`` of (label, hard source class) pairs over the counted rows."""
    valid = ops.valid_rows(labels, num_target_classes, mask)
    flat = ops.row_sum_into(
        (num_target_classes * num_source_classes,),
        jnp.ones_like(labels, jnp.float32),  # sharded like the labels
        labels * num_source_classes + hard,
        valid,
    )
    return flat.reshape(num_target_classes, num_source_classes)


def nce_from_counts(counts: jax.Array) -> jax.Array:
    """``-H(Y | Z) = sum_{y,z} P(y,z) log P(y|z)`` with ``0 log 0 = 0``."""
    joint = counts / jnp.sum(counts)
    marginal = jnp.sum(joint, axis=0, keepdims=True)
    positive = joint > 0
    log_conditional = jnp.log(jnp.where(positive, joint, 1)) - jnp.log(
        jnp.where(positive, marginal, 1)
    )
    return jnp.sum(jnp.where(positive, joint * log_conditional, 0))


@functools.partial(jax.jit, static_argnames=("num_target_classes", "from_logits", "check"))
def _nce(predictions, labels, mask, num_target_classes, from_logits=False, check=False):
    """NCE; with ``check`` also the value-check flags (of logits or of probabilities).

    The checks' row sums and minima are whole-array reductions in the same program as
    the argmax: on XLA:CPU that costs about 1.4x the argmax alone, where one block loop
    computing argmax, sum and minimum together measured 2.2x (2-core CPU, jax 0.10.2).
    """
    if not check:
        return nce_from_counts(nce_counts(predictions, labels, num_target_classes, mask=mask))

    probabilities = not from_logits
    hard = jnp.argmax(predictions, axis=-1)
    dtype = accumulation_dtype(predictions.dtype)
    checks = functools.partial(row_checks, probabilities=probabilities)
    if predictions.dtype == dtype:
        row_stats = jax.vmap(checks)(predictions)
    else:
        # Narrow inputs: a whole-array widening would be materialised on CPU; the
        # block loop widens block by block.
        row_stats = ops.map_rows(checks, predictions, dtype)
    counts = _counts_of(hard, labels, num_target_classes, predictions.shape[-1], mask)
    flags = reduce_checks(row_stats, labels, num_target_classes, mask, probabilities=probabilities)
    return nce_from_counts(counts), flags


def nce(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    from_logits: bool = False,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """NCE transferability score: ``-H(Y | Z)`` with ``z_i = argmax_z theta_iz``.

    The conditional entropy of the target labels given the source model's hard
    predictions (Tran et al. 2019), the baseline LEEP is compared against. ``<= 0``.

    Args:
      predictions: ``[n, num_source_classes]`` probabilities, or logits with
        ``from_logits=True`` (the argmax is the same; the flag only selects which value
        checks apply).
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``Y``, a static Python int.
      from_logits: whether ``predictions`` are logits.
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`.

    Examples:
      >>> import jax.numpy as jnp, leep_jax
      >>> probs = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
      >>> float(leep_jax.nce(probs, jnp.array([0, 1, 0]), num_target_classes=2))
      0.0
    """
    # The argmax is the same for logits and probabilities: only the value checks read
    # from_logits, so unchecked calls of both kinds share one compilation.
    return score_with_checks(
        functools.partial(_nce, from_logits=from_logits and validate_inputs),
        "predictions",
        predictions,
        labels,
        num_target_classes,
        mask,
        probabilities=not from_logits,
        check=validate_inputs,
    )
