"""One-pass, mergeable accumulators for the feature scores (LogME, regularized H-score,
TransRate, GBC), in the style of :mod:`leep_jax.streaming.accumulators`.

None of these scores needs the features in memory: each is an exact function of sums
over examples (counts, feature sums, Gram matrices, per-class sums), so one pass over
the batches suffices, ``merge`` is a plain sum (``lax.psum`` across devices) and the
state has a fixed size whatever ``n`` is.

Every factory takes an optional ``shift``: a ``[D]`` vector subtracted from each
feature before summing (e.g. the mean of a first batch). It is exact (it cancels in
every score; LogME, which does not centre, adds it back) and keeps the float32 sums
``S/n - m m^T`` accurate when features have a large mean. It is part of the
configuration, so states made with the same shift merge by plain sums.

Example:
  >>> import jax.numpy as jnp
  >>> from leep_jax import streaming
  >>> batches = [(jnp.array([[0.0], [0.4]]), jnp.array([0, 0])),
  ...            (jnp.array([[0.3], [0.7]]), jnp.array([1, 1]))]
  >>> acc = streaming.gbc(num_target_classes=2, feature_dim=1)
  >>> state = acc.init()
  >>> for f, y in batches:
  ...     state = acc.update(state, f, y)
  >>> round(float(acc.compute(state)), 3)
  -1.51
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from leep_jax.scores.gbc import GBCSums, check_gaussian_type, gbc_from_sums, gbc_sums
from leep_jax.scores.logme import (
    LogMESums,
    logme_from_sums,
    logme_regression_sums,
    logme_sums,
)
from leep_jax.scores.regularized_h_score import (
    RegularizedHScoreSums,
    regularized_h_score_from_sums,
    regularized_h_score_sums,
)
from leep_jax.scores.transrate import TransRateSums, transrate_from_sums, transrate_sums
from leep_jax.scores.validation import check_num_classes
from leep_jax.streaming.accumulators import Accumulator, add_states, check_batch


def _zeros(state_type, **shapes):
    return state_type(**{name: jnp.zeros(shape, jnp.float32) for name, shape in shapes.items()})


def _as_state(sums):
    return jax.tree.map(lambda x: x.astype(jnp.float32), sums)


def _shift(shift, feature_dim):
    if shift is None:
        return None
    shift = jnp.asarray(shift, jnp.float32)
    if shift.shape != (feature_dim,):
        raise ValueError(f"shift must have shape ({feature_dim},), got {shift.shape}")
    return shift


def _class_update(sums_fn, num_target_classes: int, feature_dim: int, shift):
    """The ``update`` of a classification accumulator: adds ``sums_fn``'s sums of a batch."""

    def update(state, features, labels, mask=None):
        features, labels = jnp.asarray(features), jnp.asarray(labels)
        check_batch(features, labels, feature_dim, "features")
        sums = sums_fn(features, labels, num_target_classes, mask=mask, shift=shift)
        return add_states(state, _as_state(sums))

    return update


def _logme_init(num_columns: int, feature_dim: int) -> LogMESums:
    return _zeros(
        LogMESums,
        count=(),
        feature_sum=(feature_dim,),
        outer_sum=(feature_dim, feature_dim),
        target_sum=(num_columns,),
        target_sq_sum=(num_columns,),
        cross_sum=(num_columns, feature_dim),
    )


def logme(num_target_classes: int, feature_dim: int, *, shift=None) -> Accumulator:
    """LogME (classification) in one pass: ``F^T F``, ``F^T Y``, feature and class sums.

    Does not need the features in memory: the evidence of every class is a function of
    these sums alone. State ``O(D^2 + C D)``; ``compute`` runs one ``D x D``
    eigendecomposition and the fixed point (see :func:`leep_jax.logme`).

    Args:
      num_target_classes: static ``C``.
      feature_dim: static ``D``.
      shift: optional ``[D]`` shift (module docstring).
    """
    num_target_classes = check_num_classes(num_target_classes)
    shift = _shift(shift, feature_dim)

    def compute(state):
        return logme_from_sums(state, shift, state.target_sum > 0)

    update = _class_update(logme_sums, num_target_classes, feature_dim, shift)
    return Accumulator(
        lambda: _logme_init(num_target_classes, feature_dim), update, add_states, compute
    )


