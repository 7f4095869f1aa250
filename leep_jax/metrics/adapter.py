"""One adapter from a streaming :class:`~leep_jax.streaming.Accumulator` to a clu metric.

A ``clu.metrics.Metric`` is an immutable pytree with ``empty()``,
``from_model_output(**outputs)``, an associative ``merge``, ``compute`` and ``reduce``
over a leading device axis (CommonLoopUtils; google/metrax builds on the same protocol).
Our accumulators already are such states, so :func:`from_accumulator` turns any of
them into a metric class in one line: the class holds the accumulator's state as its
only field and calls the accumulator's own ``init / update / merge / compute``.
Static configuration (class counts, which model outputs to read) is bound by that
factory, the way ``clu.metrics.Average.from_output(name)`` binds an output name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.struct
import jax.numpy as jnp
from clu import metrics as clu_metrics

from leep_jax.streaming import Accumulator, ConditionalAccumulator


@flax.struct.dataclass
class AccumulatorMetric(clu_metrics.Metric):
    """A clu metric over the state of a streaming accumulator.

    Do not subclass it by hand: :func:`from_accumulator` builds the subclasses, with
    the class attributes below bound.

    Attributes:
      state: the accumulator's state (a NamedTuple of fixed-shape sums).
      accumulator: (class attribute) the :class:`~leep_jax.streaming.Accumulator`.
      inputs: (class attribute) names of the model outputs passed, in order, to
        ``accumulator.update`` after the state.
      mask_name: (class attribute) name of the optional ``bool[n]`` model output
        that marks the rows to count, or None to ignore masks.
    """

    state: Any

    # Class attributes, not fields (no annotations): bound by from_accumulator.
    accumulator = None
    inputs = ()
    mask_name = None

    @classmethod
    def empty(cls) -> AccumulatorMetric:
        """The metric of no data: ``empty().merge(m)`` equals ``m``."""
        return cls(cls.accumulator.init())

    @classmethod
    def from_model_output(cls, **model_output: Any) -> AccumulatorMetric:
        """The metric of one batch, from the model outputs named by ``inputs``.

        Other outputs are ignored, so one dict of outputs feeds a whole
        ``clu.metrics.Collection`` (or an ``nnx.MultiMetric``).

        Raises:
          ValueError: a named output is missing, or the mask is not ``[n]``.
        """
        missing = [name for name in cls.inputs if name not in model_output]
        if missing:
            raise ValueError(
                f"{cls.__name__} needs the model outputs {list(cls.inputs)}; missing "
                f"{missing} (got {sorted(model_output)})"
            )
        values = [jnp.asarray(model_output[name]) for name in cls.inputs]
        mask = model_output.get(cls.mask_name)  # keywords are strings: never the key None
        if mask is not None:
            # clu and nnx pass masks of any dtype (often float 0/1); nonzero counts.
            mask = jnp.asarray(mask)
            if mask.shape != values[0].shape[:1]:
                raise ValueError(
                    f"{cls.__name__}: mask {cls.mask_name!r} must have shape "
                    f"{values[0].shape[:1]} (one entry per row of {cls.inputs[0]!r}), "
                    f"got {mask.shape}"
                )
            mask = mask.astype(bool)
        accumulator = cls.accumulator
        return cls(accumulator.update(accumulator.init(), *values, mask=mask))

    def merge(self, other: AccumulatorMetric) -> AccumulatorMetric:
        """The metric of both sets of data, by the accumulator's own ``merge``."""
        return type(self)(self.accumulator.merge(self.state, other.state))

    def compute(self):
        """The score, by the accumulator's ``compute``."""
        return self.accumulator.compute(self.state)


def from_accumulator(
    accumulator: Accumulator,
    inputs: Sequence[str],
    *,
    mask: str | None = "mask",
    name: str = "AccumulatorMetric",
) -> type[AccumulatorMetric]:
    """A clu metric class whose state is ``accumulator``'s state.

    ``from_model_output(**outputs)`` runs
    ``accumulator.update(accumulator.init(), *[outputs[n] for n in inputs], mask=...)``,
    ``merge`` is ``accumulator.merge`` and ``compute`` is ``accumulator.compute``; the
    inherited ``clu.metrics.Metric.reduce`` folds a leading device axis with ``merge``.
    Build the class once and reuse it: ``jax.jit`` caches by the class.

    Args:
      accumulator: an :class:`~leep_jax.streaming.Accumulator` whose ``update`` takes
        ``(state, *inputs, mask=None)``.
      inputs: names of the model outputs passed to ``update``, in order, e.g.
        ``("logits", "labels")``.
      mask: name of the optional ``[n]`` model output marking the rows to count
        (nonzero = counted), or None to ignore masks.
      name: the class name (shown in errors and reprs).

    Returns:
      A subclass of :class:`AccumulatorMetric` (hence of ``clu.metrics.Metric``).

    Raises:
      ValueError: ``accumulator`` is not an Accumulator, or ``inputs`` is empty or not
        strings.

    Examples:
      >>> import jax.numpy as jnp
      >>> from leep_jax import metrics, streaming
      >>> NCE = metrics.from_accumulator(streaming.nce(2, 2), ("logits", "labels"))
      >>> batch = NCE.from_model_output(logits=jnp.array([[2.0, 0.0]]), labels=jnp.array([0]))
      >>> more = NCE.from_model_output(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]))
      >>> float(NCE.empty().merge(batch).merge(more).compute())
      0.0
    """
    if not isinstance(accumulator, (Accumulator, ConditionalAccumulator)):
        raise ValueError(
            f"accumulator must be a leep_jax.streaming.Accumulator, got "
            f"{type(accumulator).__name__}"
        )
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if not inputs or not all(isinstance(n, str) and n for n in inputs):
        raise ValueError(f"inputs must be a non-empty sequence of output names, got {inputs!r}")
    if mask is not None and not (isinstance(mask, str) and mask):
        raise ValueError(f"mask must be an output name or None, got {mask!r}")
    # type() takes __qualname__ from name and __module__ from this module's globals.
    namespace = {"accumulator": accumulator, "inputs": inputs, "mask_name": mask}
    return flax.struct.dataclass(type(name, (AccumulatorMetric,), namespace))
