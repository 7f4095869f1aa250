"""Mergeable streaming accumulators for LEEP, NCE and H-score (optax-style).

Each factory closes over static configuration (class counts) and returns an
:class:`Accumulator` of pure functions ``init / update / merge / compute``. States are
NamedTuples of float32 sums with fixed shapes from ``init`` on, whatever the batches'
dtype or ``jax_enable_x64`` (one layout in every process), so they are valid
``lax.scan`` carries and fields of a training state, and ``merge`` is a plain sum
(across devices ``jax.lax.psum(state, axis_name)``), except :func:`h_score` without a
fixed ``shift``, whose merge re-centres the states first.

Exact LEEP needs two passes, because the conditional ``P(y|z)`` depends on all the data
and sits inside the log (README, "Streaming"): pass 1 accumulates the joint with
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
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.h_score import HScoreSums, h_score_from_sums, h_score_sums
from leep_jax.scores.joint import conditional as _conditional
from leep_jax.scores.joint import joint_sum
from leep_jax.scores.leep import log_eep as _log_eep
from leep_jax.scores.nce import nce_counts, nce_from_counts
from leep_jax.scores.validation import check_num_classes

State = Any  # a NamedTuple of fixed-shape arrays


class UpdateFn(Protocol):
    """``update(state, values, labels, mask=None) -> state``: adds one batch."""

    def __call__(
        self,
        state: State,
        values: ArrayLike,
        labels: ArrayLike,
        mask: ArrayLike | None = None,
    ) -> State: ...


class ConditionalUpdateFn(Protocol):
    """``update(state, predictions, labels, conditional, mask=None) -> state``.

    The update of LEEP's second pass: besides the batch it takes the conditional
    ``P(y | z)`` frozen from the complete first pass (the way optax's
    ``GradientTransformationExtraArgs`` types its extra arguments).
    """

    def __call__(
        self,
        state: State,
        predictions: ArrayLike,
        labels: ArrayLike,
        conditional: jax.Array,
        mask: ArrayLike | None = None,
    ) -> State: ...


class Accumulator(NamedTuple):
    """Pure functions over a fixed-shape state of sums.

    Attributes:
      init: ``() -> state`` of zeros.
      update: ``(state, values, labels, mask=None) -> state`` adds one batch.
      merge: ``(state, state) -> state``, associative and commutative (a sum).
      compute: ``(state) -> score``.
    """

    init: Callable[[], State]
    update: UpdateFn
    merge: Callable[[State, State], State]
    compute: Callable[[State], jax.Array]


class ConditionalAccumulator(NamedTuple):
    """An :class:`Accumulator` whose update also takes the frozen conditional (pass 2)."""

    init: Callable[[], State]
    update: ConditionalUpdateFn
    merge: Callable[[State, State], State]
    compute: Callable[[State], jax.Array]


def add_states(a, b):
    """The merge of states that are sums: leaf by leaf ``a + b``."""
    return jax.tree.map(jnp.add, a, b)


def check_batch(values, labels, width: int, name: str):
    """ValueError unless ``values`` is ``[n, width]`` and ``labels`` is ``[n]``."""
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"{name} batch must have shape [n, {width}], got {values.shape}")
    if labels.shape != values.shape[:1]:
        raise ValueError(f"labels batch must have shape {values.shape[:1]}, got {labels.shape}")


class JointState(NamedTuple):
    """State of :func:`joint`: the unnormalised joint and the rows it counts."""

    joint_sum: jax.Array  # f32[Y, Z]: sum over rows with label y of theta_iz
    count: jax.Array  # f32[]: rows counted


class LogEEPState(NamedTuple):
    """State of :func:`log_eep`: the summed per-row log-EEP and the rows it counts."""

    log_eep_sum: jax.Array  # f32[]: sum over rows of log sum_z P(y_i|z) theta_iz
    count: jax.Array  # f32[]


class NCEState(NamedTuple):
    """State of :func:`nce`: label / argmax co-occurrence counts."""

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
        check_batch(predictions, labels, num_source_classes, "predictions")
        table, count = joint_sum(
            predictions, labels, num_target_classes, from_logits=from_logits, mask=mask
        )
        return JointState(
            state.joint_sum + table.astype(jnp.float32), state.count + count.astype(jnp.float32)
        )

    def compute(state):
        return state.joint_sum / state.count

    return Accumulator(init, update, add_states, compute)


def conditional(state: JointState) -> jax.Array:
    """The frozen conditional ``P(y | z)``, ``f32[Y, Z]``, for pass 2 of LEEP."""
    return _conditional(state.joint_sum)


def log_eep(
    num_target_classes: int, num_source_classes: int, *, from_logits: bool = False
) -> ConditionalAccumulator:
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
        conditional_table = jnp.asarray(conditional_table)
        check_batch(predictions, labels, num_source_classes, "predictions")
        if conditional_table.shape != (num_target_classes, num_source_classes):
            raise ValueError(
                f"conditional must have shape {(num_target_classes, num_source_classes)}, "
                f"got {conditional_table.shape}"
            )
        valid = ops.valid_rows(labels, num_target_classes, mask)
        per_example = _log_eep(predictions, labels, conditional_table, from_logits=from_logits)
        total = jnp.sum(jnp.where(valid, per_example, 0))
        return LogEEPState(
            state.log_eep_sum + total.astype(jnp.float32),
            state.count + jnp.sum(valid, dtype=jnp.float32),
        )

    def compute(state):
        return state.log_eep_sum / state.count

    return ConditionalAccumulator(init, update, add_states, compute)


def nce(num_target_classes: int, num_source_classes: int) -> Accumulator:
    """NCE in one pass: counts of (label, argmax source class); ``compute`` is ``-H(Y|Z)``."""
    num_target_classes = check_num_classes(num_target_classes)

    def init():
        return NCEState(jnp.zeros((num_target_classes, num_source_classes), jnp.float32))

    def update(state, predictions, labels, mask=None):
        predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
        check_batch(predictions, labels, num_source_classes, "predictions")
        counts = nce_counts(predictions, labels, num_target_classes, mask=mask)
        return NCEState(state.counts + counts)

    def compute(state):
        return nce_from_counts(state.counts)

    return Accumulator(init, update, add_states, compute)


class HScoreState(NamedTuple):
    """H-score sums over ``features - shift`` (see :class:`leep_jax.scores.h_score.HScoreSums`).

    The shift only conditions the float32 sums (it cancels exactly in the score); it is
    part of the state so that states summed with different shifts are re-centred by
    ``merge`` instead of being added silently.
    """

    count: jax.Array  # f32[]
    feature_sum: jax.Array  # f32[D]: sum of (f - shift)
    outer_sum: jax.Array  # f32[D, D]: sum of (f - shift)(f - shift)^T
    class_sum: jax.Array  # f32[Y, D]
    class_count: jax.Array  # f32[Y]
    shift: jax.Array  # f32[D]


def first_batch_shift(
    shift: jax.Array, count_so_far: jax.Array, features: jax.Array, valid: jax.Array
) -> jax.Array:
    """``shift`` once rows were counted, else the mean of this batch's ``valid`` rows.

    The shift that feature sums are taken around: it cancels in the scores and keeps
    float32 sums accurate for features far from zero.
    """
    count = jnp.sum(valid, dtype=jnp.float32)
    total = jnp.sum(jnp.where(valid[:, None], features.astype(jnp.float32), 0), axis=0)
    return jnp.where(count_so_far > 0, shift, total / jnp.maximum(count, 1))


def _recentred(state: HScoreState, shift: jax.Array) -> HScoreState:
    """The same sums over ``f - shift`` instead of ``f - state.shift`` (exact algebra).

    With ``g = f - state.shift`` and ``d = state.shift - shift``:
    ``sum (g + d) = sum g + n d`` and
    ``sum (g + d)(g + d)^T = sum g g^T + (sum g) d^T + d (sum g)^T + n d d^T``.
    """
    d = state.shift - shift
    feature_sum = state.feature_sum + state.count * d
    cross = jnp.outer(state.feature_sum, d)
    outer_sum = state.outer_sum + cross + cross.T + state.count * jnp.outer(d, d)
    class_sum = state.class_sum + state.class_count[:, None] * d[None, :]
    return HScoreState(state.count, feature_sum, outer_sum, class_sum, state.class_count, shift)


def merge_h_score(a: HScoreState, b: HScoreState) -> HScoreState:
    """Sum of two H-score states, re-centred onto one shift when theirs differ.

    The merged shift is the shift of the state with more rows (the midpoint of both
    on a tie): no arithmetic that a compiler could contract differently for swapped
    arguments, so ``merge`` commutes bit for bit, and states of one configuration
    (equal shifts) add as plain sums. An empty state is the identity.
    """
    midpoint = (a.shift + b.shift) * 0.5
    shift = jnp.where(a.count > b.count, a.shift, jnp.where(b.count > a.count, b.shift, midpoint))
    summed = jax.tree.map(jnp.add, _recentred(a, shift)[:-1], _recentred(b, shift)[:-1])
    merged = HScoreState(*summed, shift)
    merged = jax.tree.map(lambda x, y: jnp.where(a.count > 0, x, y), merged, b)
    return jax.tree.map(lambda x, y: jnp.where(b.count > 0, x, y), merged, a)


def h_score(
    num_target_classes: int, feature_dim: int, *, shift: ArrayLike | None = None
) -> Accumulator:
    """H-score in one pass from sums of features, outer products and class sums.

    State size is ``O(D^2 + Y D)`` whatever ``n`` is. The sums are taken over
    ``features - shift``: the shift cancels exactly in the score but keeps the float32
    covariance ``S/n - m m^T`` accurate when features have a large mean. It lives in the
    state (:class:`HScoreState`): by default the first update with counted rows sets it
    to their mean, and ``merge`` re-centres states whose shifts differ, so per-batch
    states (one per device, or per batch in a metric collection) always merge exactly.

    Args:
      num_target_classes: static ``Y``.
      feature_dim: static ``D``.
      shift: optional fixed ``[D]`` shift for every state of this accumulator (e.g. a
        global mean known in advance); then updates never change it and merges are plain
        sums, so states can also be combined with ``jax.lax.psum``.
    """
    num_target_classes = check_num_classes(num_target_classes)
    fixed_shift = None if shift is None else jnp.asarray(shift, jnp.float32)
    if fixed_shift is not None and fixed_shift.shape != (feature_dim,):
        raise ValueError(f"shift must have shape ({feature_dim},), got {fixed_shift.shape}")

    def init():
        return HScoreState(
            count=jnp.zeros((), jnp.float32),
            feature_sum=jnp.zeros((feature_dim,), jnp.float32),
            outer_sum=jnp.zeros((feature_dim, feature_dim), jnp.float32),
            class_sum=jnp.zeros((num_target_classes, feature_dim), jnp.float32),
            class_count=jnp.zeros((num_target_classes,), jnp.float32),
            shift=jnp.zeros((feature_dim,), jnp.float32) if fixed_shift is None else fixed_shift,
        )

    def update(state, features, labels, mask=None):
        features, labels = jnp.asarray(features), jnp.asarray(labels)
        check_batch(features, labels, feature_dim, "features")
        shift = fixed_shift
        if shift is None:
            valid = ops.valid_rows(labels, num_target_classes, mask)
            shift = first_batch_shift(state.shift, state.count, features, valid)
        sums = h_score_sums(features, labels, num_target_classes, mask=mask, shift=shift)
        batch = HScoreState(*(x.astype(jnp.float32) for x in sums), shift)
        return merge_h_score(state, batch)

    def compute(state):
        return h_score_from_sums(HScoreSums(*state[:-1]), state.shift)

    return Accumulator(init, update, merge_h_score, compute)
