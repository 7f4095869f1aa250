"""Any clu metric class as an in-place ``nnx.Metric`` (``reset / update / compute``)."""

from __future__ import annotations

from typing import Any

from clu import metrics as clu_metrics
from flax import nnx


class NnxMetric(nnx.metrics.Metric):
    """An ``nnx.Metric`` holding one clu metric in an ``nnx.metrics.MetricState``.

    ``update(**outputs)`` merges ``metric_class.from_model_output(**outputs)`` into the
    held metric, so it takes the same keyword outputs and ignores the ones it does not
    name: it sits in an ``nnx.MultiMetric`` beside ``nnx.metrics.Average`` and
    ``nnx.metrics.Accuracy``, and its state is a Variable, so updates inside ``nnx.jit``
    persist.

    Args:
      metric_class: a ``clu.metrics.Metric`` subclass, e.g. ``leep_jax.metrics.nce(10, 10)``.

    Raises:
      ValueError: ``metric_class`` is not a clu metric class.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from leep_jax import metrics
      >>> tracked = nnx.MultiMetric(
      ...     loss=nnx.metrics.Average("loss"), nce=metrics.NnxMetric(metrics.nce(2, 2)))
      >>> tracked.update(loss=jnp.array(0.5), logits=jnp.array([[2.0, 0.0], [0.0, 1.0]]),
      ...                labels=jnp.array([0, 1]))
      >>> {name: float(value) for name, value in tracked.compute().items()}
      {'loss': 0.5, 'nce': 0.0}
    """

    def __init__(self, metric_class: type[clu_metrics.Metric]):
        if not (isinstance(metric_class, type) and issubclass(metric_class, clu_metrics.Metric)):
            raise ValueError(
                f"metric_class must be a clu.metrics.Metric subclass, got {metric_class!r}"
            )
        self.metric_class = metric_class
        self.metric = nnx.metrics.MetricState(metric_class.empty())

    def reset(self) -> None:
        """Back to the metric of no data."""
        self.metric.set_value(self.metric_class.empty())

    def update(self, **model_output: Any) -> None:
        """Merges the metric of one batch of model outputs into the held one."""
        batch = self.metric_class.from_model_output(**model_output)
        self.metric.set_value(self.metric.get_value().merge(batch))

    def compute(self) -> Any:
        """The held metric's ``compute()``."""
        return self.metric.get_value().compute()

    @property
    def value(self) -> clu_metrics.Metric:
        """The held clu metric (e.g. for :func:`leep_jax.metrics.conditional`)."""
        return self.metric.get_value()
