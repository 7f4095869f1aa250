"""The scoring engine: every score of a target set from one stream of batches.

One function, :func:`run`, scores any set of scores from batches that are either a
model's inputs (then a ``forward(params, inputs) -> (predictions, features)`` runs inside
the same jitted step) or the outputs themselves (``forward=None``: in-memory arrays,
memory-mapped ``.npy`` files). ``score_model``, ``score_zoo``, ``leep-jax score``, the
experiments and the benchmarks all call it, so padding, masking, validation and the
H-score shift are done here once.

Pass 1 runs one jitted step per batch that updates the streaming states of
:mod:`leep_jax.streaming.accumulators` and ``feature_accumulators`` (LEEP's joint, NCE
counts, the feature scores' sums; features kept for SFDA, PARC, NLEEP) and a few
validation flags (NaN/Inf, probability rows) reduced on the device. Exact LEEP then needs
a second sum with the conditional ``P(y|z)`` frozen: over the predictions kept on the
device, or over the batches again (a second forward pass, or a second read of the
arrays). The steps are module-level jitted functions with the forward and the
configuration as static arguments, so they compile once per forward, configuration and
batch shape, and a second call with other weights of the same architecture compiles
nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leep_jax import scores
from leep_jax.scores.names import FEATURE_SCORES, PREDICTION_SCORES
from leep_jax.scores.validation import probability_tolerance
from leep_jax.streaming import accumulators, feature_accumulators
from leep_jax.streaming.sources import Batch, BatchSource

Forward = Callable[[Any, Any], tuple[Any, Any]]
_NO_ROW = np.iinfo(np.int32).max


def given_outputs(params, inputs):
    """The forward of sources that hold outputs already: ``inputs = (predictions, features)``."""
    del params
    return inputs


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static configuration of one scoring run (hashable: a jit static argument)."""

    num_target_classes: int
    metrics: tuple[str, ...]
    from_logits: bool
    num_source_classes: int  # 0 when no score reads predictions
    feature_dim: int  # 0 when no score reads features
    keep_predictions: bool  # keep pass-1 predictions on device for LEEP's second sum

    @property
    def reads_predictions(self) -> bool:
        return any(m in PREDICTION_SCORES for m in self.metrics)

    @property
    def reads_features(self) -> bool:
        return any(m in FEATURE_SCORES for m in self.metrics)

    @property
    def keeps_features(self) -> bool:
        return any(m in IN_MEMORY_SCORES for m in self.metrics)

    def accumulators(self, shift: jax.Array | None = None) -> dict[str, accumulators.Accumulator]:
        """Pass-1 accumulator per streamed score (LEEP's is its joint).

        ``shift`` is the ``[D]`` vector the feature sums are taken around (fixed by the
        first batch; see :func:`pass1_step`).
        """
        return {
            metric: ONE_PASS_SCORES[metric](self, shift)
            for metric in self.metrics
            if metric in ONE_PASS_SCORES
        }

    def log_eep(self) -> accumulators.ConditionalAccumulator:
        return accumulators.log_eep(
            self.num_target_classes, self.num_source_classes, from_logits=self.from_logits
        )


# How each score is computed from the stream. One-pass scores: an accumulator factory
# taking the plan (LEEP's entry is its first pass, the joint). In-memory scores need all
# features at once (an iterative fit or an N x N matrix): the engine keeps the features
# of every batch on device and calls the score once, masked.
ONE_PASS_SCORES: dict[str, Callable[[Plan, Any], accumulators.Accumulator]] = {
    "leep": lambda plan, shift: accumulators.joint(
        plan.num_target_classes, plan.num_source_classes, from_logits=plan.from_logits
    ),
    "nce": lambda plan, shift: accumulators.nce(plan.num_target_classes, plan.num_source_classes),
    "h_score": lambda plan, shift: accumulators.h_score(
        plan.num_target_classes, plan.feature_dim, shift=shift
    ),
    "logme": lambda plan, shift: feature_accumulators.logme(
        plan.num_target_classes, plan.feature_dim, shift=shift
    ),
    "regularized_h_score": lambda plan, shift: feature_accumulators.regularized_h_score(
        plan.num_target_classes, plan.feature_dim, shift=shift
    ),
    "transrate": lambda plan, shift: feature_accumulators.transrate(
        plan.num_target_classes, plan.feature_dim, shift=shift
    ),
    "gbc": lambda plan, shift: feature_accumulators.gbc(
        plan.num_target_classes, plan.feature_dim, shift=shift
    ),
}


# NLEEP's k-means++ start is random: one fixed key, so a score is reproducible. Made at
# call time: an array at import would start JAX's backend before jax.distributed could.
def nleep_key() -> jax.Array:
    return jax.random.key(0)


