"""PNG figures of the experiment (matplotlib, Agg backend): `write_figures`.

matplotlib comes with the ``experiments`` extra; it is imported when figures are drawn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leep_jax.experiments.labels import LABELS, METHOD_LABELS
from leep_jax.experiments.results import Results
from leep_jax.experiments.selection import SELECTION_METHODS, Selection, selection
from leep_jax.experiments.statistics import (
    CORRELATED_METHODS,
    CORRELATED_SCORES,
    PAPER_SCORES,
    TaskPoint,
    correlation,
    distinct_tasks,
    rows_by,
)

__all__ = ["slug", "write_figures"]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _stat(value: float | None, fmt: str = "+.2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _scatter_figure(plt, points: Sequence[TaskPoint], title: str):
    """Every score (rows of panels: ground truths) vs accuracy, colour = class count."""
    columns = len(CORRELATED_SCORES)
    fig, axes = plt.subplots(
        len(CORRELATED_METHODS),
        columns,
        figsize=(2.2 * columns, 5.5),
        squeeze=False,
        sharey="row",
    )
    classes = np.asarray([p.num_classes for p in points])
    for i, method in enumerate(CORRELATED_METHODS):
        y = np.asarray([p.accuracy.get(method, np.nan) for p in points])
        for j, score in enumerate(CORRELATED_SCORES):
            ax = axes[i][j]
            x = np.asarray([p.scores[score] for p in points])
            dots = ax.scatter(
                x, y, c=classes, cmap="viridis", vmin=classes.min(), vmax=classes.max(), s=10
            )
            stats = correlation(x, y, classes)
            ax.set_title(
                f"n={stats.n_tasks} r={_stat(stats.pearson_r)} p={_stat(stats.p_value, '.2g')}\n"
                f"partial r={_stat(stats.partial_r)}",
                fontsize=7,
            )
            ax.tick_params(labelsize=6)
            ax.locator_params(nbins=3)
            ax.set_xlabel(LABELS[score], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"test acc. ({METHOD_LABELS[method]})", fontsize=7)
    fig.subplots_adjust(left=0.04, right=0.93, top=0.85, bottom=0.1, wspace=0.25, hspace=0.45)
    fig.colorbar(dots, cax=fig.add_axes((0.945, 0.15, 0.008, 0.65)), label="number of classes")
    fig.suptitle(title)
    return fig


def _curves_figure(plt, points: Sequence[TaskPoint], title: str):
    """Tasks in LEEP tertiles: mean fine-tuning curve per group, from scratch dashed."""
    epochs = min(
        min(p.curves["fine_tune"].size, p.curves["train_from_scratch"].size) for p in points
    )
    order = np.argsort([p.scores["leep"] for p in points], kind="stable")
    groups = [g for g in np.array_split(order, 3) if g.size]
    names = ["low", "middle", "high"] if len(groups) == 3 else [str(i) for i in range(len(groups))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, epochs + 1)
    for color, name, group in zip(("C0", "C1", "C2"), names, groups, strict=False):
        tuned = np.mean([points[i].curves["fine_tune"][:epochs] for i in group], axis=0)
        scratch = np.mean([points[i].curves["train_from_scratch"][:epochs] for i in group], axis=0)
        leeps = [points[i].scores["leep"] for i in group]
        label = f"{name} LEEP ({np.nanmin(leeps):.2f}..{np.nanmax(leeps):.2f}, {group.size} tasks)"
        ax.plot(x, tuned, "-o", color=color, label=f"fine-tune, {label}")
        ax.plot(x, scratch, "--", color=color, alpha=0.7, label="scratch, same tasks")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean test accuracy")
    ax.set_xticks(x)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _picks_figure(plt, summary: Selection):
    """Task x method grid: colour = picked model's accuracy relative to the best, text =
    the picked model's number (legend in the title; first column: the best model; *:
    tied top scores), one panel per ground truth."""
    tasks = summary.per_task
    methods = ["best", *summary.methods]
    fig, axes = plt.subplots(
        1,
        len(SELECTION_METHODS),
        figsize=(0.55 * len(methods) * len(SELECTION_METHODS) + 4, 0.3 * len(tasks) + 2.5),
        squeeze=False,
    )
    index = {m: k for k, m in enumerate(summary.models)}
    for ax, truth in zip(axes[0], SELECTION_METHODS, strict=True):
        grid = np.full((len(tasks), len(methods)), np.nan)
        for t, task in enumerate(tasks):
            accuracy = task["accuracy"][truth]
            best = max(accuracy, key=accuracy.get)
            grid[t, 0] = 1.0
            ax.text(0, t, str(index[best]), ha="center", va="center", fontsize=6, weight="bold")
            for j, method in enumerate(methods[1:], start=1):
                pick = task["methods"][method].get(truth)
                if pick is not None and pick.relative_accuracy is not None:
                    grid[t, j] = pick.relative_accuracy
                    text = str(index[pick.picked]) + ("*" if pick.tied > 1 else "")
                    ax.text(j, t, text, ha="center", va="center", fontsize=6)
        image = ax.imshow(grid, cmap="RdYlGn", vmin=np.nanmin(grid, initial=1.0), vmax=1.0)
        ax.set_xticks(
            range(len(methods)), [LABELS.get(m, m) for m in methods], rotation=90, fontsize=7
        )
        ax.set_yticks(
            range(len(tasks)),
            [f"{task['target']} #{task['task_index']}" for task in tasks],
            fontsize=6,
        )
        ax.set_title(f"ground truth: {METHOD_LABELS[truth]}", fontsize=9)
        fig.colorbar(image, ax=ax, label="picked / best accuracy", shrink=0.7)
    legend = "models: " + ", ".join(f"{k} = {m}" for m, k in index.items())
    legend += " (*: tied top scores, the first shown; colour: the expected accuracy)"
    fig.suptitle("RQ4: the model each method picks per task\n" + legend, fontsize=8)
    return fig


def write_figures(
    results: Results, out_dir: str | Path, rq4: Selection | None = None
) -> list[Path]:
    """PNG figures (matplotlib, Agg backend) in ``out_dir``.

    * ``scatter_<pair>_<regime>.png``: every score and the class-count baseline vs the
      accuracy of head re-training and of fine-tuning, one point per distinct task,
      coloured by its number of classes; each panel gives n, r, p and partial r;
    * ``curves_<pair>_<regime>.png``: tasks split into LEEP tertiles; mean fine-tuning
      test-accuracy curve per group (from scratch dashed);
    * ``rq4_picks.png``: per RQ4 task and method, the model picked and its accuracy
      relative to the best model's.

    Args:
      results: the results.
      out_dir: where to write.
      rq4: ``selection(results.rq4_rows, results.zoo)`` if already computed.

    Returns:
      The paths written.
    """
    plt = _pyplot()
    out = Path(out_dir)
    paths = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=72)
        plt.close(fig)
        paths.append(path)

    config = results.config
    for pair in config.get("pairs", ()):
        for regime in config.get("tasks_per_regime", {}):
            points = distinct_tasks(rows_by(results.tasks, pair, regime))
            if len(points) < 2:
                continue
            title = f"{pair}, {regime} ({len(points)} tasks)"
            save(_scatter_figure(plt, points, title), f"scatter_{slug(pair)}_{regime}.png")
            if all({"fine_tune", "train_from_scratch"} <= set(p.curves) for p in points) and all(
                np.isfinite(p.scores[s]) for p in points for s in PAPER_SCORES[:1]
            ):
                save(_curves_figure(plt, points, title), f"curves_{slug(pair)}_{regime}.png")
    summary = rq4 if rq4 is not None else selection(results.rq4_rows, results.zoo)
    if summary.per_task:
        save(_picks_figure(plt, summary), "rq4_picks.png")
    return paths
