"""Statistics of the experiment's rows: correlations, convergence, rank agreement.

* `summarize`: Pearson r (`scipy.stats.pearsonr`, with its two-sided p-value) of each
  score (LEEP, NCE, H-score) with each transfer accuracy, per pair and regime (RQ1,
  RQ3).
* `convergence`: the same after each fine-tuning epoch, and with the gain of
  fine-tuning over training from scratch at equal steps (RQ2).
* `selection`: per RQ4 target task, Kendall's tau and weighted tau
  (`scipy.stats.weightedtau` with its defaults) between each score and the accuracy of
  the zoo's models, and whether the score's top model is the best one.
* `within_class_count`: Pearson r within tasks of one class count, averaged.

Their results are JSON-ready dicts (stored in results.json as they are). Undefined
statistics (fewer than 2 tasks, constant inputs) are None, never NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats

from leep_jax.experiments.rows import Rq4Row, TaskRow, json_key
from leep_jax.scores.names import DEFAULT_SCORES
from leep_jax.transfer.methods import Method

__all__ = [
    "CORRELATED_METHODS",
    "EXPERIMENT_SCORES",
    "SELECTION_METHODS",
    "convergence",
    "correlation",
    "finite_or_none",
    "rank_agreement",
    "rows_by",
    "score_of",
    "selection",
    "summarize",
    "within_class_count",
]

# The scores of the paper's protocol (v1): the three the paper compares.
EXPERIMENT_SCORES = DEFAULT_SCORES
CORRELATED_METHODS: tuple[Method, ...] = ("retrain_head", "fine_tune")
SELECTION_METHODS: tuple[Method, ...] = ("fine_tune", "retrain_head")
SCRATCH: Method = "train_from_scratch"


def finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson r of ``x`` and ``y`` with its two-sided p-value (`scipy.stats.pearsonr`).

    Returns:
      ``{"pearson_r", "p_value", "n_tasks"}``; r and p are None when undefined (fewer
      than 2 points or a constant input).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 2:
        return {"pearson_r": None, "p_value": None, "n_tasks": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        result = scipy.stats.pearsonr(x, y)
    return {
        "pearson_r": finite_or_none(result.statistic),
        "p_value": finite_or_none(result.pvalue),
        "n_tasks": n,
    }


def rows_by(tasks: Sequence[TaskRow], pair: str, regime: str) -> list[TaskRow]:
    """The rows of one pair and regime, in task order."""
    rows = [t for t in tasks if t.pair == pair and t.regime == regime]
    return sorted(rows, key=lambda t: t.task_index)


def score_of(row: TaskRow | Rq4Row, metric: str) -> float:
    """The row's score (NaN where it is undefined)."""
    value = row.scores.get(metric)
    return math.nan if value is None else float(value)


def summarize(
    tasks: Sequence[TaskRow], pairs: Sequence[str], regimes: Sequence[str]
) -> dict[str, Any]:
    """``summary[pair][regime][metric][method] = {"pearson_r", "p_value", "n_tasks"}``.

    Args:
      tasks: task rows (``pair``, ``regime``, ``scores``, ``accuracy``).
      pairs: the pairs to report (in order).
      regimes: the regimes to report (in order).
    """
    summary: dict[str, Any] = {}
    for pair in pairs:
        summary[pair] = {}
        for regime in regimes:
            rows = rows_by(tasks, pair, regime)
            summary[pair][regime] = {
                metric: {
                    method: correlation(
                        [score_of(r, metric) for r in rows],
                        [r.accuracy[method] for r in rows],
                    )
                    for method in CORRELATED_METHODS
                }
                for metric in EXPERIMENT_SCORES
            }
    return summary


