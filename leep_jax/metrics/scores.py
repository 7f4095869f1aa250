"""LEEP (two phases), NCE, H-score, LogME, regularized H-score, TransRate and GBC as
clu metric classes, one factory each.

Each factory binds the static class counts and the model-output names and returns a
``clu.metrics.Metric`` subclass built by :func:`~leep_jax.metrics.from_accumulator`
over the streaming accumulator of the same name. The four feature scores that take a
fixed ``shift`` share one signature and one builder, :func:`_feature_metric`.

Exact LEEP needs two passes over the data (README, "Streaming"): the conditional
``P(y|z)`` depends on all the data and sits inside the log, so no fixed-size state
summed batch by batch gives LEEP in one pass. Phase 1 is the :func:`joint` metric;
:func:`conditional` freezes ``P(y|z)`` from it; phase 2 is the :func:`log_eep` metric,
which takes that conditional as a model output named ``"conditional"`` next to the
logits and labels, and computes LEEP. The conditional is an input rather than part
of the class, so one compiled evaluation step serves every epoch.

Example:
  >>> import jax.numpy as jnp
  >>> from leep_jax import metrics
  >>> batches = [(jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8]])), jnp.array([0, 1])),
  ...            (jnp.log(jnp.array([[0.7, 0.3]])), jnp.array([0]))]
  >>> Joint, LogEEP = metrics.joint(2, 2), metrics.log_eep(2, 2)
  >>> joint = Joint.empty()
  >>> for logits, labels in batches:
  ...     joint = joint.merge(Joint.from_model_output(logits=logits, labels=labels))
  >>> frozen = metrics.conditional(joint)
  >>> eep = LogEEP.empty()
  >>> for logits, labels in batches:
  ...     eep = eep.merge(LogEEP.from_model_output(
  ...         logits=logits, labels=labels, conditional=frozen))
  >>> round(float(eep.compute()), 4)
  -0.3652
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from leep_jax import streaming
from leep_jax.metrics.adapter import AccumulatorMetric, from_accumulator


def joint(
    num_target_classes: int,
    num_source_classes: int,
    *,
    from_logits: bool = True,
    predictions: str = "logits",
    labels: str = "labels",
    mask: str | None = "mask",
) -> type[AccumulatorMetric]:
    """Phase 1 of LEEP: the empirical joint ``P(y, z)``; ``compute`` gives ``f32[Y, Z]``.

    Args:
      num_target_classes: static ``Y``.
      num_source_classes: static ``Z``.
      from_logits: the predictions output holds logits (the default here, as a model's
        output usually does; the functions and ``streaming`` default to probabilities).
      predictions: name of the ``[n, Z]`` model output.
      labels: name of the ``int[n]`` target labels output.
      mask: name of the optional ``[n]`` mask output, or None.
    """
    return from_accumulator(
        streaming.joint(num_target_classes, num_source_classes, from_logits=from_logits),
        (predictions, labels),
        mask=mask,
        name="Joint",
    )


def conditional(joint_metric: AccumulatorMetric) -> jax.Array:
    """The frozen conditional ``P(y | z)``, ``f32[Y, Z]``, of a complete phase-1 metric.

    Pass it to every phase-2 batch as the model output ``conditional`` (see
    :func:`log_eep`). Columns of source classes with zero probability are 0.
    """
    return streaming.conditional(joint_metric.state)


def log_eep(
    num_target_classes: int,
    num_source_classes: int,
    *,
    from_logits: bool = True,
    predictions: str = "logits",
    labels: str = "labels",
    conditional: str = "conditional",
    mask: str | None = "mask",
) -> type[AccumulatorMetric]:
    """Phase 2 of LEEP: the summed log expected empirical prediction; ``compute`` is LEEP.

    ``LEEP = (1/n) sum_i log sum_z P(y_i|z) theta_iz`` (Nguyen et al., ICML 2020), exact
    when every batch gets the same conditional, the one frozen from the complete
    phase-1 :func:`joint` metric of the same data by :func:`conditional`. Merging
    metrics built with different conditionals gives no meaningful score.

    Args:
      num_target_classes: static ``Y``.
      num_source_classes: static ``Z``.
      from_logits: the predictions output holds logits (the default here, as a model's
        output usually does; the functions and ``streaming`` default to probabilities).
      predictions: name of the ``[n, Z]`` model output.
      labels: name of the ``int[n]`` target labels output.
      conditional: name of the ``f32[Y, Z]`` frozen-conditional output.
      mask: name of the optional ``[n]`` mask output, or None.
    """
    return from_accumulator(
        streaming.log_eep(num_target_classes, num_source_classes, from_logits=from_logits),
        (predictions, labels, conditional),
        mask=mask,
        name="LogEEP",
    )


def nce(
    num_target_classes: int,
    num_source_classes: int,
    *,
    predictions: str = "logits",
    labels: str = "labels",
    mask: str | None = "mask",
) -> type[AccumulatorMetric]:
    """NCE ``-H(Y | Z)`` with ``z`` the argmax source class (Tran et al., ICCV 2019).

    Single-pass and exact: the state is the ``[Y, Z]`` co-occurrence counts. The argmax
    is the same for logits and probabilities.

    Args:
      num_target_classes: static ``Y``.
      num_source_classes: static ``Z``.
      predictions: name of the ``[n, Z]`` logits or probabilities output.
      labels: name of the ``int[n]`` target labels output.
      mask: name of the optional ``[n]`` mask output, or None.
    """
    return from_accumulator(
        streaming.nce(num_target_classes, num_source_classes),
        (predictions, labels),
        mask=mask,
        name="NCE",
    )


def h_score(
    num_target_classes: int,
    feature_dim: int,
    *,
    features: str = "features",
    labels: str = "labels",
    mask: str | None = "mask",
) -> type[AccumulatorMetric]:
    """H-score ``tr(pinv(Cov f) @ Cov(E[f | y]))`` (Bao et al., ICIP 2019), single-pass.

    The state is the H-score accumulator's sums (``O(D^2 + Y D)``); batches merge
    through that accumulator's ``merge``.

    Args:
      num_target_classes: static ``Y``.
      feature_dim: static ``D``.
      features: name of the ``[n, D]`` penultimate-features output.
      labels: name of the ``int[n]`` target labels output.
      mask: name of the optional ``[n]`` mask output, or None.
    """
    return from_accumulator(
        streaming.h_score(num_target_classes, feature_dim),
        (features, labels),
        mask=mask,
        name="HScore",
    )


def _feature_metric(
    accumulator: Callable[..., streaming.Accumulator], name: str, summary: str
) -> Callable[..., type[AccumulatorMetric]]:
    """A metric factory over a one-pass feature accumulator that takes a fixed ``shift``.

    Args:
      accumulator: the streaming factory, ``accumulator(Y, D, shift=...)``.
      name: the metric class's name.
      summary: the first paragraph of the factory's docstring.
    """

    def factory(
        num_target_classes: int,
        feature_dim: int,
        *,
        shift: jax.typing.ArrayLike | None = None,
        features: str = "features",
        labels: str = "labels",
        mask: str | None = "mask",
    ) -> type[AccumulatorMetric]:
        return from_accumulator(
            accumulator(num_target_classes, feature_dim, shift=shift),
            (features, labels),
            mask=mask,
            name=name,
        )

    factory.__name__ = factory.__qualname__ = accumulator.__name__
    factory.__doc__ = f"""{summary}

    Over :func:`leep_jax.streaming.{accumulator.__name__}`. Its state is sums of
    ``features - shift`` (exact for any shift; states merge by plain sums, so every batch
    must use the same one). Pass a rough feature mean (e.g. of a first batch) as ``shift``
    when features sit far from zero, to keep float32 sums accurate.

    Args:
      num_target_classes: static ``Y``.
      feature_dim: static ``D``.
      shift: optional fixed ``[D]`` shift of every batch's features.
      features: name of the ``[n, D]`` penultimate-features output.
      labels: name of the ``int[n]`` target labels output.
      mask: name of the optional ``[n]`` mask output, or None.
    """
    return factory


logme = _feature_metric(streaming.logme, "LogME", "LogME (You et al., ICML 2021), single-pass.")
regularized_h_score = _feature_metric(
    streaming.regularized_h_score,
    "RegularizedHScore",
    "H-score with Ledoit-Wolf shrinkage (Ibrahim et al., NeurIPS 2021), single-pass.",
)
transrate = _feature_metric(
    streaming.transrate, "TransRate", "TransRate (Huang et al., ICML 2022), single-pass."
)
gbc = _feature_metric(
    streaming.gbc, "GBC", "GBC, spherical Gaussians (Pandy et al., CVPR 2022), single-pass."
)
