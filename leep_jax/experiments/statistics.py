"""Statistics of the experiment's rows: correlations (RQ1, RQ3) and convergence (RQ2).

* `summarize` (RQ1, RQ3): per pair, regime, score and ground truth (the accuracy of
  head re-training or of fine-tuning), Pearson r with its p-value, the partial r after
  regressing both on log(number of classes) (`partial_correlation`), and the
  within-class-count correlation pooled over class counts (`pooled_within`); every
  score of `leep_jax.scores.SCORE_NAMES` plus the baseline ``class_count``
  (= -log Y), so each table shows what the class count alone achieves.
* `convergence` (RQ2): the same after each fine-tuning epoch, and with the gain of
  fine-tuning over training from scratch at equal steps.

RQ4 (source selection over a model zoo) is in `leep_jax.experiments.selection`.

Statistics are over DISTINCT tasks (`distinct_tasks`): rows of one pair and regime
that are the same task (the same class set in ``large_balanced``, where a task is all
pool examples of its classes) are averaged first, and the summary says how many rows
were merged. Results are small dataclasses with ``to_json``; undefined statistics
(too few tasks, constant inputs) are None, never NaN.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

from leep_jax.experiments.rows import Rq4Row, TaskRow, jsonable
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.transfer.methods import METHODS, Method

__all__ = [
    "CLASS_COUNT",
    "CORRELATED_METHODS",
    "CORRELATED_SCORES",
    "PAPER_SCORES",
    "Correlation",
    "Pooled",
    "Record",
    "RegimeSummary",
    "TaskPoint",
    "convergence",
    "correlation",
    "distinct_tasks",
    "finite_or_none",
    "partial_correlation",
    "pooled_within",
    "regime_summary",
    "rows_by",
    "score_of",
    "summarize",
]

# The three scores the paper compares (its headline tables and RQ2).
PAPER_SCORES = ("leep", "nce", "h_score")
# A baseline score: -log(number of classes), what the class count alone predicts.
CLASS_COUNT = "class_count"
CORRELATED_SCORES = (*SCORE_NAMES, CLASS_COUNT)
# Ground truths, in table order.
CORRELATED_METHODS: tuple[Method, ...] = ("retrain_head", "fine_tune")
SCRATCH: Method = "train_from_scratch"
GAIN = "gain"  # fine-tuned minus from-scratch accuracy (RQ2's outcome)
# The regime in which a task is all pool examples of its classes (`pools.pair_tasks`):
# two tasks with one class set are the same task there.
WHOLE_CLASS_REGIME = "large_balanced"
# Below this relative size, a residual is rounding noise: the variable is explained.
_RESIDUAL_TOLERANCE = 1e-9


def finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Record:
    """``to_json`` for the statistics' dataclasses (NaN becomes None)."""

    def to_json(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]


# ------------------------------------------------------------------ correlations


@dataclasses.dataclass(frozen=True)
class Correlation(Record):
    """One score against one accuracy over distinct tasks.

    Attributes:
      n_tasks: tasks with both values defined.
      pearson_r: Pearson r (`scipy.stats.pearsonr`).
      p_value: its two-sided p-value.
      partial_r: r of the residuals of both after a least-squares fit on
        ``[1, log(num_classes)]`` (`partial_correlation`).
      partial_p: its two-sided p-value, t distribution with ``n_tasks - 3`` degrees
        of freedom.
    """

    n_tasks: int
    pearson_r: float | None
    p_value: float | None
    partial_r: float | None
    partial_p: float | None


@dataclasses.dataclass(frozen=True)
class Pooled(Record):
    """The within-class-count correlation, pooled (`pooled_within`).

    Attributes:
      r: Pearson r of all points after centring score and accuracy within each class
        count.
      p_value: two-sided, t distribution with ``n_tasks - groups - 1`` degrees of freedom.
      n_tasks: tasks in the groups used.
      groups: class counts with at least 2 distinct tasks.
    """

    r: float | None
    p_value: float | None
    n_tasks: int
    groups: int


def _finite(*columns: Sequence[float]) -> list[np.ndarray]:
    arrays = [np.asarray(c, np.float64) for c in columns]
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return [a[keep] for a in arrays]