def convergence(
    tasks: Sequence[TaskRow], pairs: Sequence[str], regimes: Sequence[str]
) -> dict[str, Any]:
    """RQ2: correlations after each fine-tuning epoch.

    Returns:
      ``rq2[pair][regime]`` with ``epochs`` (E), ``steps_per_epoch_mean``,
      ``fine_tune[metric]`` (E correlations of the score with the fine-tuned test
      accuracy after epochs 1..E), ``gain[metric]`` (E correlations with fine-tuned
      minus from-scratch accuracy after the same number of steps) and ``mean_curves``
      (mean accuracy per epoch of both methods).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        out[pair] = {}
        for regime in regimes:
            rows = rows_by(tasks, pair, regime)
            if not rows:
                out[pair][regime] = {"epochs": 0, "fine_tune": {}, "gain": {}, "mean_curves": {}}
                continue
            epochs = min(len(r.curves["fine_tune"]) for r in rows)
            tuned = np.asarray([r.curves["fine_tune"][:epochs] for r in rows], np.float64)
            scratch = np.asarray([r.curves[SCRATCH][:epochs] for r in rows], np.float64)
            entry: dict[str, Any] = {
                "epochs": epochs,
                "steps_per_epoch_mean": float(
                    np.mean(
                        [r.steps["fine_tune"] / max(len(r.curves["fine_tune"]), 1) for r in rows]
                    )
                ),
                "fine_tune": {},
                "gain": {},
                "mean_curves": {
                    "fine_tune": tuned.mean(axis=0).tolist(),
                    json_key(SCRATCH): scratch.mean(axis=0).tolist(),
                },
            }
            for metric in EXPERIMENT_SCORES:
                scores = [score_of(r, metric) for r in rows]
                entry["fine_tune"][metric] = [
                    {"epoch": e + 1, **correlation(scores, tuned[:, e])} for e in range(epochs)
                ]
                entry["gain"][metric] = [
                    {"epoch": e + 1, **correlation(scores, tuned[:, e] - scratch[:, e])}
                    for e in range(epochs)
                ]
            out[pair][regime] = entry
    return out


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


def _rank_agreement(scores: np.ndarray, accuracy: np.ndarray) -> dict[str, Any]:
    kendall_tau, kendall_p, weighted_tau = rank_agreement(scores, accuracy)
    best = int(np.argmax(scores))
    return {
        "kendall_tau": kendall_tau,
        "kendall_p": kendall_p,
        "weighted_tau": weighted_tau,
        "picked": best,
        "top1": bool(accuracy[best] >= accuracy.max()),
        "regret": float(accuracy.max() - accuracy[best]),
    }


def mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def selection(rows: Sequence[Rq4Row]) -> dict[str, Any]:
    """RQ4: how well each score ranks the zoo's models, per target task and overall.

    Only tasks for which every model of the zoo has a row are used (a partial run
    leaves the last task incomplete).

    Returns:
      ``{"models": [...], "per_task": [...], "targets": {target: agg}, "all": agg}``
      where ``agg[metric][method]`` holds the means over tasks of Kendall's tau and
      weighted tau, ``top1_rate`` (share of tasks where the score's top model reaches
      the best accuracy), ``mean_regret`` (best accuracy minus the picked model's) and
      ``n_tasks``.
    """
    models = sorted({r.model for r in rows})
    tasks: dict[tuple[str, int], dict[str, Rq4Row]] = {}
    for r in rows:
        tasks.setdefault((r.target, r.task_index), {})[r.model] = r
    per_task = []
    for (target, index), by_model in sorted(tasks.items()):
        if len(by_model) < len(models) or len(models) < 2:
            continue
        entry: dict[str, Any] = {"target": target, "task_index": index, "models": models}
        for metric in EXPERIMENT_SCORES:
            scores = np.asarray([score_of(by_model[m], metric) for m in models])
            entry[metric] = {
                method: _rank_agreement(
                    scores, np.asarray([by_model[m].accuracy[method] for m in models])
                )
                for method in SELECTION_METHODS
            }
            for method in SELECTION_METHODS:
                entry[metric][method]["picked"] = models[entry[metric][method]["picked"]]
        per_task.append(entry)

    def aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            metric: {
                method: {
                    "kendall_tau_mean": mean_or_none(
                        [e[metric][method]["kendall_tau"] for e in entries]
                    ),
                    "weighted_tau_mean": mean_or_none(
                        [e[metric][method]["weighted_tau"] for e in entries]
                    ),
                    "top1_rate": mean_or_none([float(e[metric][method]["top1"]) for e in entries]),
                    "mean_regret": mean_or_none([e[metric][method]["regret"] for e in entries]),
                    "n_tasks": len(entries),
                }
                for method in SELECTION_METHODS
            }
            for metric in EXPERIMENT_SCORES
        }

    targets = sorted({e["target"] for e in per_task})
    return {
        "models": models,
        "per_task": per_task,
        "targets": {t: aggregate([e for e in per_task if e["target"] == t]) for t in targets},
        "all": aggregate(per_task),
    }


def within_class_count(
    tasks: Sequence[TaskRow], pairs: Sequence[str], regimes: Sequence[str]
) -> dict[str, Any]:
    """Pearson r within groups of tasks with the same class count, averaged.

    The class count moves every score and every accuracy (H-score grows with it,
    accuracy falls), so a pooled correlation mixes "more classes" with "better
    features". Within one class count only the latter is left.

    Returns:
      ``out[pair][regime][metric][outcome] = {"mean_r", "groups", "n_tasks"}`` over the
      class counts with at least 3 tasks and a defined r (``mean_r`` None if none), for
      the outcomes ``"retrain_head"`` and ``"fine_tune"`` (accuracies) and ``"gain"``
      (fine-tuned minus from-scratch accuracy, RQ2), when the rows have them.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        out[pair] = {}
        for regime in regimes:
            rows = rows_by(tasks, pair, regime)
            groups: dict[int, list[TaskRow]] = {}
            for r in rows:
                groups.setdefault(r.num_classes, []).append(r)
            outcomes = {m: lambda r, m=m: r.accuracy[m] for m in CORRELATED_METHODS}
            if all(SCRATCH in r.accuracy for r in rows):
                outcomes["gain"] = lambda r: r.accuracy["fine_tune"] - r.accuracy[SCRATCH]
            entry: dict[str, Any] = {}
            for metric in EXPERIMENT_SCORES:
                entry[metric] = {}
                for outcome, value in outcomes.items():
                    stats = [
                        correlation([score_of(r, metric) for r in group], [value(r) for r in group])
                        for group in groups.values()
                        if len(group) >= 3
                    ]
                    stats = [s for s in stats if s["pearson_r"] is not None]
                    entry[metric][outcome] = {
                        "mean_r": mean_or_none([s["pearson_r"] for s in stats]),
                        "groups": len(stats),
                        "n_tasks": sum(s["n_tasks"] for s in stats),
                    }
            out[pair][regime] = entry
    return out
