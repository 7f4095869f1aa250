"""The markdown tables of the report, one function per table.

Each returns the table's lines (or a one-line note when there is nothing to show);
`leep_jax.experiments.report.write_report` puts them together. They read the typed
statistics of `leep_jax.experiments.statistics` and `leep_jax.experiments.selection`
(computed from the rows of results.json), never the stored JSON summaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leep_jax.experiments.labels import LABELS, SHORT_METHOD_LABELS
from leep_jax.experiments.results import Results
from leep_jax.experiments.selection import SELECTION_SCORES, Estimate, Selection
from leep_jax.experiments.statistics import (
    CLASS_COUNT,
    CORRELATED_SCORES,
    PAPER_SCORES,
    Correlation,
    RegimeSummary,
    rows_by,
    score_of,
)
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.transfer.methods import METHODS

__all__ = [
    "accuracy_table",
    "at_chance_table",
    "class_count_note",
    "convergence_tables",
    "correlation_table",
    "estimate_text",
    "lr_selection_lines",
    "num_text",
    "r_text",
    "selection_table",
    "selection_targets_table",
    "within_table",
    "zoo_table",
]

Summary = Mapping[str, Mapping[str, RegimeSummary]]


def num_text(value: Any, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def r_text(r: float | None, p: float | None) -> str:
    """``+0.85``, with † when p >= 0.05 (or undefined); ``n/a`` when r is undefined."""
    if r is None:
        return "n/a"
    return f"{r:+.2f}" + ("" if p is not None and p < 0.05 else "†")


def estimate_text(estimate: Estimate, fmt: str = ".2f") -> str:
    """``0.56 [0.41, 0.70]``: a mean and its bootstrap 95 % interval."""
    if estimate.mean is None:
        return "n/a"
    return f"{estimate.mean:{fmt}} [{num_text(estimate.low, fmt)}, {num_text(estimate.high, fmt)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _cells(summary: Summary):
    """``(pair, regime, RegimeSummary)`` of the pairs and regimes with tasks."""
    for pair, regimes in summary.items():
        for regime, entry in regimes.items():
            if entry.n_tasks:
                yield pair, regime, entry


def _tasks_text(entry: RegimeSummary) -> str:
    if entry.duplicate_rows:
        return f"{entry.n_tasks} ({entry.n_rows} rows)"
    return str(entry.n_tasks)


def correlation_table(
    summary: Summary, method: str, *, partial: bool, scores: Sequence[str] = CORRELATED_SCORES
) -> list[str]:
    """Per pair and regime, each score's r (or partial r) with one method's accuracy.

    The highest value among the scores (baselines excluded) is bold; † marks p >= 0.05.
    """

    def value(c: Correlation) -> tuple[float | None, float | None]:
        return (c.partial_r, c.partial_p) if partial else (c.pearson_r, c.p_value)

    rows = []
    for pair, regime, entry in _cells(summary):
        by_score = {s: value(entry.correlations[s][method]) for s in scores}
        defined = [
            by_score[s][0] for s in scores if s in SCORE_NAMES and by_score[s][0] is not None
        ]
        best = max(defined) if defined else None
        row = [f"`{pair}`", regime, _tasks_text(entry)]
        for s in scores:
            text = r_text(*by_score[s])
            row.append(f"**{text}**" if best is not None and by_score[s][0] == best else text)
        rows.append(row)
    if not rows:
        return ["No tasks yet."]
    return _table(["pair", "regime", "tasks", *(LABELS[s] for s in scores)], rows)


def within_table(summary: Summary, outcome: str) -> list[str]:
    """Per pair and regime, each score's pooled within-class-count r with an outcome."""
    rows = []
    for pair, regime, entry in _cells(summary):
        pooled = {s: entry.within_class_count[s].get(outcome) for s in SCORE_NAMES}
        first = next((p for p in pooled.values() if p is not None and p.groups), None)
        if first is None:
            continue
        row = [f"`{pair}`", regime, f"{first.groups} ({first.n_tasks})"]
        row += [r_text(p.r, p.p_value) if p is not None else "n/a" for p in pooled.values()]
        rows.append(row)
    if not rows:
        return ["Too few tasks per class count for this view."]
    return _table(
        ["pair", "regime", "class counts (tasks)", *(LABELS[s] for s in SCORE_NAMES)], rows
    )