def _explained(residual: np.ndarray, values: np.ndarray) -> bool:
    return float(np.linalg.norm(residual)) <= _RESIDUAL_TOLERANCE * float(
        np.linalg.norm(values) + np.finfo(np.float64).tiny
    )


def _r_and_p(rx: np.ndarray, ry: np.ndarray, df: int) -> tuple[float | None, float | None]:
    """r of two residual vectors (already free of their means) and its t-test p-value."""
    if df < 1:
        return None, None
    r = float(np.dot(rx, ry) / (np.linalg.norm(rx) * np.linalg.norm(ry)))
    r = min(1.0, max(-1.0, r))
    if abs(r) == 1.0:
        return r, 0.0
    t = r * math.sqrt(df / (1.0 - r * r))
    return r, float(2.0 * scipy.stats.t.sf(abs(t), df))


def partial_correlation(
    x: Sequence[float], y: Sequence[float], covariate: Sequence[float]
) -> tuple[float | None, float | None, int]:
    """Partial Pearson r of ``x`` and ``y`` given ``covariate``, its p-value and n.

    Both are regressed (least squares, with an intercept) on the covariate; r is the
    correlation of the residuals, tested with a t distribution with n - 3 degrees of
    freedom (n - 2 when the covariate is constant: then it is Pearson r and its
    test). Points with a non-finite value are dropped. r is None with fewer than 4
    points or when the covariate explains ``x`` or ``y`` entirely (the baseline
    ``class_count`` against ``log(num_classes)``).

    Returns:
      ``(partial_r, partial_p, n)``.
    """
    x, y, z = _finite(x, y, covariate)
    n = int(x.size)
    if n < 4:
        return None, None, n
    design = np.stack([np.ones(n), z], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.stack([x, y], axis=1), rcond=None)
    residual = np.stack([x, y], axis=1) - design @ coef
    if _explained(residual[:, 0], x) or _explained(residual[:, 1], y):
        return None, None, n
    # A constant covariate takes out only the mean: Pearson r and its test again.
    r, p = _r_and_p(residual[:, 0], residual[:, 1], n - 3 + (np.ptp(z) == 0))
    return r, p, n


def correlation(
    x: Sequence[float], y: Sequence[float], num_classes: Sequence[int] | None = None
) -> Correlation:
    """Pearson r of ``x`` and ``y`` and, given class counts, the partial r on their log.

    Points with a non-finite value are dropped. r is None with fewer than 2 points or a
    constant input.
    """
    if num_classes is None:
        num_classes = np.ones(len(x))
    x, y, k = _finite(x, y, num_classes)
    n = int(x.size)
    r = p = None
    if n >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
            result = scipy.stats.pearsonr(x, y)
        r, p = finite_or_none(result.statistic), finite_or_none(result.pvalue)
    partial_r, partial_p, _ = partial_correlation(x, y, np.log(k))
    return Correlation(n, r, p, partial_r, partial_p)


def pooled_within(x: Sequence[float], y: Sequence[float], groups: Sequence[int]) -> Pooled:
    """Correlation within groups, pooled: centre ``x`` and ``y`` in each group, one r.

    Groups with fewer than 2 points (after dropping non-finite ones) carry no
    within-group information and are skipped. Pooling weighs each group by its
    spread, unlike an unweighted mean of per-group r, and gives one test: the
    centred r is the partial correlation given the group indicators, so its t-test
    has n - groups - 1 degrees of freedom.

    Examples:
      Centred, x is (-0.5, 0.5, -1, 1) and y (-0.5, 0.5, 0.5, -0.5): r = -0.5 /
      sqrt(2.5 * 1) = -1 / sqrt(10); the 4-class task is alone and skipped.

      >>> stats = pooled_within([0, 1, 5, 7, 3], [0, 1, 9, 8, 2], [2, 2, 3, 3, 4])
      >>> round(stats.r, 4), stats.n_tasks, stats.groups
      (-0.3162, 4, 2)
    """
    x, y, g = _finite(x, y, groups)
    kept = [v for v in np.unique(g) if np.count_nonzero(g == v) >= 2]
    if not kept:
        return Pooled(None, None, 0, 0)
    rx, ry = [], []
    for v in kept:
        member = g == v
        rx.append(x[member] - x[member].mean())
        ry.append(y[member] - y[member].mean())
    rx, ry = np.concatenate(rx), np.concatenate(ry)
    n, groups_used = int(rx.size), len(kept)
    if _explained(rx, x[np.isin(g, kept)]) or _explained(ry, y[np.isin(g, kept)]):
        return Pooled(None, None, n, groups_used)
    r, p = _r_and_p(rx, ry, n - groups_used - 1)
    return Pooled(r, p, n, groups_used)


