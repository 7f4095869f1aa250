"""RQ4's statistics: how well each method selects the zoo's best model for a task.

* `selection`: per target task, weighted Kendall tau (`scipy.stats.weightedtau`,
  defaults, as the LogME and SFDA benchmarks use it) between each method's scores of
  the zoo's models and their accuracy (`rank_agreement`), and whether the method's top
  model is the best (`TaskSelection`); means over tasks with bootstrap 95 % intervals
  (`bootstrap_mean`, `MethodSelection`), and LEEP paired against every other method
  (Wilcoxon signed-rank and a bootstrap interval of the mean difference, `PairedTest`).
* The methods (`SELECTION_SCORES`) are every score of `leep_jax.scores.SCORE_NAMES`
  and the baselines of `SELECTION_BASELINES`, against the ground truths of
  `SELECTION_METHODS`.

The correlations of RQ1 to RQ3 are in `leep_jax.experiments.statistics`, whose
helpers this module shares. Results are small dataclasses with ``to_json``; undefined
statistics (too few tasks or models, ties everywhere) are None, never NaN.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

from leep_jax.experiments.rows import Rq4Row
from leep_jax.experiments.statistics import Record, finite_or_none, score_of
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.transfer.methods import Method

__all__ = [
    "SELECTION_BASELINES",
    "SELECTION_METHODS",
    "SELECTION_SCORES",
    "Estimate",
    "MethodSelection",
    "PairedTest",
    "Selection",
    "TaskSelection",
    "bootstrap_mean",
    "rank_agreement",
    "selection",
    "wilcoxon_method",
]

# Ground truths, in table order.
SELECTION_METHODS: tuple[Method, ...] = ("fine_tune", "retrain_head")
# Baselines: per model from `Results.zoo` (source test accuracy, parameter count) and
# per row (k-NN accuracy on the target features).
SELECTION_BASELINES = ("source_test_accuracy", "num_params", "knn_accuracy")
SELECTION_SCORES = (*SCORE_NAMES, *SELECTION_BASELINES)
BOOTSTRAP_RESAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class Estimate(Record):
    """A mean over tasks with its bootstrap interval (`bootstrap_mean`).

    Attributes:
      mean: the mean (None without values).
      low: 2.5th percentile of the bootstrap means.
      high: 97.5th percentile of the bootstrap means.
      n: values averaged.
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int


