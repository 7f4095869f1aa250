"""Summary statistics, ``report.md`` and PNG figures of the paper experiments.

Everything here is a function of the rows in ``results.json`` (`leep_jax.experiments.
paper` writes them), so a report can be rebuilt from a results file alone::

    python -m leep_jax.experiments.report OUT      # rewrites OUT/report.md and figures

* `summarize`: Pearson r (`scipy.stats.pearsonr`, with its two-sided p-value) of each
  score (LEEP, NCE, H-score) with each transfer accuracy, per pair and regime (RQ1,
  RQ3).
* `convergence`: the same after each fine-tuning epoch, and with the gain of
  fine-tuning over training from scratch at equal steps (RQ2).
* `selection`: per RQ4 target task, Kendall's tau and weighted tau
  (`scipy.stats.weightedtau` with its defaults) between each score and the accuracy of
  the zoo's models, and whether the score's top model is the best one.

Undefined statistics (fewer than 2 tasks, constant inputs) are None, never NaN.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

METRICS = ("leep", "nce", "h_score")
CORRELATED_METHODS = ("retrain_head", "fine_tune")
SELECTION_METHODS = ("fine_tune", "retrain_head")
METRIC_LABELS = {"leep": "LEEP", "nce": "NCE", "h_score": "H-score"}
METHOD_LABELS = {"retrain_head": "re-train head", "fine_tune": "fine-tune", "scratch": "scratch"}

__all__ = [
    "within_class_count",
    "convergence",
    "correlation",
    "selection",
    "summarize",
    "write_figures",
    "write_report",
]


def _finite(value: Any) -> float | None:
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
    return {"pearson_r": _finite(result.statistic), "p_value": _finite(result.pvalue), "n_tasks": n}


def _rows_by(tasks: Sequence[Mapping[str, Any]], pair: str, regime: str) -> list[Mapping]:
    rows = [t for t in tasks if t["pair"] == pair and t["regime"] == regime]
    return sorted(rows, key=lambda t: t["task_index"])


def _score(row: Mapping[str, Any], metric: str) -> float:
    value = row["scores"].get(metric)
    return math.nan if value is None else float(value)


def summarize(
    tasks: Sequence[Mapping[str, Any]], pairs: Sequence[str], regimes: Sequence[str]
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
            rows = _rows_by(tasks, pair, regime)
            summary[pair][regime] = {
                metric: {
                    method: correlation(
                        [_score(r, metric) for r in rows],
                        [r["accuracy"][method] for r in rows],
                    )
                    for method in CORRELATED_METHODS
                }
                for metric in METRICS
            }
    return summary


def convergence(
    tasks: Sequence[Mapping[str, Any]], pairs: Sequence[str], regimes: Sequence[str]
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
            rows = _rows_by(tasks, pair, regime)
            if not rows:
                out[pair][regime] = {"epochs": 0, "fine_tune": {}, "gain": {}, "mean_curves": {}}
                continue
            epochs = min(len(r["curves"]["fine_tune"]) for r in rows)
            tuned = np.asarray([r["curves"]["fine_tune"][:epochs] for r in rows], np.float64)
            scratch = np.asarray([r["curves"]["scratch"][:epochs] for r in rows], np.float64)
            entry: dict[str, Any] = {
                "epochs": epochs,
                "steps_per_epoch_mean": float(
                    np.mean(
                        [
                            r["steps"]["fine_tune"] / max(len(r["curves"]["fine_tune"]), 1)
                            for r in rows
                        ]
                    )
                ),
                "fine_tune": {},
                "gain": {},
                "mean_curves": {
                    "fine_tune": tuned.mean(axis=0).tolist(),
                    "scratch": scratch.mean(axis=0).tolist(),
                },
            }
            for metric in METRICS:
                scores = [_score(r, metric) for r in rows]
                entry["fine_tune"][metric] = [
                    {"epoch": e + 1, **correlation(scores, tuned[:, e])} for e in range(epochs)
                ]
                entry["gain"][metric] = [
                    {"epoch": e + 1, **correlation(scores, tuned[:, e] - scratch[:, e])}
                    for e in range(epochs)
                ]
            out[pair][regime] = entry
    return out


def _rank_agreement(scores: np.ndarray, accuracy: np.ndarray) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties everywhere: NaN, reported as None
        kendall = scipy.stats.kendalltau(scores, accuracy)
        weighted = scipy.stats.weightedtau(scores, accuracy)
    best = int(np.argmax(scores))
    return {
        "kendall_tau": _finite(kendall.statistic),
        "kendall_p": _finite(kendall.pvalue),
        "weighted_tau": _finite(weighted.statistic),
        "picked": best,
        "top1": bool(accuracy[best] >= accuracy.max()),
        "regret": float(accuracy.max() - accuracy[best]),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def selection(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
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
    models = sorted({r["model"] for r in rows})
    tasks: dict[tuple[str, int], dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        tasks.setdefault((r["target"], r["task_index"]), {})[r["model"]] = r
    per_task = []
    for (target, index), by_model in sorted(tasks.items()):
        if len(by_model) < len(models) or len(models) < 2:
            continue
        entry: dict[str, Any] = {"target": target, "task_index": index, "models": models}
        for metric in METRICS:
            scores = np.asarray([_score(by_model[m], metric) for m in models])
            entry[metric] = {
                method: _rank_agreement(
                    scores, np.asarray([by_model[m]["accuracy"][method] for m in models])
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
                    "kendall_tau_mean": _mean([e[metric][method]["kendall_tau"] for e in entries]),
                    "weighted_tau_mean": _mean(
                        [e[metric][method]["weighted_tau"] for e in entries]
                    ),
                    "top1_rate": _mean([float(e[metric][method]["top1"]) for e in entries]),
                    "mean_regret": _mean([e[metric][method]["regret"] for e in entries]),
                    "n_tasks": len(entries),
                }
                for method in SELECTION_METHODS
            }
            for metric in METRICS
        }

    targets = sorted({e["target"] for e in per_task})
    return {
        "models": models,
        "per_task": per_task,
        "targets": {t: aggregate([e for e in per_task if e["target"] == t]) for t in targets},
        "all": aggregate(per_task),
    }


# -------------------------------------------------------------------------- figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _scatter_figure(plt, rows: list[Mapping[str, Any]], title: str):
    fig, axes = plt.subplots(len(CORRELATED_METHODS), len(METRICS), figsize=(12, 7), squeeze=False)
    for i, method in enumerate(CORRELATED_METHODS):
        for j, metric in enumerate(METRICS):
            ax = axes[i][j]
            x = np.asarray([_score(r, metric) for r in rows])
            y = np.asarray([r["accuracy"][method] for r in rows])
            ax.scatter(x, y, s=14, alpha=0.75)
            stats = correlation(x, y)
            finite = np.isfinite(x)
            if stats["pearson_r"] is not None and finite.sum() >= 2 and np.ptp(x[finite]) > 0:
                slope, intercept = np.polyfit(x[finite], y[finite], 1)
                grid = np.linspace(x[finite].min(), x[finite].max(), 2)
                ax.plot(grid, slope * grid + intercept, color="C3", lw=1)
            r = stats["pearson_r"]
            ax.set_title(f"r = {r:.2f}" if r is not None else "r undefined", fontsize=10)
            ax.set_xlabel(METRIC_LABELS[metric])
            ax.set_ylabel(f"test accuracy ({METHOD_LABELS[method]})")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _curves_figure(plt, rows: list[Mapping[str, Any]], title: str):
    epochs = min(len(r["curves"]["fine_tune"]) for r in rows)
    order = np.argsort([_score(r, "leep") for r in rows], kind="stable")
    groups = [g for g in np.array_split(order, 3) if g.size]
    names = ["low", "middle", "high"] if len(groups) == 3 else [str(i) for i in range(len(groups))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, epochs + 1)
    for color, name, group in zip(("C0", "C1", "C2"), names, groups, strict=False):
        tuned = np.mean([rows[i]["curves"]["fine_tune"][:epochs] for i in group], axis=0)
        scratch = np.mean([rows[i]["curves"]["scratch"][:epochs] for i in group], axis=0)
        leeps = [_score(rows[i], "leep") for i in group]
        label = f"{name} LEEP ({min(leeps):.2f}..{max(leeps):.2f}, {group.size} tasks)"
        ax.plot(x, tuned, "-o", color=color, label=f"fine-tune, {label}")
        ax.plot(x, scratch, "--", color=color, alpha=0.7, label="scratch, same tasks")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean test accuracy")
    ax.set_xticks(x)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _selection_figure(plt, rows: list[Mapping[str, Any]], title: str):
    fig, axes = plt.subplots(1, len(METRICS), figsize=(12, 3.8), squeeze=False)
    indices = sorted({r["task_index"] for r in rows})
    for j, metric in enumerate(METRICS):
        ax = axes[0][j]
        for k, index in enumerate(indices):
            group = [r for r in rows if r["task_index"] == index]
            ax.scatter(
                [_score(r, metric) for r in group],
                [r["accuracy"]["fine_tune"] for r in group],
                s=16,
                color=f"C{k % 10}",
                label=f"task {index}",
            )
        ax.set_xlabel(METRIC_LABELS[metric])
        ax.set_ylabel("fine-tuned test accuracy")
    if len(indices) <= 10:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_figures(results: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG figures (matplotlib, Agg backend) in ``out_dir``.

    * ``scatter_<pair>_<regime>.png``: each score vs each accuracy, one point per task,
      with a least-squares line (like the paper's figures);
    * ``curves_<pair>_<regime>.png``: tasks split into LEEP tertiles; mean fine-tuning
      test-accuracy curve per group (from scratch dashed);
    * ``rq4_<target>.png``: zoo models' scores vs fine-tuned accuracy, colour = task.

    Returns:
      The paths written.
    """
    plt = _pyplot()
    out = Path(out_dir)
    paths = []
    config = results["config"]
    for pair in config["pairs"]:
        for regime in config["tasks_per_regime"]:
            rows = _rows_by(results["tasks"], pair, regime)
            if len(rows) < 2:
                continue
            for kind, make in (("scatter", _scatter_figure), ("curves", _curves_figure)):
                fig = make(plt, rows, f"{pair}, {regime} ({len(rows)} tasks)")
                path = out / f"{kind}_{_slug(pair)}_{regime}.png"
                fig.savefig(path, dpi=90)
                plt.close(fig)
                paths.append(path)
    rq4_rows = results["rq4"]["rows"]
    for target in sorted({r["target"] for r in rq4_rows}):
        rows = [r for r in rq4_rows if r["target"] == target]
        fig = _selection_figure(plt, rows, f"RQ4 source selection, target {target}")
        path = out / f"rq4_{_slug(target)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- report