# ---------------------------------------------------------------- distinct tasks


class TaskPoint(NamedTuple):
    """One distinct task of a pair and regime: its rows' values, averaged.

    Attributes:
      num_classes: Y.
      scores: every score of `CORRELATED_SCORES` (NaN where undefined in every row).
      accuracy: final test accuracy per method.
      curves: per-epoch test accuracy of ``fine_tune`` and ``train_from_scratch``
        (truncated to the shortest row's length).
      rows: the rows averaged into it.
    """

    num_classes: int
    scores: dict[str, float]
    accuracy: dict[str, float]
    curves: dict[str, np.ndarray]
    rows: int


def rows_by(tasks: Sequence[TaskRow], pair: str, regime: str) -> list[TaskRow]:
    """The rows of one pair and regime, in task order."""
    rows = [t for t in tasks if t.pair == pair and t.regime == regime]
    return sorted(rows, key=lambda t: t.task_index)


def score_of(row: TaskRow | Rq4Row, metric: str) -> float:
    """The row's score (NaN where it is undefined); ``class_count`` is -log Y."""
    if metric == CLASS_COUNT:
        return -math.log(row.num_classes)
    value = row.scores.get(metric)
    return math.nan if value is None else float(value)


def _task_key(row: TaskRow) -> Any:
    return tuple(sorted(row.classes)) if row.regime == WHOLE_CLASS_REGIME else row.id


def _mean(values: Sequence[float]) -> float:
    # In float64 whatever the values' type (a run's rows may hold NumPy float32 values,
    # its results.json holds their exact float64 widening): the same statistics.
    return float(np.mean(np.asarray(values, np.float64)))


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, np.float64)
    return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else math.nan


def distinct_tasks(rows: Sequence[TaskRow]) -> list[TaskPoint]:
    """The distinct tasks among rows of one pair and regime, in order of first row.

    In ``large_balanced`` a task is all pool examples of its class set, so rows with
    the same class set are one task: their scores (which agree) and accuracies (which
    differ only by training seed) are averaged. Elsewhere every row is its own task.
    """
    groups: dict[Any, list[TaskRow]] = {}
    for row in sorted(rows, key=lambda r: r.task_index):
        groups.setdefault(_task_key(row), []).append(row)
    points = []
    for group in groups.values():
        methods = [m for m in METHODS if all(m in r.accuracy for r in group)]
        curves = {}
        for m in ("fine_tune", SCRATCH):
            if all(r.curves.get(m) for r in group):
                length = min(len(r.curves[m]) for r in group)
                curves[m] = np.mean(
                    np.asarray([r.curves[m][:length] for r in group], np.float64), axis=0
                )
        points.append(
            TaskPoint(
                num_classes=group[0].num_classes,
                scores={s: _nanmean([score_of(r, s) for r in group]) for s in CORRELATED_SCORES},
                accuracy={m: _mean([r.accuracy[m] for r in group]) for m in methods},
                curves=curves,
                rows=len(group),
            )
        )
    return points


# ------------------------------------------------------------------ RQ1 and RQ3


@dataclasses.dataclass(frozen=True)
class RegimeSummary(Record):
    """The statistics of one pair and regime.

    Attributes:
      n_rows: rows.
      n_tasks: distinct tasks (rows of one task are averaged, see `distinct_tasks`).
      duplicate_rows: rows merged into another row's task (``n_rows - n_tasks``).
      at_chance: per method (`leep_jax.transfer.METHODS`), rows whose accuracy is at
        chance (they stay in the correlations).
      correlations: ``[score][method]``, `Correlation` for every score of
        `CORRELATED_SCORES` and ground truth of `CORRELATED_METHODS`.
      within_class_count: ``[score][outcome]``, `Pooled` for the outcomes
        ``retrain_head``, ``fine_tune`` and ``gain`` (fine-tuned minus from-scratch
        accuracy, where the rows have both).
    """

    n_rows: int
    n_tasks: int
    duplicate_rows: int
    at_chance: dict[str, int]
    correlations: dict[str, dict[str, Correlation]]
    within_class_count: dict[str, dict[str, Pooled]]


