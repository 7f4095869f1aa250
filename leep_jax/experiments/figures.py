"""PNG figures of the experiment (matplotlib, Agg backend): `write_figures`.

matplotlib comes with the ``experiments`` extra; it is imported when figures are drawn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leep_jax.experiments.labels import METHOD_LABELS, SCORE_LABELS
from leep_jax.experiments.results import Results
from leep_jax.experiments.rows import Rq4Row, TaskRow
from leep_jax.experiments.statistics import (
    CORRELATED_METHODS,
    EXPERIMENT_SCORES,
    correlation,
    rows_by,
    score_of,
)

__all__ = ["slug", "write_figures"]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _scatter_figure(plt, rows: Sequence[TaskRow], title: str):
    fig, axes = plt.subplots(
        len(CORRELATED_METHODS), len(EXPERIMENT_SCORES), figsize=(12, 7), squeeze=False
    )
    for i, method in enumerate(CORRELATED_METHODS):
        for j, metric in enumerate(EXPERIMENT_SCORES):
            ax = axes[i][j]
            x = np.asarray([score_of(r, metric) for r in rows])
            y = np.asarray([r.accuracy[method] for r in rows])
            ax.scatter(x, y, s=14, alpha=0.75)
            stats = correlation(x, y)
            finite = np.isfinite(x)
            if stats["pearson_r"] is not None and finite.sum() >= 2 and np.ptp(x[finite]) > 0:
                slope, intercept = np.polyfit(x[finite], y[finite], 1)
                grid = np.linspace(x[finite].min(), x[finite].max(), 2)
                ax.plot(grid, slope * grid + intercept, color="C3", lw=1)
            r = stats["pearson_r"]
            ax.set_title(f"r = {r:.2f}" if r is not None else "r undefined", fontsize=10)
            ax.set_xlabel(SCORE_LABELS[metric])
            ax.set_ylabel(f"test accuracy ({METHOD_LABELS[method]})")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _curves_figure(plt, rows: Sequence[TaskRow], title: str):
    epochs = min(len(r.curves["fine_tune"]) for r in rows)
    order = np.argsort([score_of(r, "leep") for r in rows], kind="stable")
    groups = [g for g in np.array_split(order, 3) if g.size]
    names = ["low", "middle", "high"] if len(groups) == 3 else [str(i) for i in range(len(groups))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, epochs + 1)
    for color, name, group in zip(("C0", "C1", "C2"), names, groups, strict=False):
        tuned = np.mean([rows[i].curves["fine_tune"][:epochs] for i in group], axis=0)
        scratch = np.mean([rows[i].curves["train_from_scratch"][:epochs] for i in group], axis=0)
        leeps = [score_of(rows[i], "leep") for i in group]
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


def _selection_figure(plt, rows: Sequence[Rq4Row], title: str):
    fig, axes = plt.subplots(1, len(EXPERIMENT_SCORES), figsize=(12, 3.8), squeeze=False)
    indices = sorted({r.task_index for r in rows})
    for j, metric in enumerate(EXPERIMENT_SCORES):
        ax = axes[0][j]
        for k, index in enumerate(indices):
            group = [r for r in rows if r.task_index == index]
            ax.scatter(
                [score_of(r, metric) for r in group],
                [r.accuracy["fine_tune"] for r in group],
                s=16,
                color=f"C{k % 10}",
                label=f"task {index}",
            )
        ax.set_xlabel(SCORE_LABELS[metric])
        ax.set_ylabel("fine-tuned test accuracy")
    if len(indices) <= 10:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_figures(results: Results, out_dir: str | Path) -> list[Path]:
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
    config = results.config
    for pair in config["pairs"]:
        for regime in config["tasks_per_regime"]:
            rows = rows_by(results.tasks, pair, regime)
            if len(rows) < 2:
                continue
            for kind, make in (("scatter", _scatter_figure), ("curves", _curves_figure)):
                fig = make(plt, rows, f"{pair}, {regime} ({len(rows)} tasks)")
                path = out / f"{kind}_{slug(pair)}_{regime}.png"
                fig.savefig(path, dpi=90)
                plt.close(fig)
                paths.append(path)
    rq4_rows = results.rq4_rows
    for target in sorted({r.target for r in rq4_rows}):
        rows = [r for r in rq4_rows if r.target == target]
        fig = _selection_figure(plt, rows, f"RQ4 source selection, target {target}")
        path = out / f"rq4_{slug(target)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
