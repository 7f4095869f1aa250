"""The experiment's typed rows, and the one place that turns them into JSON and back.

A `TaskRow` is one RQ1-RQ3 target task (scores, the accuracy of the three transfer
methods, per-epoch curves); an `Rq4Row` is one (RQ4 target task, zoo model) run.
In code, methods are named as in `leep_jax.transfer.METHODS`; in ``results.json``
training from scratch is stored under ``"scratch"`` (the file's layout predates the
code's names and is kept, so old results load and resume).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from leep_jax.transfer.methods import Method

__all__ = ["Rq4Row", "TaskRow", "json_key", "jsonable"]

# Code name -> results.json key, where they differ.
_JSON_KEYS: dict[str, str] = {"train_from_scratch": "scratch"}
_CODE_NAMES = {json: code for code, json in _JSON_KEYS.items()}


def json_key(method: Method) -> str:
    """The key of ``method`` in results.json (``"scratch"`` for ``"train_from_scratch"``)."""
    return _JSON_KEYS.get(method, method)


def jsonable(value: Any) -> Any:
    """Plain JSON values; NaN and infinities (undefined statistics) become None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # NumPy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _JsonRow:
    """`to_json` / `from_json` for a row dataclass whose fields are in the file's order.

    Fields named in ``_BY_METHOD`` map method names to values (renamed on the way in
    and out); tuples are JSON lists.
    """

    _BY_METHOD = frozenset({"accuracy", "curves", "steps", "at_chance"})

    def to_json(self) -> dict[str, Any]:
        """The row as stored in results.json (keys in the file's order)."""
        record = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.name in self._BY_METHOD:
                value = {json_key(m): v for m, v in value.items()}
            record[field.name] = jsonable(value)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]):
        """A row of results.json (as `to_json` writes it)."""
        values = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = record[field.name]
            if field.name in cls._BY_METHOD:
                value = {
                    _CODE_NAMES.get(k, k): tuple(v) if isinstance(v, list) else v
                    for k, v in value.items()
                }
            elif isinstance(value, list):
                value = tuple(value)
            elif isinstance(value, dict):
                value = dict(value)
            values[field.name] = value
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class TaskRow(_JsonRow):
    """One RQ1-RQ3 target task and what each method reached on it.

    Attributes:
      id: ``PAIR|REGIME|NNN`` (`leep_jax.experiments.pools.task_id`).
      pair: the ``SOURCE->TARGET`` pair.
      regime: one of `leep_jax.experiments.config.REGIMES`.
      task_index: the task's index within its pair and regime.
      classes: the target pool's class ids of the task.
      num_classes: Y.
      n_train: training examples.
      n_test: test examples.
      class_counts: training examples per class, ``[Y]``.
      num_noisy_labels: training labels flipped (``small_noisy``).
      scores: every score of `leep_jax.scores.SCORE_NAMES` on the training set
        (None: undefined).
      accuracy: final test accuracy per method (`leep_jax.transfer.METHODS`).
      curves: test accuracy after each epoch of ``fine_tune`` and
        ``train_from_scratch``.
      steps: optimisation steps per method.
      at_chance: per method, whether its test accuracy is no better than predicting
        the test set's most frequent class (`leep_jax.experiments.measure.at_chance`).
      timings: seconds: ``scores_s``, ``retrain_head_s``, ``fine_tune_s``,
        ``scratch_s``, ``compile_s``.
      session: the run session (index into ``results.sessions``) that computed it.
    """

    id: str
    pair: str
    regime: str
    task_index: int
    classes: tuple[int, ...]
    num_classes: int
    n_train: int
    n_test: int
    class_counts: tuple[int, ...]
    num_noisy_labels: int
    scores: Mapping[str, float | None]
    accuracy: Mapping[Method, float]
    curves: Mapping[Method, tuple[float, ...]]
    steps: Mapping[Method, int]
    at_chance: Mapping[Method, bool]
    timings: Mapping[str, float]
    session: int


@dataclasses.dataclass(frozen=True)
class Rq4Row(_JsonRow):
    """One RQ4 run: a zoo model scored on, and transferred to, one target task.

    Attributes:
      id: ``rq4|TARGET|NNN|MODEL`` (`leep_jax.experiments.pools.rq4_row_id`).
      target: the target pool.
      task_index: the task's index within the target's RQ4 tasks.
      model: the zoo model's name.
      classes: the target pool's class ids of the task.
      num_classes: Y.
      n_train: training examples.
      n_test: test examples.
      scores: every score of `leep_jax.scores.SCORE_NAMES` on the training set
        (None: undefined).
      knn_accuracy: test accuracy of k-nearest-neighbour classification on the
        model's target features (a baseline score).
      accuracy: final test accuracy of ``retrain_head`` and ``fine_tune``.
      at_chance: per method, whether its test accuracy is at chance (as in `TaskRow`).
      timings: seconds: ``scores_s``, ``retrain_head_s``, ``fine_tune_s``.
      session: the run session that computed it.
    """

    id: str
    target: str
    task_index: int
    model: str
    classes: tuple[int, ...]
    num_classes: int
    n_train: int
    n_test: int
    scores: Mapping[str, float | None]
    knn_accuracy: float
    accuracy: Mapping[Method, float]
    at_chance: Mapping[Method, bool]
    timings: Mapping[str, float]
    session: int
