"""The markdown tables and lists of the report, one function per section.

Each returns the section's lines; `leep_jax.experiments.report.write_report` puts them
together. Numbers come from the stored summaries (`Results.summary`, ``rq2``,
``rq4_summary``) and the rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from leep_jax.experiments.labels import SCORE_LABELS
from leep_jax.experiments.results import Results
from leep_jax.experiments.statistics import (
    CORRELATED_METHODS,
    EXPERIMENT_SCORES,
    rows_by,
    score_of,
    within_class_count,
)
from leep_jax.transfer.methods import METHODS

__all__ = [
    "accuracy_table",
    "at_a_glance",
    "convergence_table",
    "correlation_table",
    "num_text",
    "r_text",
    "selection_section",
    "within_table",
]


def r_text(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("pearson_r") is None:
        return "n/a"
    text = f"{stats['pearson_r']:+.2f}"
    p = stats.get("p_value")
    return text if p is not None and p < 0.05 else text + "†"


def num_text(value: Any, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _best_metrics(by_metric: Mapping[str, Any], method: str) -> set[str]:
    """The metrics with the highest defined Pearson r for one method (ties: all)."""
    values = {m: by_metric[m][method]["pearson_r"] for m in EXPERIMENT_SCORES}
    defined = {m: v for m, v in values.items() if v is not None}
    return {m for m, v in defined.items() if v == max(defined.values())} if defined else set()


def _wins(summary: Mapping[str, Any]) -> tuple[dict[str, int], int]:
    """How often each metric has the highest r over the (pair, regime, method) cells."""
    wins = dict.fromkeys(EXPERIMENT_SCORES, 0)
    cells = 0
    for regimes in summary.values():
        for by_metric in regimes.values():
            for method in CORRELATED_METHODS:
                best = _best_metrics(by_metric, method)
                cells += bool(best)
                for m in best:
                    wins[m] += 1
    return wins, cells


def correlation_table(results: Results) -> list[str]:
    summary = results.summary
    header = ["pair", "regime", "tasks"] + [
        f"{SCORE_LABELS[m]} ({'head' if method == 'retrain_head' else 'ft'})"
        for method in CORRELATED_METHODS
        for m in EXPERIMENT_SCORES
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pair, regimes in summary.items():
        for regime, by_metric in regimes.items():
            n = by_metric["leep"]["fine_tune"]["n_tasks"]
            row = [f"`{pair}`", regime, str(n)]
            for method in CORRELATED_METHODS:
                best = _best_metrics(by_metric, method)
                for m in EXPERIMENT_SCORES:
                    text = r_text(by_metric[m][method])
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


def at_a_glance(results: Results) -> list[str]:
    """One line per research question, each number taken from the tables below."""
    summary = results.summary

    def head_ft(stats: Mapping[str, Any]) -> str:
        return f"{r_text(stats['retrain_head'])} / {r_text(stats['fine_tune'])}"

    lines = []
    for pair, regimes in summary.items():
        large = regimes.get("large_balanced")
        if large and large["leep"]["fine_tune"]["n_tasks"]:
            lines.append(
                f"- RQ1, `{pair}`, {large['leep']['fine_tune']['n_tasks']} large balanced "
                "tasks: Pearson r with the accuracy of head re-training / fine-tuning: "
                + ", ".join(f"{SCORE_LABELS[m]} {head_ft(large[m])}" for m in EXPERIMENT_SCORES)
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
    for pair, regimes in results.rq2.items():
        entry = regimes.get("large_balanced", {})
        epochs = entry.get("epochs", 0)
        if epochs:
            tuned, gain = entry["fine_tune"]["leep"], entry["gain"]["leep"]
            lines.append(
                f"- RQ2, `{pair}`, large balanced: r(LEEP, fine-tuned accuracy) "
                f"{r_text(tuned[0])} after epoch 1, {r_text(tuned[-1])} after epoch {epochs}; "
                f"r(LEEP, fine-tuning's gain over training from scratch) {r_text(gain[0])} "
                f"after epoch 1, {r_text(gain[-1])} after epoch {epochs}."
            )
    rq4 = results.rq4_summary
    if rq4 and rq4.get("per_task"):
        agg = rq4["all"]
        ft = {m: agg[m]["fine_tune"] for m in EXPERIMENT_SCORES}
        lines.append(
            f"- RQ4, {ft['leep']['n_tasks']} target tasks x {len(rq4['models'])} source "
            "models: mean weighted tau with fine-tuned accuracy "
            + ", ".join(
                f"{SCORE_LABELS[m]} {num_text(ft[m]['weighted_tau_mean'])}"
                for m in EXPERIMENT_SCORES
            )
            + "; the score's top model was the best in "
            + ", ".join(
                f"{num_text(ft[m]['top1_rate'])} ({SCORE_LABELS[m]})" for m in EXPERIMENT_SCORES
            )
            + " of the tasks."
        )
    if lines:
        lines.append("")
        lines.append("† marks p >= 0.05. Details, and what differs from the paper, below.")
    return lines


def accuracy_table(results: Results) -> list[str]:
    lines = [
        "| pair | regime | tasks | classes | train examples | mean LEEP | re-train head | "
        "fine-tune | scratch |",
        "|" + "---|" * 9,
    ]
    config = results.config
    for pair in config["pairs"]:
        for regime in config["tasks_per_regime"]:
            rows = rows_by(results.tasks, pair, regime)
            if not rows:
                continue

            def mean(values):
                return float(np.mean(values))

            classes = [r.num_classes for r in rows]
            sizes = [r.n_train for r in rows]
            lines.append(
                f"| `{pair}` | {regime} | {len(rows)} | {min(classes)}-{max(classes)} | "
                f"{min(sizes)}-{max(sizes)} | {mean([score_of(r, 'leep') for r in rows]):.3f} | "
                + " | ".join(f"{mean([r.accuracy[m] for r in rows]):.3f}" for m in METHODS)
                + " |"
            )
    lines += ["", "Means over the tasks of each row (test accuracy after the last epoch)."]
    return lines


def within_table(results: Results) -> list[str]:
    config = results.config
    within = within_class_count(results.tasks, config["pairs"], config["tasks_per_regime"])
    outcomes = {"retrain_head": "head", "fine_tune": "ft", "gain": "ft − scratch"}
    header = ["pair", "regime", "groups (tasks)"] + [
        f"{SCORE_LABELS[m]} ({label})" for label in outcomes.values() for m in EXPERIMENT_SCORES
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pair, regimes in within.items():
        for regime, entry in regimes.items():
            first = entry["leep"]["fine_tune"]
            if not first["groups"]:
                continue
            cells = [
                num_text(entry[m][outcome]["mean_r"], "+.2f") if outcome in entry[m] else "n/a"
                for outcome in outcomes
                for m in EXPERIMENT_SCORES
            ]
            lines.append(
                f"| `{pair}` | {regime} | {first['groups']} ({first['n_tasks']}) | "
                + " | ".join(cells)
                + " |"
            )
    if len(lines) == 2:
        return ["Too few tasks per class count for this analysis."]
    return lines


def convergence_table(results: Results) -> list[str]:
    lines = []
    for pair, regimes in results.rq2.items():
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
            for metric in EXPERIMENT_SCORES:
                values = [r_text(s) for s in entry["fine_tune"][metric]]
                lines.append(
                    f"| r({SCORE_LABELS[metric]}, fine-tuned acc) | " + " | ".join(values) + " |"
                )
            for metric in EXPERIMENT_SCORES:
                values = [r_text(s) for s in entry["gain"][metric]]
                lines.append(
                    f"| r({SCORE_LABELS[metric]}, ft − scratch) | " + " | ".join(values) + " |"
                )
            tuned = " / ".join(f"{v:.3f}" for v in entry["mean_curves"]["fine_tune"])
            scratch = " / ".join(f"{v:.3f}" for v in entry["mean_curves"]["scratch"])
            lines.append(f"| mean acc, fine-tune | {tuned.replace(' / ', ' | ')} |")
            lines.append(f"| mean acc, scratch | {scratch.replace(' / ', ' | ')} |")
            lines.append("")
    return lines


def selection_section(results: Results) -> list[str]:
    rq4 = results.rq4_summary
    if not rq4 or not rq4.get("per_task"):
        return ["No RQ4 results (no zoo configured, or not reached yet)."]
    lines = [
        "Zoo:",
        "",
        "| model | architecture | source classes | train examples | epochs | source test acc |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in results.zoo.items():
        spec = info["spec"]
        lines.append(
            f"| {name} | {spec['architecture']} {spec['model_kwargs'] or ''} | "
            f"{','.join(map(str, spec['classes']))} | {info.get('source_train_examples', 'n/a')}"
            f" | {spec['epochs']} | {num_text(info.get('source_test_accuracy'), '.3f')} |"
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
        for metric in EXPERIMENT_SCORES:
            ft, head = agg[metric]["fine_tune"], agg[metric]["retrain_head"]
            lines.append(
                f"| `{target}` | {SCORE_LABELS[metric]} | {num_text(ft['kendall_tau_mean'])} | "
                f"{num_text(ft['weighted_tau_mean'])} | {num_text(ft['top1_rate'])} | "
                f"{num_text(ft['mean_regret'], '.3f')} | {num_text(head['kendall_tau_mean'])} | "
                f"{num_text(head['weighted_tau_mean'])} | {num_text(head['top1_rate'])} | "
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