def _outcomes(points: Sequence[TaskPoint]) -> dict[str, np.ndarray]:
    out = {m: np.asarray([p.accuracy.get(m, math.nan) for p in points]) for m in CORRELATED_METHODS}
    if points and all(SCRATCH in p.accuracy and "fine_tune" in p.accuracy for p in points):
        out[GAIN] = np.asarray([p.accuracy["fine_tune"] - p.accuracy[SCRATCH] for p in points])
    return out


def regime_summary(rows: Sequence[TaskRow]) -> RegimeSummary:
    """`RegimeSummary` of the rows of one pair and regime."""
    points = distinct_tasks(rows)
    classes = [p.num_classes for p in points]
    outcomes = _outcomes(points)
    correlations, within = {}, {}
    for score in CORRELATED_SCORES:
        x = [p.scores[score] for p in points]
        correlations[score] = {m: correlation(x, outcomes[m], classes) for m in CORRELATED_METHODS}
        within[score] = {o: pooled_within(x, y, classes) for o, y in outcomes.items()}
    return RegimeSummary(
        n_rows=len(rows),
        n_tasks=len(points),
        duplicate_rows=len(rows) - len(points),
        at_chance={m: sum(bool(r.at_chance.get(m)) for r in rows) for m in METHODS},
        correlations=correlations,
        within_class_count=within,
    )


def summarize(
    tasks: Sequence[TaskRow], pairs: Sequence[str], regimes: Sequence[str]
) -> dict[str, dict[str, RegimeSummary]]:
    """``summary[pair][regime]``: `RegimeSummary` of every pair and regime (RQ1, RQ3)."""
    return {
        pair: {regime: regime_summary(rows_by(tasks, pair, regime)) for regime in regimes}
        for pair in pairs
    }


# ------------------------------------------------------------------------- RQ2


def convergence(
    tasks: Sequence[TaskRow], pairs: Sequence[str], regimes: Sequence[str]
) -> dict[str, Any]:
    """RQ2: correlations of the paper's scores after each fine-tuning epoch.

    Returns:
      ``rq2[pair][regime]`` with ``epochs`` (E), ``steps_per_epoch_mean``,
      ``fine_tune[score]`` (E `Correlation` of the score with the fine-tuned test
      accuracy after epochs 1..E), ``gain[score]`` (E `Correlation` with fine-tuned
      minus from-scratch accuracy after the same number of steps) and ``mean_curves``
      (mean accuracy per epoch of both methods), over distinct tasks; ``epochs`` is 0
      where there are no rows with both curves.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        out[pair] = {}
        for regime in regimes:
            rows = rows_by(tasks, pair, regime)
            points = [p for p in distinct_tasks(rows) if {"fine_tune", SCRATCH} <= set(p.curves)]
            if not points:
                out[pair][regime] = {"epochs": 0, "fine_tune": {}, "gain": {}, "mean_curves": {}}
                continue
            epochs = min(min(p.curves["fine_tune"].size, p.curves[SCRATCH].size) for p in points)
            tuned = np.asarray([p.curves["fine_tune"][:epochs] for p in points])
            scratch = np.asarray([p.curves[SCRATCH][:epochs] for p in points])
            classes = [p.num_classes for p in points]
            steps = [
                r.steps["fine_tune"] / len(r.curves["fine_tune"])
                for r in rows
                if r.steps.get("fine_tune") and r.curves.get("fine_tune")
            ]
            entry: dict[str, Any] = {
                "epochs": epochs,
                "steps_per_epoch_mean": float(np.mean(steps)) if steps else None,
                "fine_tune": {},
                "gain": {},
                "mean_curves": {
                    "fine_tune": tuned.mean(axis=0).tolist(),
                    "scratch": scratch.mean(axis=0).tolist(),
                },
            }
            for score in PAPER_SCORES:
                x = [p.scores[score] for p in points]
                entry["fine_tune"][score] = [
                    correlation(x, tuned[:, e], classes) for e in range(epochs)
                ]
                entry["gain"][score] = [
                    correlation(x, tuned[:, e] - scratch[:, e], classes) for e in range(epochs)
                ]
            out[pair][regime] = entry
    return out