IN_MEMORY_SCORES: dict[str, Callable[..., jax.Array]] = {
    "sfda": scores.sfda,
    "parc": scores.parc,
    "nleep": lambda *args, **kwargs: scores.nleep(*args, key=nleep_key(), **kwargs),
}


class Checks(NamedTuple):
    """Validation flags of the rows seen so far, reduced on the device."""

    nonfinite_prediction_row: jax.Array  # i32[]: first row with NaN/Inf, or int32 max
    nonfinite_feature_row: jax.Array  # i32[]
    min_probability: jax.Array  # f32[]
    worst_row_error: jax.Array  # f32[]: max |sum of a probability row - 1|
    worst_row: jax.Array  # i32[]


def _no_problems() -> Checks:
    return Checks(
        jnp.array(_NO_ROW, jnp.int32),
        jnp.array(_NO_ROW, jnp.int32),
        jnp.array(jnp.inf, jnp.float32),
        jnp.array(0, jnp.float32),
        jnp.array(_NO_ROW, jnp.int32),
    )


def _first_bad_row(values, mask, first_row):
    bad = mask & ~jnp.all(jnp.isfinite(values), axis=1)
    return jnp.where(jnp.any(bad), first_row + jnp.argmax(bad), _NO_ROW).astype(jnp.int32)


def _batch_checks(checks: Checks, predictions, features, mask, first_row, plan: Plan) -> Checks:
    checks = checks._replace(
        nonfinite_prediction_row=jnp.minimum(
            checks.nonfinite_prediction_row,
            _NO_ROW if predictions is None else _first_bad_row(predictions, mask, first_row),
        ),
        nonfinite_feature_row=jnp.minimum(
            checks.nonfinite_feature_row,
            _NO_ROW if features is None else _first_bad_row(features, mask, first_row),
        ),
    )
    if predictions is None or plan.from_logits:
        return checks
    values = predictions.astype(jnp.float32)
    row_error = jnp.where(mask, jnp.abs(jnp.sum(values, axis=1) - 1), 0)
    worse = jnp.max(row_error) > checks.worst_row_error
    return checks._replace(
        min_probability=jnp.minimum(
            checks.min_probability, jnp.min(jnp.where(mask[:, None], values, jnp.inf))
        ),
        worst_row_error=jnp.maximum(checks.worst_row_error, jnp.max(row_error)),
        worst_row=jnp.where(worse, first_row + jnp.argmax(row_error), checks.worst_row),
    )


def raise_for(checks: Checks, *, from_logits: bool, probability_dtype) -> None:
    """Raises the ValueError of :func:`leep_jax.leep` for the first problem flagged."""
    checks = jax.device_get(checks)
    row = int(checks.nonfinite_prediction_row)
    if row != _NO_ROW:
        raise ValueError(f"predictions contain NaN or Inf (first in row {row})")
    if not from_logits and probability_dtype is not None:
        low = float(checks.min_probability)
        if low < 0:
            raise ValueError(
                f"predictions contain negative probabilities (min {low:.3g}); "
                "pass from_logits=True for logits"
            )
        tolerance = probability_tolerance(probability_dtype)
        error = float(checks.worst_row_error)
        if error > tolerance:
            raise ValueError(
                f"predictions rows must sum to 1 (tolerance {tolerance:.3g}); row "
                f"{int(checks.worst_row)} is off by {error:.3g}; pass from_logits=True for logits"
            )
    row = int(checks.nonfinite_feature_row)
    if row != _NO_ROW:
        raise ValueError(f"features contain NaN or Inf (first in row {row})")


def _outputs(forward: Forward, params, inputs, plan: Plan):
    predictions, features = forward(params, inputs)
    return (
        predictions if plan.reads_predictions else None,
        features if plan.reads_features else None,
    )


@functools.partial(jax.jit, static_argnames=("plan",))
def initial_state(*, plan: Plan) -> dict[str, Any]:
    """Pass 1's empty state: every accumulator, the feature shift, the count, the checks.

    One compiled program per plan (made eagerly, the zeros of the ten scores' states
    were ~50 dispatches per call).
    """
    no_shift = jnp.zeros((plan.feature_dim,), jnp.float32) if plan.reads_features else None
    state = {name: acc.init() for name, acc in plan.accumulators(no_shift).items()}
    if plan.reads_features:
        state["feature_shift"] = no_shift
    state["count"], state["checks"] = jnp.zeros((), jnp.float32), _no_problems()
    return state


