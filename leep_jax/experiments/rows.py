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


def _to_json(by_method: Mapping[str, Any]) -> dict[str, Any]:
    return {json_key(m): jsonable(v) for m, v in by_method.items()}  # type: ignore[arg-type]


def _from_json(by_key: Mapping[str, Any], convert=lambda v: v) -> dict[str, Any]:
    return {_CODE_NAMES.get(k, k): convert(v) for k, v in by_key.items()}


@dataclasses.dataclass(frozen=True)
class TaskRow:
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
      scores: ``{"leep", "nce", "h_score"}`` on the training set (None: undefined).
      accuracy: final test accuracy per method (`leep_jax.transfer.METHODS`).
      curves: test accuracy after each epoch of ``fine_tune`` and
        ``train_from_scratch``.
      steps: optimisation steps per method.
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
    timings: Mapping[str, float]
    session: int

    def to_json(self) -> dict[str, Any]:
        """The row as stored in results.json (keys in the file's order)."""
        return {
            "id": self.id,
            "pair": self.pair,
            "regime": self.regime,
            "task_index": self.task_index,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "class_counts": list(self.class_counts),
            "num_noisy_labels": self.num_noisy_labels,
            "scores": jsonable(dict(self.scores)),
            "accuracy": _to_json(self.accuracy),
            "curves": _to_json(self.curves),
            "steps": _to_json(self.steps),
            "timings": jsonable(dict(self.timings)),
            "session": self.session,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> TaskRow:
        """A row of results.json (as `to_json` writes it)."""
        return cls(
            id=row["id"],
            pair=row["pair"],
            regime=row["regime"],
            task_index=row["task_index"],
            classes=tuple(row["classes"]),
            num_classes=row["num_classes"],
            n_train=row["n_train"],
            n_test=row["n_test"],
            class_counts=tuple(row["class_counts"]),
            num_noisy_labels=row["num_noisy_labels"],
            scores=dict(row["scores"]),
            accuracy=_from_json(row["accuracy"]),
            curves=_from_json(row["curves"], tuple),
            steps=_from_json(row["steps"]),
            timings=dict(row["timings"]),
            session=row["session"],
        )


@dataclasses.dataclass(frozen=True)
class Rq4Row:
    """One RQ4 run: a zoo model scored on, and transferred to, one target task.

    Attributes:
      id: ``rq4|TARGET|NNN|MODEL`` (`leep_jax.experiments.pools.rq4_row_id`).
      target: the target pool.
      task_index: the task's index within the target's RQ4 tasks.
      model: the zoo model's name.
      classes: the target pool's class ids of the task.
      num_classes: Y.
      n_train: training examples.
      scores: ``{"leep", "nce", "h_score"}`` on the training set (None: undefined).
      accuracy: final test accuracy of ``retrain_head`` and ``fine_tune``.
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
    scores: Mapping[str, float | None]
    accuracy: Mapping[Method, float]
    timings: Mapping[str, float]
    session: int

    def to_json(self) -> dict[str, Any]:
        """The row as stored in results.json (keys in the file's order)."""
        return {
            "id": self.id,
            "target": self.target,
            "task_index": self.task_index,
            "model": self.model,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "n_train": self.n_train,
            "scores": jsonable(dict(self.scores)),
            "accuracy": _to_json(self.accuracy),
            "timings": jsonable(dict(self.timings)),
            "session": self.session,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Rq4Row:
        """A row of results.json (as `to_json` writes it)."""
        return cls(
            id=row["id"],
            target=row["target"],
            task_index=row["task_index"],
            model=row["model"],
            classes=tuple(row["classes"]),
            num_classes=row["num_classes"],
            n_train=row["n_train"],
            scores=dict(row["scores"]),
            accuracy=_from_json(row["accuracy"]),
            timings=dict(row["timings"]),
            session=row["session"],
        )