def _r(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("pearson_r") is None:
        return "n/a"
    text = f"{stats['pearson_r']:+.2f}"
    p = stats.get("p_value")
    return text if p is not None and p < 0.05 else text + "†"


def _num(value: Any, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _best_metrics(by_metric: Mapping[str, Any], method: str) -> set[str]:
    """The metrics with the highest defined Pearson r for one method (ties: all)."""
    values = {m: by_metric[m][method]["pearson_r"] for m in METRICS}
    defined = {m: v for m, v in values.items() if v is not None}
    return {m for m, v in defined.items() if v == max(defined.values())} if defined else set()


def _wins(summary: Mapping[str, Any]) -> tuple[dict[str, int], int]:
    """How often each metric has the highest r over the (pair, regime, method) cells."""
    wins = dict.fromkeys(METRICS, 0)
    cells = 0
    for regimes in summary.values():
        for by_metric in regimes.values():
            for method in CORRELATED_METHODS:
                best = _best_metrics(by_metric, method)
                cells += bool(best)
                for m in best:
                    wins[m] += 1
    return wins, cells


def _correlation_table(results: Mapping[str, Any]) -> list[str]:
    summary = results["summary"]
    header = ["pair", "regime", "tasks"] + [
        f"{METRIC_LABELS[m]} ({'head' if method == 'retrain_head' else 'ft'})"
        for method in CORRELATED_METHODS
        for m in METRICS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pair, regimes in summary.items():
        for regime, by_metric in regimes.items():
            n = by_metric["leep"]["fine_tune"]["n_tasks"]
            row = [f"`{pair}`", regime, str(n)]
            for method in CORRELATED_METHODS:
                best = _best_metrics(by_metric, method)
                for m in METRICS:
                    text = _r(by_metric[m][method])
                    row.append(f"**{text}**" if m in best else text)
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Pearson r between each score (computed on the target training set) and the test "
        "accuracy reached by re-training the head (head) or fine-tuning (ft); the highest "
        "r of each row and method in bold; † marks p >= 0.05 (two-sided, "
        "`scipy.stats.pearsonr`)."
    )
    wins, cells = _wins(summary)
    if cells:
        lines.append("")
        lines.append(
            f"Across the {cells} (pair, regime, method) cells of this run, the highest "
            f"correlation was reached by LEEP in {wins['leep']}, NCE in {wins['nce']} and "
            f"H-score in {wins['h_score']} (ties counted for each)."
        )
    return lines


def _at_a_glance(results: Mapping[str, Any]) -> list[str]:
    """One line per research question, each number taken from the tables below."""
    summary = results["summary"]

    def head_ft(stats: Mapping[str, Any]) -> str:
        return f"{_r(stats['retrain_head'])} / {_r(stats['fine_tune'])}"

    lines = []
    for pair, regimes in summary.items():
        large = regimes.get("large_balanced")
        if large and large["leep"]["fine_tune"]["n_tasks"]:
            lines.append(
                f"- RQ1, `{pair}`, {large['leep']['fine_tune']['n_tasks']} large balanced "
                "tasks: Pearson r with the accuracy of head re-training / fine-tuning: "
                + ", ".join(f"{METRIC_LABELS[m]} {head_ft(large[m])}" for m in METRICS)
                + "."
            )
    for pair, regimes in summary.items():
        small = [
            f"{regime} {head_ft(by_metric['leep'])} ({by_metric['leep']['fine_tune']['n_tasks']})"
            for regime, by_metric in regimes.items()
            if regime != "large_balanced" and by_metric["leep"]["fine_tune"]["n_tasks"]
        ]
        if small:
            lines.append(
                f"- RQ3, `{pair}`: r of LEEP with head / fine-tuned accuracy (tasks): "
                + "; ".join(small)
                + "."
            )
    wins, cells = _wins(summary)
    if cells:
        lines.append(
            f"- Best of the three: LEEP has the highest r in {wins['leep']}, NCE in "
            f"{wins['nce']}, H-score in {wins['h_score']} of {cells} (pair, regime, method) "
            "cells (ties counted for each)."
        )
    for pair, regimes in results["rq2"].items():
        entry = regimes.get("large_balanced", {})
        epochs = entry.get("epochs", 0)
        if epochs:
            tuned, gain = entry["fine_tune"]["leep"], entry["gain"]["leep"]
            lines.append(
                f"- RQ2, `{pair}`, large balanced: r(LEEP, fine-tuned accuracy) "
                f"{_r(tuned[0])} after epoch 1, {_r(tuned[-1])} after epoch {epochs}; "
                f"r(LEEP, fine-tuning's gain over training from scratch) {_r(gain[0])} "
                f"after epoch 1, {_r(gain[-1])} after epoch {epochs}."
            )
    rq4 = results["rq4"]["summary"]
    if rq4 and rq4.get("per_task"):
        agg = rq4["all"]
        ft = {m: agg[m]["fine_tune"] for m in METRICS}
        lines.append(
            f"- RQ4, {ft['leep']['n_tasks']} target tasks x {len(rq4['models'])} source "
            "models: mean weighted tau with fine-tuned accuracy "
            + ", ".join(f"{METRIC_LABELS[m]} {_num(ft[m]['weighted_tau_mean'])}" for m in METRICS)
            + "; the score's top model was the best in "
            + ", ".join(f"{_num(ft[m]['top1_rate'])} ({METRIC_LABELS[m]})" for m in METRICS)
            + " of the tasks."
        )
    if lines:
        lines.append("")
        lines.append("† marks p >= 0.05. Details, and what differs from the paper, below.")
    return lines


def _accuracy_table(results: Mapping[str, Any]) -> list[str]:
    lines = [
        "| pair | regime | tasks | classes | train examples | mean LEEP | re-train head | "
        "fine-tune | scratch |",
        "|" + "---|" * 9,
    ]
    config = results["config"]
    for pair in config["pairs"]:
        for regime in config["tasks_per_regime"]:
            rows = _rows_by(results["tasks"], pair, regime)
            if not rows:
                continue

            def mean(values):
                return float(np.mean(values))

            classes = [r["num_classes"] for r in rows]
            sizes = [r["n_train"] for r in rows]
            lines.append(
                f"| `{pair}` | {regime} | {len(rows)} | {min(classes)}-{max(classes)} | "
                f"{min(sizes)}-{max(sizes)} | {mean([_score(r, 'leep') for r in rows]):.3f} | "
                + " | ".join(
                    f"{mean([r['accuracy'][m] for r in rows]):.3f}"
                    for m in ("retrain_head", "fine_tune", "scratch")
                )
                + " |"
            )
    lines += ["", "Means over the tasks of each row (test accuracy after the last epoch)."]
    return lines


def within_class_count(
    tasks: Sequence[Mapping[str, Any]], pairs: Sequence[str], regimes: Sequence[str]
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
            rows = _rows_by(tasks, pair, regime)
            groups: dict[int, list[Mapping[str, Any]]] = {}
            for r in rows:
                groups.setdefault(r["num_classes"], []).append(r)
            outcomes = {m: lambda r, m=m: r["accuracy"][m] for m in CORRELATED_METHODS}
            if all("scratch" in r["accuracy"] for r in rows):
                outcomes["gain"] = lambda r: r["accuracy"]["fine_tune"] - r["accuracy"]["scratch"]
            entry: dict[str, Any] = {}
            for metric in METRICS:
                entry[metric] = {}
                for outcome, value in outcomes.items():
                    stats = [
                        correlation([_score(r, metric) for r in group], [value(r) for r in group])
                        for group in groups.values()
                        if len(group) >= 3
                    ]
                    stats = [s for s in stats if s["pearson_r"] is not None]
                    entry[metric][outcome] = {
                        "mean_r": _mean([s["pearson_r"] for s in stats]),
                        "groups": len(stats),
                        "n_tasks": sum(s["n_tasks"] for s in stats),
                    }
            out[pair][regime] = entry
    return out


def _within_table(results: Mapping[str, Any]) -> list[str]:
    config = results["config"]
    within = within_class_count(results["tasks"], config["pairs"], config["tasks_per_regime"])
    outcomes = {"retrain_head": "head", "fine_tune": "ft", "gain": "ft − scratch"}
    header = ["pair", "regime", "groups (tasks)"] + [
        f"{METRIC_LABELS[m]} ({label})" for label in outcomes.values() for m in METRICS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pair, regimes in within.items():
        for regime, entry in regimes.items():
            first = entry["leep"]["fine_tune"]
            if not first["groups"]:
                continue
            cells = [
                _num(entry[m][outcome]["mean_r"], "+.2f") if outcome in entry[m] else "n/a"
                for outcome in outcomes
                for m in METRICS
            ]
            lines.append(
                f"| `{pair}` | {regime} | {first['groups']} ({first['n_tasks']}) | "
                + " | ".join(cells)
                + " |"
            )
    if len(lines) == 2:
        return ["Too few tasks per class count for this analysis."]
    return lines


def _convergence_table(results: Mapping[str, Any]) -> list[str]:
    lines = []
    for pair, regimes in results["rq2"].items():
        for regime, entry in regimes.items():
            epochs = entry.get("epochs", 0)
            if not epochs:
                continue
            head = ["", *[f"epoch {e}" for e in range(1, epochs + 1)]]
            lines.append(
                f"**`{pair}`, {regime}** (about {entry['steps_per_epoch_mean']:.1f} steps per "
                "epoch)"
            )
            lines.append("")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for metric in METRICS:
                values = [_r(s) for s in entry["fine_tune"][metric]]
                lines.append(
                    f"| r({METRIC_LABELS[metric]}, fine-tuned acc) | " + " | ".join(values) + " |"
                )
            for metric in METRICS:
                values = [_r(s) for s in entry["gain"][metric]]
                lines.append(
                    f"| r({METRIC_LABELS[metric]}, ft − scratch) | " + " | ".join(values) + " |"
                )
            tuned = " / ".join(f"{v:.3f}" for v in entry["mean_curves"]["fine_tune"])
            scratch = " / ".join(f"{v:.3f}" for v in entry["mean_curves"]["scratch"])
            lines.append(f"| mean acc, fine-tune | {tuned.replace(' / ', ' | ')} |")
            lines.append(f"| mean acc, scratch | {scratch.replace(' / ', ' | ')} |")
            lines.append("")
    return lines


def _selection_section(results: Mapping[str, Any]) -> list[str]:
    rq4 = results["rq4"]["summary"]
    if not rq4 or not rq4.get("per_task"):
        return ["No RQ4 results (no zoo configured, or not reached yet)."]
    lines = [
        "Zoo:",
        "",
        "| model | architecture | source classes | train examples | epochs | source test acc |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in results.get("zoo", {}).items():
        spec = info["spec"]
        lines.append(
            f"| {name} | {spec['architecture']} {spec['model_kwargs'] or ''} | "
            f"{','.join(map(str, spec['classes']))} | {info.get('source_train_examples', 'n/a')}"
            f" | {spec['epochs']} | {_num(info.get('source_test_accuracy'), '.3f')} |"
        )
    lines += [
        "",
        "| target | score | Kendall tau (ft) | weighted tau (ft) | top-1 (ft) | "
        "regret (ft) | Kendall tau (head) | weighted tau (head) | top-1 (head) | tasks |",
        "|" + "---|" * 10,
    ]
    groups = dict(rq4["targets"])
    groups["all"] = rq4["all"]
    for target, agg in groups.items():
        for metric in METRICS:
            ft, head = agg[metric]["fine_tune"], agg[metric]["retrain_head"]
            lines.append(
                f"| `{target}` | {METRIC_LABELS[metric]} | {_num(ft['kendall_tau_mean'])} | "
                f"{_num(ft['weighted_tau_mean'])} | {_num(ft['top1_rate'])} | "
                f"{_num(ft['mean_regret'], '.3f')} | {_num(head['kendall_tau_mean'])} | "
                f"{_num(head['weighted_tau_mean'])} | {_num(head['top1_rate'])} | "
                f"{ft['n_tasks']} |"
            )
    lines += [
        "",
        "Per target task, the zoo's models are ordered by each score and by the accuracy "
        "actually reached; Kendall's tau (`scipy.stats.kendalltau`) and weighted tau "
        "(`scipy.stats.weightedtau`, defaults) are averaged over tasks; top-1 is the share "
        "of tasks where the score's top model reaches the best accuracy; regret is the "
        "mean accuracy lost by taking it.",
    ]
    return lines


def _timing_section(results: Mapping[str, Any]) -> list[str]:
    tasks = results["tasks"]
    lines = [
        f"Measured duration: {results.get('duration_s', 0.0):.0f} s over "
        f"{len(results.get('sessions', []))} session(s) (sum of wall-clock time of every "
        "session, source-model training included).",
    ]
    if tasks:
        keys = ("scores_s", "retrain_head_s", "fine_tune_s", "scratch_s")
        means = {k: float(np.mean([t["timings"][k] for t in tasks])) for k in keys}
        lines += [
            "",
            f"Mean per task over {len(tasks)} tasks: scores {means['scores_s']:.3f} s "
            f"(from cached outputs), head re-training {means['retrain_head_s']:.2f} s "
            f"(cached features), fine-tuning {means['fine_tune_s']:.2f} s, from scratch "
            f"{means['scratch_s']:.2f} s (compilation included).",
        ]
    forwards = [
        f"`{pair}`: {info['pool_forward']['num_images']} images in "
        f"{info['pool_forward']['seconds']:.1f} s"
        for pair, info in results.get("sources", {}).items()
        if "pool_forward" in info
    ]
    if forwards:
        lines += [
            "",
            "One forward pass of the source model over the whole target pool, "
            "shared by all tasks of a pair: " + "; ".join(forwards) + ".",
        ]
    envs = [s.get("environment", {}) for s in results.get("sessions", [])]
    if envs:
        env = envs[-1]
        lines += [
            "",
            f"Machine (last session): {env.get('platform')}, {env.get('cpu_count')} "
            f"CPUs, jax {env.get('jax')}, devices {env.get('devices')}.",
        ]
    return lines


def _setup_section(results: Mapping[str, Any]) -> list[str]:
    config = results["config"]
    lines = [
        f"Mode `{config['mode']}`, seed {config['seed']}, source architecture "
        f"`{config['architecture']}`"
        + (f" {config['model_kwargs']}" if config["model_kwargs"] else "")
        + ".",
        "",
        "| pair | source classes | source train examples | epochs | source test acc | "
        "target pool (train/test) |",
        "|---|---|---|---|---|---|",
    ]
    for pair in config["pairs"]:
        info = results.get("sources", {}).get(pair)
        spec = config["sources"][pair]
        pool = (info or {}).get("pool_forward", {})
        lines.append(
            f"| `{pair}` | {','.join(map(str, spec['classes']))} | "
            f"{(info or {}).get('source_train_examples', 'n/a')} | {spec['epochs']} | "
            f"{_num((info or {}).get('source_test_accuracy'), '.3f')} | "
            f"{pool.get('num_train', 'n/a')}/{pool.get('num_test', 'n/a')} |"
        )
    epochs = ", ".join(f"{r}: {e}" for r, e in config["epochs"].items())
    counts = ", ".join(f"{r}: {n}" for r, n in config["tasks_per_regime"].items())
    lines += [
        "",
        f"- Tasks per pair: {counts}; each draws 2..{config['max_classes'] or 'all'} classes "
        "of the target pool uniformly (`leep_jax.data.sample_tasks`).",
        f"- Target pool: at most {config['large_per_class']} training and "
        f"{config['test_per_class']} test examples per class; large_balanced uses all pool "
        f"examples of its classes, the small regimes at most {config['small_per_class']} per "
        f"class; small_imbalanced: largest/smallest class = {config['imbalance_ratio']} "
        f"(geometric sizes); small_noisy: {config['noise_rate']:.0%} of training labels "
        "flipped to another class (test labels clean).",
        f"- Fine-tuning and training from scratch: epochs {epochs}; batch "
        f"{config['batch_size']}; learning rate {config['fine_tune_lr']} (fine-tune), "
        f"{config['scratch_lr']} (scratch); SGD Nesterov, cosine schedule, weight decay "
        f"{config['weight_decay']}. Head re-training: a new linear head on the frozen "
        f"features, {config['head_epochs']} epochs at learning rate {config['head_lr']}.",
        "- Scores on the (possibly noisy) target training labels; accuracies on the clean "
        "target test examples.",
    ]
    return lines


_PAPER_CONTEXT = """\
The paper (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
Transferability of Learned Representations", ICML 2020, arXiv 2002.12462) builds 200
random target tasks from CIFAR100 for each of two source models, a ResNet20 pre-trained on
CIFAR10 and a ResNet18 pre-trained on ImageNet, and correlates LEEP, NCE (Tran et al.
2019) and H-score (Bao et al. 2019) with the test accuracy of head re-training and of
fine-tuning, also for small and imbalanced target sets (Sec. 5.1-5.3); it also studies
convergence and source-model selection. Its headline numbers, beside this run's:
"""

_PAPER_NOTE = """\
Only these headline figures are quoted (from the paper's abstract and Sec. 5.1 as
summarized in this project's design notes); the per-setting coefficients of the paper's
Sec. 5 figures and tables are not copied here, because the paper's text was not available
offline to check them against.

What differs here, so the numbers are not comparable one to one:
- data: FashionMNIST and scikit-learn's 8x8 digits (upsampled to 28x28), grey-scale,
  instead of CIFAR10/CIFAR100 and ImageNet (those run through the same command with
  `--pair tfds:cifar10->tfds:cifar100` where TFDS data is available);
- target tasks have few classes (at most the target pool's 5 or 10, see Setup) instead
  of up to 100, and capped pool sizes, so the class count drives less of the spread;
- source models are trained here, briefly, on a CPU, not the paper's fully trained ones;
- fine-tuning and training from scratch run for a few epochs (see Setup);
- the small/imbalanced/noisy regimes use this project's definitions (see Setup), not
  necessarily the paper's exact sizes.
"""


def _paper_comparison(results: Mapping[str, Any]) -> list[str]:
    """The paper's headline figures beside the same statistics of this run."""
    cells = []  # (LEEP's r, best r of NCE and H-score or None, where)
    for pair, regimes in results["summary"].items():
        for regime, by_metric in regimes.items():
            for method in CORRELATED_METHODS:
                leep_r = by_metric["leep"][method]["pearson_r"]
                others = [by_metric[m][method]["pearson_r"] for m in ("nce", "h_score")]
                others = [r for r in others if r is not None]
                if leep_r is not None:
                    where = f"`{pair}`, {regime}, {METHOD_LABELS[method]}"
                    cells.append((leep_r, max(others) if others else None, where))
    lines = ["| | the paper | this run |", "|---|---|---|"]
    here = "n/a"
    if cells:
        leep_r, _, where = max(cells, key=lambda c: c[0])
        here = f"up to {leep_r:+.2f} ({where})"
    lines.append(
        "| Pearson r of LEEP with transfer accuracy | up to 0.98 (CIFAR10 -> CIFAR100, "
        f"ResNet20 source, 200 random tasks) | {here} |"
    )
    margins = [(leep_r - other, where) for leep_r, other, where in cells if other is not None]
    here = "n/a"
    if margins:
        low = min(margins, key=lambda m: m[0])
        high = max(margins, key=lambda m: m[0])
        ahead = sum(margin >= 0 for margin, _ in margins)
        here = (
            f"LEEP ahead or tied in {ahead} of {len(margins)} cells; difference in r from "
            f"{low[0]:+.2f} ({low[1]}) to {high[0]:+.2f} ({high[1]})"
        )
    lines.append(
        "| LEEP against the best of NCE and H-score | LEEP ahead in most settings; up to "
        f"30% higher r (relative, ImageNet -> CIFAR100) | {here} |"
    )
    return lines


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Writes ``out_dir/report.md`` (and the figures of `write_figures`).

    Returns:
      The report's path.
    """
    out = Path(out_dir)
    figures = write_figures(results, out)
    config = results["config"]
    status = "complete" if results.get("complete") else "INCOMPLETE (resume to finish)"
    lines = [
        "# LEEP paper experiments (leep-jax)",
        "",
        f"Status: {status}; {len(results['tasks'])} target tasks and "
        f"{len(results['rq4']['rows'])} RQ4 (task, model) runs. Generated from "
        "`results.json` by `leep_jax.experiments.report`.",
        "",
    ]
    if config["mode"] == "quick":
        lines += [
            "**Quick mode**: a smoke test with a briefly trained source, tiny tasks and few "
            "epochs. Correlations over so few tasks are noisy; do not read them as results.",
            "",
        ]
    glance = _at_a_glance(results)
    if glance:
        lines += ["## At a glance", "", *glance, ""]
    lines += ["## Setup", "", *_setup_section(results), ""]
    lines += ["## RQ1 and RQ3: scores vs transfer accuracy (paper Sec. 5.1-5.3)", ""]
    lines += _correlation_table(results)
    lines += ["", "What the tasks look like, and the accuracy each method reached:", ""]
    lines += _accuracy_table(results)
    lines += [
        "",
        "The class count moves all three scores and the accuracies together (accuracy tends "
        "to fall with more classes, and LEEP and NCE with it, while H-score tends to rise: "
        "its trace sums over more between-class directions). Correlation within tasks of "
        "one class count, averaged "
        "over the class counts with at least 3 tasks (a supplementary view, not in the "
        "paper), with accuracy and with the gain of fine-tuning over training from scratch "
        "(RQ2):",
        "",
    ]
    lines += _within_table(results)
    lines += ["", "### The paper, for context", "", _PAPER_CONTEXT]
    lines += [*_paper_comparison(results), "", _PAPER_NOTE]
    lines += ["## RQ2: convergence", ""]
    lines += [
        "Correlation of each score with the fine-tuned test accuracy after each epoch, and "
        "with the gain of fine-tuning over training from scratch after the same number of "
        "steps (same epochs, batch size and data).",
        "",
    ]
    lines += _convergence_table(results)
    lines += ["## RQ4: source model selection", ""]
    lines += _selection_section(results)
    lines += ["", "## Time", ""]
    lines += _timing_section(results)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- [{p.name}]({p.name})" for p in figures]
    path = out / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def _main(argv: Sequence[str]) -> int:
    import json

    if len(argv) != 1:
        print("usage: python -m leep_jax.experiments.report OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    with open(out / "results.json") as f:
        results = json.load(f)
    print(write_report(results, out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