def at_chance_table(summary: Summary, selection: Selection) -> list[str]:
    """Rows whose accuracy is at chance, per pair, regime and method (and RQ4)."""
    rows = [
        [f"`{pair}`", regime, str(entry.n_rows), *(str(entry.at_chance[m]) for m in METHODS)]
        for pair, regime, entry in _cells(summary)
    ]
    if selection.n_rows:
        rows.append(
            ["RQ4", "all targets", str(selection.n_rows)]
            + [str(selection.at_chance[m]) if m in selection.at_chance else "–" for m in METHODS]
        )
    if not rows:
        return ["No rows yet."]
    return _table(
        ["pair", "regime", "rows", *(SHORT_METHOD_LABELS.get(m, m) for m in METHODS)], rows
    )


def accuracy_table(results: Results) -> list[str]:
    """What the tasks look like, and the mean accuracy each method reached."""
    rows = []
    config = results.config
    for pair in config["pairs"]:
        for regime in config["tasks_per_regime"]:
            group = rows_by(results.tasks, pair, regime)
            if not group:
                continue
            classes = [r.num_classes for r in group]
            sizes = [r.n_train for r in group]
            leep = [score_of(r, "leep") for r in group]
            leep = [v for v in leep if np.isfinite(v)]
            rows.append(
                [
                    f"`{pair}`",
                    regime,
                    str(len(group)),
                    f"{min(classes)}-{max(classes)}",
                    f"{min(sizes)}-{max(sizes)}",
                    num_text(float(np.mean(leep)) if leep else None, ".3f"),
                    *(
                        num_text(float(np.mean([r.accuracy[m] for r in group])), ".3f")
                        if all(m in r.accuracy for r in group)
                        else "n/a"
                        for m in METHODS
                    ),
                ]
            )
    if not rows:
        return ["No tasks yet."]
    header = ["pair", "regime", "rows", "classes", "train examples", "mean LEEP"]
    return [
        *_table([*header, "re-train head", "fine-tune", "scratch"], rows),
        "",
        "Means over the rows (test accuracy after the last epoch).",
    ]


def convergence_tables(rq2: Mapping[str, Any]) -> list[str]:
    """Per pair and regime: r (partial r) of the paper's scores after each epoch."""

    def cell(c: Correlation) -> str:
        return f"{r_text(c.pearson_r, c.p_value)} ({r_text(c.partial_r, c.partial_p)})"

    lines = []
    for pair, regimes in rq2.items():
        for regime, entry in regimes.items():
            epochs = entry.get("epochs", 0)
            if not epochs:
                continue
            steps = entry["steps_per_epoch_mean"]
            lines += [
                f"**`{pair}`, {regime}**"
                + (f" (about {steps:.1f} steps per epoch)" if steps is not None else ""),
                "",
            ]
            rows = [
                [f"r({LABELS[s]}, fine-tuned acc)", *map(cell, entry["fine_tune"][s])]
                for s in PAPER_SCORES
            ]
            rows += [
                [f"r({LABELS[s]}, ft − scratch)", *map(cell, entry["gain"][s])]
                for s in PAPER_SCORES
            ]
            for method in ("fine_tune", "scratch"):
                curve = entry["mean_curves"][method]
                rows.append([f"mean acc, {method.replace('_', '-')}", *(f"{v:.3f}" for v in curve)])
            lines += _table(["", *(f"epoch {e}" for e in range(1, epochs + 1))], rows)
            lines.append("")
    return lines or ["No tasks with training curves yet."]