def logme_regression(num_targets: int, feature_dim: int, *, shift=None) -> Accumulator:
    """LogME for real-valued targets ``[n, num_targets]`` in one pass (as :func:`logme`).

    ``update(state, features, targets, mask=None)``.
    """
    shift = _shift(shift, feature_dim)

    def update(state, features, targets, mask=None):
        features, targets = jnp.asarray(features), jnp.asarray(targets)
        if features.ndim != 2 or features.shape[1] != feature_dim:
            raise ValueError(f"features batch must have shape [n, {feature_dim}]")
        if targets.shape != (features.shape[0], num_targets):
            raise ValueError(
                f"targets batch must have shape {(features.shape[0], num_targets)}, "
                f"got {targets.shape}"
            )
        sums = logme_regression_sums(features, targets, mask=mask, shift=shift)
        return add_states(state, _as_state(sums))

    def compute(state):
        return logme_from_sums(state, shift, jnp.ones(state.target_sum.shape, bool))

    return Accumulator(lambda: _logme_init(num_targets, feature_dim), update, add_states, compute)


def regularized_h_score(num_target_classes: int, feature_dim: int, *, shift=None) -> Accumulator:
    """Regularized H-score in one pass.

    Does not need the features in memory: besides the H-score's sums, the Ledoit-Wolf
    shrinkage needs ``sum ||x - mean||^4``, which expands exactly into the running sums
    of ``||x||^4``, ``||x||^2 x`` and ``x x^T``. State ``O(D^2 + C D)``.

    Args:
      num_target_classes: static ``C``.
      feature_dim: static ``D``.
      shift: optional ``[D]`` shift (module docstring).
    """
    num_target_classes = check_num_classes(num_target_classes)
    shift = _shift(shift, feature_dim)

    def init():
        return _zeros(
            RegularizedHScoreSums,
            count=(),
            feature_sum=(feature_dim,),
            outer_sum=(feature_dim, feature_dim),
            norm_sq_weighted_sum=(feature_dim,),
            norm_fourth_sum=(),
            class_sum=(num_target_classes, feature_dim),
            class_count=(num_target_classes,),
        )

    update = _class_update(regularized_h_score_sums, num_target_classes, feature_dim, shift)
    return Accumulator(init, update, add_states, regularized_h_score_from_sums)


def transrate(
    num_target_classes: int, feature_dim: int, *, eps: float = 1e-4, shift=None
) -> Accumulator:
    """TransRate in one pass from per-class Gram matrices.

    Does not need the features in memory: the coding rates of the globally centred
    features and of each class are log-determinants of Gram matrices, which follow from
    per-class sums of ``x x^T`` and ``x``. State ``O(C D^2)``.

    Args:
      num_target_classes: static ``C``.
      feature_dim: static ``D``.
      eps: the distortion (static), as :func:`leep_jax.transrate`.
      shift: optional ``[D]`` shift (module docstring).
    """
    num_target_classes = check_num_classes(num_target_classes)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    shift = _shift(shift, feature_dim)

    def init():
        return _zeros(
            TransRateSums,
            count=(),
            feature_sum=(feature_dim,),
            class_count=(num_target_classes,),
            class_sum=(num_target_classes, feature_dim),
            class_outer_sum=(num_target_classes, feature_dim, feature_dim),
        )

    update = _class_update(transrate_sums, num_target_classes, feature_dim, shift)
    return Accumulator(init, update, add_states, lambda state: transrate_from_sums(state, eps))


def gbc(
    num_target_classes: int, feature_dim: int, *, gaussian_type: str = "spherical", shift=None
) -> Accumulator:
    """GBC in one pass from per-class sums and sums of squares.

    Does not need the features in memory: per-class means and (diagonal) variances are
    all the Bhattacharyya distances use. State ``O(C D)``.

    Args:
      num_target_classes: static ``C``.
      feature_dim: static ``D``.
      gaussian_type: ``"spherical"`` or ``"diagonal"``, as :func:`leep_jax.gbc`.
      shift: optional ``[D]`` shift (module docstring).
    """
    num_target_classes = check_num_classes(num_target_classes)
    gaussian_type = check_gaussian_type(gaussian_type)
    shift = _shift(shift, feature_dim)

    def init():
        return _zeros(
            GBCSums,
            class_count=(num_target_classes,),
            class_sum=(num_target_classes, feature_dim),
            class_sq_sum=(num_target_classes, feature_dim),
        )

    update = _class_update(gbc_sums, num_target_classes, feature_dim, shift)
    return Accumulator(init, update, add_states, lambda state: gbc_from_sums(state, gaussian_type))