@functools.partial(jax.jit, static_argnames=("forward", "plan"))
def pass1_step(state, params, inputs, labels, mask, first_row, *, forward: Forward, plan: Plan):
    """One batch of pass 1: the forward, every pass-1 state and the checks.

    Returns ``(state, kept)``: ``kept`` holds the batch's predictions when LEEP keeps
    them for its second sum and its features when an in-memory score needs them (else
    None).
    """
    predictions, features = _outputs(forward, params, inputs, plan)
    new = {
        "count": state["count"] + jnp.sum(mask, dtype=jnp.float32),
        "checks": _batch_checks(state["checks"], predictions, features, mask, first_row, plan),
    }
    shift = None
    if plan.reads_features:
        shift = accumulators.first_batch_shift(
            state["feature_shift"], state["count"], features, mask
        )
        new["feature_shift"] = shift
    for metric, acc in plan.accumulators(shift).items():
        values = predictions if metric in PREDICTION_SCORES else features
        new[metric] = acc.update(state[metric], values, labels, mask)
    kept = (
        predictions if "leep" in plan.metrics and plan.keep_predictions else None,
        features if plan.keeps_features else None,
    )
    return new, kept


@functools.partial(jax.jit, static_argnames=("forward", "plan"))
def pass2_step(state, params, inputs, labels, mask, conditional, *, forward: Forward, plan: Plan):
    """One batch of LEEP's second sum, with the conditional frozen after pass 1."""
    predictions, _ = forward(params, inputs)
    return plan.log_eep().update(state, predictions, labels, conditional, mask)


@functools.partial(jax.jit, static_argnames=("plan",))
def finish_step(state, *, plan: Plan) -> dict[str, jax.Array]:
    """The one-pass scores but LEEP (which needs its second sum) from pass 1's state.

    One compiled program per plan: computed eagerly, the fixed points and conditionals
    of some scores (LogME's ``while_loop``, TransRate's ``cond``) would compile again on
    every call, which cost a sweep of small models ~3 s per (model, target).
    """
    accs = plan.accumulators(state.get("feature_shift"))
    return {m: acc.compute(state[m]) for m, acc in accs.items() if m != "leep"}


def _kept_predictions(params, inputs):
    del params
    return inputs, None


@functools.lru_cache(maxsize=64)
def _cached_eval_shape(forward: Forward, treedef, avals: tuple) -> Any:
    return jax.eval_shape(forward, *jax.tree.unflatten(treedef, avals))


def _eval_shape(forward: Forward, params, inputs) -> Any:
    """``jax.eval_shape(forward, params, inputs)``, cached by the forward and the shapes.

    Tracing a model costs tens of milliseconds (NNX merges its graph), once per call of
    :func:`run`: a sweep scores many models of one architecture on one target shape.
    """
    leaves, treedef = jax.tree.flatten((params, inputs))
    if all(isinstance(x, (np.ndarray, jax.Array)) for x in leaves):
        avals = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)
        return _cached_eval_shape(forward, treedef, avals)
    return jax.eval_shape(forward, params, inputs)


def _shapes(forward: Forward, params, first: Batch) -> tuple[Any, Any]:
    """Abstract ``(predictions, features)`` of one batch, checked to be ``[b, k]`` floats."""
    outputs = _eval_shape(forward, params, first.inputs)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
        raise ValueError("the forward pass must return a pair (predictions, features)")
    batch_size = first.labels.shape[0]
    for name, out in zip(("predictions", "features"), outputs, strict=True):
        if out is None:
            continue
        if out.ndim != 2 or out.shape[0] != batch_size:
            raise ValueError(
                f"the forward pass must return {name} of shape [{batch_size}, k] for a batch "
                f"of {batch_size}, got {out.shape}"
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"the forward pass must return floating {name}, got {out.dtype}")
    return outputs[0], outputs[1]


class Result(NamedTuple):
    """What :func:`run` measured."""

    scores: dict[str, float]  # in the order the metrics were asked for
    n: int  # examples counted
    forward_passes: int  # 1, or 2 when LEEP's second sum ran the forward again
    seconds: float  # wall time, compilation included