def selection_table(selection: Selection, truth: str) -> list[str]:
    """Every RQ4 method over all tasks: weighted tau, top-1, picked/best, LEEP paired."""
    rows = []
    for method in SELECTION_SCORES:
        agg = selection.all[method][truth]
        if method == "leep":
            paired = "–"
        else:
            test = selection.leep_vs[truth][method]
            paired = (
                f"{estimate_text(test.difference, '+.2f')}, p {num_text(test.wilcoxon_p, '.3f')}"
                if test.n_tasks
                else "n/a"
            )
        rows.append(
            [
                LABELS[method],
                estimate_text(agg.weighted_tau),
                estimate_text(agg.top1),
                estimate_text(agg.relative_accuracy, ".3f"),
                paired,
                str(agg.n_tasks),
            ]
        )
    header = [
        "method",
        "mean weighted tau [95 % CI]",
        "top-1 rate [95 % CI]",
        "picked / best acc. [95 % CI]",
        "LEEP − method, tau [95 % CI], Wilcoxon p",
        "tasks",
    ]
    return _table(header, rows)


def selection_targets_table(selection: Selection, truth: str) -> list[str]:
    """Mean weighted tau and top-1 rate of each method per target pool."""
    if not selection.targets:
        return []
    header = ["method"]
    for target in selection.targets:
        header += [f"`{target}` tau", f"`{target}` top-1"]
    rows = []
    for method in SELECTION_SCORES:
        row = [LABELS[method]]
        for by_method in selection.targets.values():
            agg = by_method[method][truth]
            row += [num_text(agg.weighted_tau.mean), num_text(agg.top1.mean)]
        rows.append(row)
    return _table(header, rows)


def zoo_table(results: Results) -> list[str]:
    """The zoo's models: architecture, source classes, size and source accuracy."""
    rows = []
    for name, info in results.zoo.items():
        spec = info.get("spec", {})
        classes = spec.get("classes")
        rows.append(
            [
                name,
                f"{spec.get('architecture', 'n/a')} {spec.get('model_kwargs') or ''}".strip(),
                f"{spec.get('dataset', '')} " + (",".join(map(str, classes)) if classes else "all"),
                str(info.get("source_train_examples", spec.get("train_examples", "n/a"))),
                str(spec.get("epochs", "n/a")),
                num_text(info.get("num_params"), ","),
                num_text(info.get("source_test_accuracy"), ".3f"),
            ]
        )
    if not rows:
        return ["No zoo models trained yet."]
    header = ["model", "architecture", "source classes", "train examples", "epochs"]
    return _table([*header, "parameters", "source test acc"], rows)


def lr_selection_lines(lr_selection: Mapping[str, Any]) -> list[str]:
    """A table per scope (pair, or RQ4) and method: each rate tried, its mean validation
    accuracy, and the one chosen."""
    if not lr_selection:
        return ["No learning-rate selection recorded in results.json."]
    lines = ["| scope | method | learning rate: mean validation accuracy | chosen |"]
    lines.append("|---|---|---|---|")
    for scope, entries in lr_selection.items():
        for method, entry in entries.items():
            tried = ", ".join(
                f"{lr:g}: {num_text(mean, '.3f')}"
                for lr, mean in zip(
                    entry["learning_rates"], entry["mean_validation_accuracy"], strict=True
                )
            )
            chosen = entry.get("chosen")
            lines.append(
                f"| `{scope}` | {method} | {tried} | "
                f"{'pending' if chosen is None else format(chosen, 'g')} |"
            )
    return lines


def class_count_note(summary: Summary, method: str) -> list[str]:
    """What the class count alone reaches, per pair and regime (the baseline's raw r)."""
    cells = [
        f"`{pair}` {regime} "
        + r_text(
            entry.correlations[CLASS_COUNT][method].pearson_r,
            entry.correlations[CLASS_COUNT][method].p_value,
        )
        for pair, regime, entry in _cells(summary)
    ]
    return [", ".join(cells)] if cells else []
