"""Mergeable streaming accumulators for LEEP, NCE and H-score (optax-style).

Each factory closes over static configuration (class counts) and returns an
:class:`Accumulator` of pure functions ``init / update / merge / compute``. States are
NamedTuples of sums with fixed shapes and dtypes from ``init`` on, so they are valid
``lax.scan`` carries and fields of a training state, and ``merge`` is a plain sum:
across devices it is ``jax.lax.psum(state, axis_name)``.

Exact LEEP needs two passes, because the conditional ``P(y|z)`` depends on all the data
and sits inside the log (shared/DESIGN.md): pass 1 accumulates the joint with
:func:`joint`; pass 2 accumulates the summed log-EEP with :func:`log_eep`, given the
conditional frozen from pass 1. NCE and H-score are single-pass.

Example:
  >>> import jax.numpy as jnp
  >>> from leep_jax import streaming
  >>> batches = [(jnp.array([[0.9, 0.1], [0.2, 0.8]]), jnp.array([0, 1])),
  ...            (jnp.array([[0.7, 0.3]]), jnp.array([0]))]
  >>> joint_acc = streaming.joint(num_target_classes=2, num_source_classes=2)
  >>> state = joint_acc.init()
  >>> for p, y in batches:
  ...     state = joint_acc.update(state, p, y)
  >>> eep_acc = streaming.log_eep(num_target_classes=2, num_source_classes=2)
  >>> cond, eep = streaming.conditional(state), eep_acc.init()
  >>> for p, y in batches:
  ...     eep = eep_acc.update(eep, p, y, cond)
  >>> round(float(eep_acc.compute(eep)), 4)
  -0.3652
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from leep_jax.scores import _ops
from leep_jax.scores._validation import check_num_classes
from leep_jax.scores.h_score import HScoreSums, h_score_from_sums, h_score_sums
from leep_jax.scores.joint import conditional as _conditional
from leep_jax.scores.joint import joint_sum
from leep_jax.scores.leep import log_eep as _log_eep
from leep_jax.scores.nce import nce_counts, nce_from_counts


class Accumulator(NamedTuple):
    """Pure functions over a fixed-shape state of sums.

    Attributes:
      init: ``() -> state`` of zeros.
      update: ``(state, values, labels, [extra,] mask=None) -> state`` adds one batch.
      merge: ``(state, state) -> state``, associative and commutative (a sum).
      compute: ``(state) -> score``.
    """

    init: Callable[[], Any]
    update: Callable[..., Any]
    merge: Callable[[Any, Any], Any]
    compute: Callable[[Any], jax.Array]


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _check_batch(values, labels, width: int, name: str):
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"{name} batch must have shape [n, {width}], got {values.shape}")
    if labels.shape != values.shape[:1]:
        raise ValueError(f"labels batch must have shape {values.shape[:1]}, got {labels.shape}")


class JointState(NamedTuple):
    joint_sum: jax.Array  # f32[Y, Z]: sum over rows with label y of theta_iz
    count: jax.Array  # f32[]: rows counted


class LogEEPState(NamedTuple):
    log_eep_sum: jax.Array  # f32[]: sum over rows of log sum_z P(y_i|z) theta_iz
    count: jax.Array  # f32[]


class NCEState(NamedTuple):
    counts: jax.Array  # f32[Y, Z]: co-occurrences of label y and argmax z


def joint(
    num_target_classes: int, num_source_classes: int, *, from_logits: bool = False
) -> Accumulator:
    """Pass 1 of LEEP: the empirical joint ``P(y, z)``.

    Args:
      num_target_classes: static ``Y``.
      num_source_classes: static ``Z``.
      from_logits: batches hold logits instead of probabilities.

    Returns:
      An :class:`Accumulator` over :class:`JointState`; ``compute`` gives ``f32[Y, Z]``.
    """
    num_target_classes = check_num_classes(num_target_classes)

    def init():
        return JointState(
            jnp.zeros((num_target_classes, num_source_classes), jnp.float32),
            jnp.zeros((), jnp.float32),
        )

    def update(state, predictions, labels, mask=None):
        predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
        _check_batch(predictions, labels, num_source_classes, "predictions")
        table, count = joint_sum(
            predictions, labels, num_target_classes, from_logits=from_logits, mask=mask
        )
        return JointState(state.joint_sum + table, state.count + count)

    def compute(state):
        return state.joint_sum / state.count

    return Accumulator(init, update, _add, compute)


def conditional(state: JointState) -> jax.Array:
    """The frozen conditional ``P(y | z)``, ``f32[Y, Z]``, for pass 2 of LEEP."""
    return _conditional(state.joint_sum)


def log_eep(
    num_target_classes: int, num_source_classes: int, *, from_logits: bool = False
) -> Accumulator:
    """Pass 2 of LEEP: the summed log expected empirical prediction.

    ``update(state, predictions, labels, conditional, mask=None)`` takes the conditional
    from :func:`conditional` of the complete pass-1 state; ``compute`` returns LEEP.

    Args:
      num_target_classes: static ``Y``.
      num_source_classes: static ``Z``.
      from_logits: batches hold logits instead of probabilities.
    """
    num_target_classes = check_num_classes(num_target_classes)

    def init():
        return LogEEPState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def update(state, predictions, labels, conditional_table, mask=None):
        predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
        _check_batch(predictions, labels, num_source_classes, "predictions")
        if conditional_table.shape != (num_target_classes, num_source_classes):
            raise ValueError(
                f"conditional must have shape {(num_target_classes, num_source_classes)}, "
                f"got {conditional_table.shape}"
            )
        valid = _ops.valid_rows(labels, num_target_classes, mask)
        per_example = _log_eep(predictions, labels, conditional_table, from_logits=from_logits)
        total = jnp.sum(jnp.where(valid, per_example, 0))
        return LogEEPState(
            state.log_eep_sum + total.astype(jnp.float32),
            state.count + jnp.sum(valid, dtype=jnp.float32),
        )

    def compute(state):
        return state.log_eep_sum / state.count

    return Accumulator(init, update, _add, compute)


def nce(num_target_classes: int, num_source_classes: int) -> Accumulator:
    """NCE in one pass: counts of (label, argmax source class); ``compute`` is ``-H(Y|Z)``."""
    num_target_classes = check_num_classes(num_target_classes)

    def init():
        return NCEState(jnp.zeros((num_target_classes, num_source_classes), jnp.float32))

    def update(state, predictions, labels, mask=None):
        predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
        _check_batch(predictions, labels, num_source_classes, "predictions")
        counts = nce_counts(predictions, labels, num_target_classes, mask=mask)
        return NCEState(state.counts + counts)

    def compute(state):
        return nce_from_counts(state.counts)

    return Accumulator(init, update, _add, compute)


def h_score(
    num_target_classes: int, feature_dim: int, *, shift: jax.Array | None = None
) -> Accumulator:
    """H-score in one pass from sums of features, outer products and class sums.

    State size is ``O(D^2 + Y D)`` whatever ``n`` is.

    Args:
      num_target_classes: static ``Y``.
      feature_dim: static ``D``.
      shift: optional ``[D]`` vector subtracted from every feature before summing, e.g.
        the mean of a first batch. It cancels exactly in the score but keeps the float32
        covariance ``S/n - m m^T`` accurate when features have a large mean; it is part
        of the configuration, so states with the same shift merge by plain sums.
    """
    num_target_classes = check_num_classes(num_target_classes)
    shift = None if shift is None else jnp.asarray(shift, jnp.float32)

    def init():
        return HScoreSums(
            count=jnp.zeros((), jnp.float32),
            feature_sum=jnp.zeros((feature_dim,), jnp.float32),
            outer_sum=jnp.zeros((feature_dim, feature_dim), jnp.float32),
            class_sum=jnp.zeros((num_target_classes, feature_dim), jnp.float32),
            class_count=jnp.zeros((num_target_classes,), jnp.float32),
        )

    def update(state, features, labels, mask=None):
        features, labels = jnp.asarray(features), jnp.asarray(labels)
        _check_batch(features, labels, feature_dim, "features")
        sums = h_score_sums(features, labels, num_target_classes, mask=mask, shift=shift)
        return _add(state, jax.tree.map(lambda x: x.astype(jnp.float32), sums))

    return Accumulator(init, update, _add, h_score_from_sums)