def bootstrap_mean(
    values: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> Estimate:
    """The mean of ``values`` and its percentile bootstrap interval.

    ``resamples`` resamples of the values with replacement (`numpy.random.default_rng`
    seeded with ``seed``, so equal inputs give equal intervals, and methods measured on
    the same tasks are resampled alike); the interval holds the central ``level`` of
    the resampled means.

    Examples:
      >>> bootstrap_mean([0.5, 0.5, 0.5])
      Estimate(mean=0.5, low=0.5, high=0.5, n=3)
    """
    values = np.asarray(values, np.float64)
    n = int(values.size)
    if n == 0:
        return Estimate(None, None, None, 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    # Rounding can put a constant sample's mean a hair outside its own interval.
    mean = float(values.mean())
    return Estimate(mean, min(float(low), mean), max(float(high), mean), n)


def rank_agreement(
    scores: Sequence[float], accuracy: Sequence[float]
) -> tuple[float | None, float | None, float | None]:
    """Kendall's tau-b, its two-sided p-value and `scipy.stats.weightedtau` (defaults).

    Each is None where undefined (fewer than 2 models, or all tied).
    """
    x, y = np.asarray(scores, np.float64), np.asarray(accuracy, np.float64)
    if x.size < 2:
        return None, None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties everywhere: NaN, reported as None
        kendall = scipy.stats.kendalltau(x, y)
        weighted = scipy.stats.weightedtau(x, y)
    return (
        finite_or_none(kendall.statistic),
        finite_or_none(kendall.pvalue),
        finite_or_none(weighted.statistic),
    )


@dataclasses.dataclass(frozen=True)
class TaskSelection(Record):
    """One method ranking the zoo on one task, against one ground truth.

    Attributes:
      weighted_tau: `scipy.stats.weightedtau` (defaults) of scores and accuracies.
      kendall_tau: Kendall's tau-b.
      picked: the model with the highest score (the first in model order on ties).
      tied: models sharing the highest score (1 without ties). With ties the pick is
        random among them, and the next three are expectations over that choice.
      top1: 1.0 if the picked model reaches the best accuracy, else 0.0.
      relative_accuracy: the picked model's accuracy over the best model's.
      regret: the best accuracy minus the picked model's.
    """

    weighted_tau: float | None
    kendall_tau: float | None
    picked: str
    tied: int
    top1: float
    relative_accuracy: float | None
    regret: float


@dataclasses.dataclass(frozen=True)
class MethodSelection(Record):
    """One method over tasks: means with bootstrap 95 % intervals (`Estimate`).

    Attributes:
      n_tasks: tasks on which the method ranked every model.
      weighted_tau: mean weighted tau.
      top1: share of tasks where the picked model is the best.
      relative_accuracy: mean accuracy of the picked model relative to the best.
      regret: mean accuracy lost by taking the picked model.
    """

    n_tasks: int
    weighted_tau: Estimate
    top1: Estimate
    relative_accuracy: Estimate
    regret: Estimate


@dataclasses.dataclass(frozen=True)
class PairedTest(Record):
    """LEEP against another method over the tasks where both have a weighted tau.

    Attributes:
      n_tasks: the tasks compared.
      difference: mean of LEEP's weighted tau minus the other's, bootstrap 95 % interval.
      wilcoxon_statistic: `scipy.stats.wilcoxon` of the per-task differences
        (two-sided; zero differences dropped; `wilcoxon_method`).
      wilcoxon_p: its p-value (None when every difference is zero).
    """

    n_tasks: int
    difference: Estimate
    wilcoxon_statistic: float | None
    wilcoxon_p: float | None


@dataclasses.dataclass(frozen=True)
class Selection(Record):
    """RQ4 over the zoo (`selection`).

    Attributes:
      models: the zoo's models (sorted), the order of ``accuracy`` and of ties.
      methods: the methods ranking them (`SELECTION_SCORES`).
      per_task: per complete task: ``target``, ``task_index``, ``num_classes``,
        ``accuracy[method][model]`` and ``methods[method][ground truth]``
        (`TaskSelection`, missing where a model's score is undefined).
      targets: ``[target][method][ground truth]``, `MethodSelection` per target pool.
      all: ``[method][ground truth]``, `MethodSelection` over every task.
      leep_vs: ``[ground truth][method]``, `PairedTest` of LEEP against every other.
      n_rows: RQ4 rows (complete tasks or not).
      at_chance: per transfer method, RQ4 rows at chance.
      incomplete_tasks: tasks skipped because some model has no row yet.
    """

    models: list[str]
    methods: list[str]
    per_task: list[dict[str, Any]]
    targets: dict[str, dict[str, dict[str, MethodSelection]]]
    all: dict[str, dict[str, MethodSelection]]
    leep_vs: dict[str, dict[str, PairedTest]]
    n_rows: int
    at_chance: dict[str, int]
    incomplete_tasks: int


def _method_value(row: Rq4Row, method: str, zoo: Mapping[str, Any]) -> float:
    if method == "knn_accuracy":
        return math.nan if row.knn_accuracy is None else float(row.knn_accuracy)
    if method in SELECTION_BASELINES:
        value = (zoo.get(row.model) or {}).get(method)
        return math.nan if value is None else float(value)
    return score_of(row, method)


def _task_selection(
    scores: np.ndarray, accuracy: np.ndarray, models: Sequence[str]
) -> TaskSelection | None:
    if not np.isfinite(scores).all():
        return None
    kendall, _, weighted = rank_agreement(scores, accuracy)
    # Tied top scores (a per-model baseline such as the parameter count can tie): the
    # pick is random among them, so top-1 and accuracy are their expectations.
    top = np.flatnonzero(scores == scores.max())
    best = float(accuracy.max())
    picked = float(accuracy[top].mean())
    return TaskSelection(
        weighted_tau=weighted,
        kendall_tau=kendall,
        picked=models[int(top[0])],
        tied=int(top.size),
        top1=float(np.mean(accuracy[top] >= best)),
        relative_accuracy=picked / best if best > 0 else None,
        regret=best - picked,
    )


def _aggregate(entries: Sequence[TaskSelection | None], seed: int) -> MethodSelection:
    done = [e for e in entries if e is not None]
    taus = [e.weighted_tau for e in done if e.weighted_tau is not None]
    relative = [e.relative_accuracy for e in done if e.relative_accuracy is not None]
    return MethodSelection(
        n_tasks=len(done),
        weighted_tau=bootstrap_mean(taus, seed=seed),
        top1=bootstrap_mean([e.top1 for e in done], seed=seed),
        relative_accuracy=bootstrap_mean(relative, seed=seed),
        regret=bootstrap_mean([e.regret for e in done], seed=seed),
    )


def wilcoxon_method(differences: np.ndarray) -> str:
    """``"exact"`` without zero or tied differences, else ``"asymptotic"``.

    scipy's default turns to a permutation test when there are ties and at most 13
    values (taus of a small zoo tie often): seconds per call on a shared CPU, too slow
    to recompute after every row. The normal approximation (with continuity
    correction) stands in there.
    """
    magnitudes = np.abs(differences[differences != 0])
    tied = np.unique(magnitudes).size < magnitudes.size
    return "asymptotic" if tied or magnitudes.size < differences.size else "exact"


def _paired(leep: Sequence[TaskSelection | None], other: Sequence[TaskSelection | None], seed):
    both = [
        (a.weighted_tau, b.weighted_tau)
        for a, b in zip(leep, other, strict=True)
        if a is not None and b is not None and None not in (a.weighted_tau, b.weighted_tau)
    ]
    differences = np.asarray([a - b for a, b in both], np.float64)
    statistic = p = None
    if np.any(differences != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few tasks: scipy warns about its normal approx.
            test = scipy.stats.wilcoxon(differences, method=wilcoxon_method(differences))
        statistic, p = finite_or_none(test.statistic), finite_or_none(test.pvalue)
    return PairedTest(len(both), bootstrap_mean(differences, seed=seed), statistic, p)


def selection(rows: Sequence[Rq4Row], zoo: Mapping[str, Any] | None = None, *, seed: int = 0):
    """RQ4: how well each method ranks the zoo's models, per target task and overall.

    Only tasks for which every model of the zoo has a row are used (a partial run
    leaves tasks incomplete; they are counted). A method ranks a task only when every
    model has its value (a score may be undefined).

    Args:
      rows: the RQ4 rows.
      zoo: ``Results.zoo``: per model, ``source_test_accuracy`` and ``num_params``
        (the per-model baselines; missing values leave those baselines undefined).
      seed: the bootstrap's seed.

    Returns:
      `Selection`.
    """
    zoo = zoo or {}
    models = sorted({r.model for r in rows})
    tasks: dict[tuple[str, int], dict[str, Rq4Row]] = {}
    for r in rows:
        tasks.setdefault((r.target, r.task_index), {})[r.model] = r
    complete = {
        key: by_model
        for key, by_model in sorted(tasks.items())
        if len(by_model) == len(models) >= 2
    }
    per_task, picks = [], []  # picks[i][method][truth]: TaskSelection or None
    for (target, index), by_model in complete.items():
        ordered = [by_model[m] for m in models]
        accuracy = {
            t: np.asarray([float(r.accuracy[t]) for r in ordered]) for t in SELECTION_METHODS
        }
        chosen = {
            method: {
                truth: _task_selection(
                    np.asarray([_method_value(r, method, zoo) for r in ordered]),
                    accuracy[truth],
                    models,
                )
                for truth in SELECTION_METHODS
            }
            for method in SELECTION_SCORES
        }
        picks.append(chosen)
        per_task.append(
            {
                "target": target,
                "task_index": index,
                "num_classes": ordered[0].num_classes,
                "accuracy": {
                    t: dict(zip(models, a.tolist(), strict=True)) for t, a in accuracy.items()
                },
                "methods": {
                    m: {t: s for t, s in by_truth.items() if s is not None}
                    for m, by_truth in chosen.items()
                },
            }
        )

    def aggregate(indices: Sequence[int]) -> dict[str, dict[str, MethodSelection]]:
        return {
            m: {t: _aggregate([picks[i][m][t] for i in indices], seed) for t in SELECTION_METHODS}
            for m in SELECTION_SCORES
        }

    targets = sorted({e["target"] for e in per_task})
    everything = list(range(len(per_task)))
    return Selection(
        models=models,
        methods=list(SELECTION_SCORES),
        per_task=per_task,
        targets={
            t: aggregate([i for i in everything if per_task[i]["target"] == t]) for t in targets
        },
        all=aggregate(everything),
        leep_vs={
            truth: {
                m: _paired([p["leep"][truth] for p in picks], [p[m][truth] for p in picks], seed)
                for m in SELECTION_SCORES
                if m != "leep"
            }
            for truth in SELECTION_METHODS
        },
        n_rows=len(rows),
        at_chance={m: sum(bool(r.at_chance.get(m)) for r in rows) for m in SELECTION_METHODS},
        incomplete_tasks=len(tasks) - len(complete),
    )