def run(
    source: BatchSource,
    num_target_classes: int,
    metrics: tuple[str, ...],
    *,
    forward: Forward = given_outputs,
    params: Any = None,
    from_logits: bool = True,
    keep_predictions: bool = True,
) -> Result:
    """Scores ``metrics`` over the batches of ``source``.

    Args:
      source: ``(second_pass=False) -> iterator`` of fixed-size
        :class:`~leep_jax.streaming.sources.Batch` es (see
        :mod:`leep_jax.streaming.sources`); called again with ``second_pass=True`` for
        LEEP's second sum when ``keep_predictions`` is False (a source may then skip
        what that sum does not read, such as features).
      num_target_classes: ``Y``, a checked Python int.
      metrics: checked score names (:data:`leep_jax.scores.names.SCORE_NAMES`).
      forward: ``(params, inputs) -> (predictions [b, Z], features [b, D])``, hashable
        (it is a static argument of the jitted steps); the default takes
        ``inputs = (predictions, features)`` as they are.
      params: the forward's weights, a pytree of arrays (traced, not static).
      from_logits: whether predictions are logits (else probabilities, checked).
      keep_predictions: keep pass-1 predictions on device for LEEP's second sum (memory
        ``n x Z``) instead of reading the batches again.

    Returns:
      A :class:`Result`.

    Raises:
      ValueError: an unhashable forward, no batches, outputs of the wrong shape, NaN/Inf,
        invalid probability rows, every row masked, or a second pass that counts other
        examples.
    """
    started = time.perf_counter()
    try:
        hash(forward)
    except TypeError:
        raise ValueError(
            f"forward must be hashable (a static argument of the jitted steps), got an "
            f"unhashable {type(forward).__name__}"
        ) from None
    stream = source()
    first = next(stream, None)
    if first is None:
        raise ValueError("batches is empty")
    predictions, features = _shapes(forward, params, first)
    if predictions is None and any(m in PREDICTION_SCORES for m in metrics):
        raise ValueError(f"{metrics} need predictions, but there are none")
    if features is None and any(m in FEATURE_SCORES for m in metrics):
        raise ValueError(f"{metrics} need features, but there are none")
    plan = Plan(
        num_target_classes,
        metrics,
        from_logits,
        0 if predictions is None else predictions.shape[1],
        0 if features is None else features.shape[1],
        keep_predictions,
    )
    state = initial_state(plan=plan)
    step = functools.partial(pass1_step, forward=forward, plan=plan)
    probability_dtype = None if predictions is None else predictions.dtype

    def check(checks):
        raise_for(checks, from_logits=from_logits, probability_dtype=probability_dtype)

    kept, kept_features, previous, batch = [], [], None, first
    while batch is not None:
        state, (predictions_kept, features_kept) = step(state, params, *batch)
        if predictions_kept is not None:
            kept.append((predictions_kept, batch.labels, batch.mask))
        if features_kept is not None:
            kept_features.append((features_kept, batch.labels, batch.mask))
        if previous is not None:
            check(previous)  # one step late: the host reads the next batch meanwhile
        previous = state["checks"]
        batch = next(stream, None)
    check(state["checks"])

    n = int(state["count"])
    if n == 0:
        raise ValueError("the masks exclude every example; a score needs at least one")
    scores = {m: float(v) for m, v in jax.device_get(finish_step(state, plan=plan)).items()}
    if plan.keeps_features:
        features, labels, mask = (
            jnp.concatenate(parts) for parts in zip(*kept_features, strict=True)
        )
        for metric in metrics:
            if metric in IN_MEMORY_SCORES:
                value = IN_MEMORY_SCORES[metric](
                    features, labels, num_target_classes, mask=mask, validate_inputs=False
                )
                scores[metric] = float(value)
    forward_passes = 1
    if "leep" in metrics:
        scores["leep"], forward_passes = _second_sum(
            source, state["leep"], kept, forward, params, plan, n
        )
    return Result({m: scores[m] for m in metrics}, n, forward_passes, time.perf_counter() - started)


def _second_sum(source, joint_state, kept, forward, params, plan: Plan, n: int):
    """LEEP from the complete joint: over the kept predictions, or over the batches again."""
    conditional, state = _second_sum_start(joint_state, plan=plan)
    batches: Iterator
    if plan.keep_predictions:
        forward, params, forward_passes = _kept_predictions, None, 1
        batches = iter(kept)
    else:
        forward_passes = 1 if forward is given_outputs else 2
        forward = _Predictions(forward)
        batches = ((b.inputs, b.labels, b.mask) for b in source(second_pass=True))
    for inputs, labels, mask in batches:
        state = pass2_step(
            state, params, inputs, labels, mask, conditional, forward=forward, plan=plan
        )
    value, count = jax.device_get(_second_sum_value(state, plan=plan))
    if int(count) != n:
        raise ValueError(
            f"the second pass over batches counted {int(count)} examples, the first "
            f"{n}: batches must yield the same data each time"
        )
    return float(value), forward_passes


@functools.partial(jax.jit, static_argnames=("plan",))
def _second_sum_start(joint_state, *, plan: Plan):
    """LEEP's frozen conditional ``P(y|z)`` and the second sum's empty state."""
    return accumulators.conditional(joint_state), plan.log_eep().init()


@functools.partial(jax.jit, static_argnames=("plan",))
def _second_sum_value(state, *, plan: Plan):
    """LEEP from the second sum's state, and the rows it counted."""
    return plan.log_eep().compute(state), state.count


@dataclasses.dataclass(frozen=True)
class _Predictions:
    """A forward whose features are dropped (XLA then skips computing what only they need)."""

    forward: Forward

    def __call__(self, params, inputs):
        return self.forward(params, inputs)[0], None
