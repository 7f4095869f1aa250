"""Rank source models for a target task by LEEP (with every other score beside it).

The job `leep-jax rank` does: one forward pass of the target training set through each
source model gives logits and penultimate features together; LEEP and NCE come from
the logits, the other scores (`leep_jax.scores.names.SCORE_NAMES`) from the features.
Models are ranked by one of the scores (LEEP by default, rank 1 = highest score =
predicted best transfer). With ``verify=True`` every model is also fine-tuned on the
task, and the rank correlation of each score with the accuracy actually reached is
reported: Kendall's tau (`scipy.stats.kendalltau`) and the weighted tau of the
model-ranking literature (`scipy.stats.weightedtau` with its defaults, which weights
agreement at the top of the ranking most).

Example:
  >>> from leep_jax.data import load_target_task
  >>> from leep_jax.experiments.rank import rank_models
  >>> task = load_target_task("digits", num_classes=5, seed=0)    # doctest: +SKIP
  >>> result = rank_models({"a": model_a, "b": model_b}, task)     # doctest: +SKIP
  >>> print(result.format_table())                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import scipy.stats
from flax import nnx
from tqdm.auto import tqdm

from leep_jax.data.task import Task, TaskArrays
from leep_jax.experiments.selection import rank_agreement
from leep_jax.experiments.statistics import finite_or_none
from leep_jax.models.zoo_scores import ZooStrategy, score_zoo
from leep_jax.scores.names import SCORE_LABELS, SCORE_NAMES, ScoreName
from leep_jax.transfer.methods import Method, fine_tune, retrain_head

__all__ = [
    "SCORE_NAMES",
    "Correlation",
    "RankResult",
    "RankRow",
    "rank_models",
]

# The transfer methods (`leep_jax.transfer.METHODS`) that start from the source model.
VERIFY_METHODS: tuple[Method, ...] = ("fine_tune", "retrain_head")

VerifyMethod = Literal["fine_tune", "retrain_head"]


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Rank agreement of one score with the accuracy actually reached.

    Attributes:
      kendall_tau: Kendall's tau-b (`scipy.stats.kendalltau`); None when undefined
        (fewer than 2 models, or all scores or all accuracies tied).
      kendall_p: its two-sided p-value; None when undefined.
      weighted_tau: `scipy.stats.weightedtau` with its defaults (hyperbolic weights,
        top of the ranking weighs most); None when undefined.
    """

    kendall_tau: float | None
    kendall_p: float | None
    weighted_tau: float | None

    @classmethod
    def between(cls, scores: Sequence[float], accuracies: Sequence[float]) -> Correlation:
        """Correlations of ``scores`` with ``accuracies`` (same model order)."""
        return cls(*rank_agreement(scores, accuracies))


@dataclasses.dataclass(frozen=True)
class RankRow:
    """One source model's scores and rank.

    Attributes:
      name: the model's name (key of the ``models`` mapping).
      architecture: its registry name (``"resnet20"``, ...) or class name.
      num_source_classes: Z, the width of its head.
      scores: one value per score of ``SCORE_NAMES``, on the target training set.
      ranks: rank under each score, 1 = highest (ties share the best rank).
      rank: rank under the score the result is ranked by.
      score_time_s: wall-clock seconds of the forward pass plus every score
        (compilation included: the first model of each architecture pays it).
      accuracy: target test accuracy after transfer (``verify`` only, else None).
      transfer_time_s: wall-clock seconds of that transfer run (``verify`` only).
    """

    name: str
    architecture: str
    num_source_classes: int
    scores: Mapping[str, float]
    ranks: Mapping[str, int]
    rank: int
    score_time_s: float
    accuracy: float | None = None
    transfer_time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (non-finite scores become None)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "num_source_classes": self.num_source_classes,
            "rank": self.rank,
            "scores": {k: finite_or_none(v) for k, v in self.scores.items()},
            "ranks": dict(self.ranks),
            "score_time_s": self.score_time_s,
            "accuracy": self.accuracy,
            "transfer_time_s": self.transfer_time_s,
        }


@dataclasses.dataclass(frozen=True)
class RankResult:
    """Models ranked for one target task.

    Attributes:
      task: a description of the target task (name, dataset, classes, sizes, seed).
      metric: the score the rows are ranked by.
      rows: one `RankRow` per model, best first.
      verify: ``{"method", "epochs"}`` of the transfer runs, or None without verify.
      correlations: per score, its `Correlation` with the transfer accuracy (verify
        only, else None).
      score_time_s: seconds spent scoring all models (forward passes + scores).
    """

    task: Mapping[str, Any]
    metric: str
    rows: tuple[RankRow, ...]
    verify: Mapping[str, Any] | None = None
    correlations: Mapping[str, Correlation] | None = None
    score_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready Python values."""
        correlations = None
        if self.correlations is not None:
            correlations = {k: dataclasses.asdict(v) for k, v in self.correlations.items()}
        return {
            "task": dict(self.task),
            "metric": self.metric,
            "models": [row.to_dict() for row in self.rows],
            "verify": None if self.verify is None else dict(self.verify),
            "correlations": correlations,
            "score_time_s": self.score_time_s,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """One JSON object (strict: no NaN or Infinity; undefined values are null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def format_table(self) -> str:
        """A human-readable ranked table (and correlations, with verify)."""
        task = self.task
        classes = ",".join(map(str, task.get("classes", ()))) or "?"
        lines = [
            f"Target task {task.get('name', '?')}: {task.get('dataset', '?')} classes "
            f"{classes} ({task['num_classes']} classes, {task['num_train']} train / "
            f"{task['num_test']} test examples)",
            f"{len(self.rows)} source models ranked by {SCORE_LABELS[self.metric]} "
            "(rank 1 = predicted best transfer)",
            "",
        ]
        header = ["rank", "model", "arch", "Z"] + [SCORE_LABELS[s] for s in SCORE_NAMES]
        header.append("score s")
        if self.verify is not None:
            header += ["accuracy", f"{self.verify['method'].replace('_', '-')} s"]
        table = [header]
        for row in self.rows:
            cells = [str(row.rank), row.name, row.architecture, str(row.num_source_classes)]
            cells += [_fmt(row.scores[s], 4) for s in SCORE_NAMES]
            cells.append(f"{row.score_time_s:.2f}")
            if self.verify is not None:
                cells += [_fmt(row.accuracy, 4), _fmt(row.transfer_time_s, 1)]
            table.append(cells)
        lines += _align(table, left={1, 2})
        lines += [
            "",
            f"Scoring took {self.score_time_s:.1f} s in all (compilation included): one "
            f"forward pass of the {task['num_train']} training examples per model, LEEP "
            "and NCE from the logits, the other scores from the features.",
        ]
        if self.verify is not None and self.correlations is not None:
            total_transfer = sum(r.transfer_time_s or 0.0 for r in self.rows)
            lines += [
                f"Verification: {self.verify['method'].replace('_', '-')} of every model "
                f"({self.verify['epochs']} epochs) took {total_transfer:.1f} s; "
                "accuracy on the target test set.",
                "",
                "Rank correlation of each score with the accuracy:",
            ]
            corr = [["score", "Kendall tau", "p-value", "weighted tau"]]
            for name in SCORE_NAMES:
                c = self.correlations[name]
                corr.append(
                    [
                        SCORE_LABELS[name],
                        _fmt(c.kendall_tau, 3),
                        _fmt(c.kendall_p, 3),
                        _fmt(c.weighted_tau, 3),
                    ]
                )
            lines += _align(corr, left={0})
        return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _align(table: list[list[str]], *, left: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _ranks(values: Sequence[float]) -> list[int]:
    """Rank 1 for the highest value; ties share the best rank; NaN ranks last."""
    keyed = np.asarray([v if math.isfinite(v) else -np.inf for v in values], np.float64)
    return [int(r) for r in scipy.stats.rankdata(-keyed, method="min")]


def _task_info(task: Task, view: TaskArrays) -> dict[str, Any]:
    classes = getattr(task, "classes", None)
    return {
        "name": getattr(task, "name", None),
        "dataset": getattr(task, "dataset", None),
        "classes": None if classes is None else [int(c) for c in classes],
        "num_classes": int(task.num_classes),
        "num_train": int(view.train_labels.shape[0]),
        "num_test": int(view.test_labels.shape[0]),
        "seed": getattr(task, "seed", None),
    }


# ----------------------------------------------------------------------------- ranking


def rank_models(
    models: Mapping[str, nnx.Module],
    task: Task,
    *,
    metric: ScoreName = "leep",
    verify: bool = False,
    verify_method: VerifyMethod = "fine_tune",
    verify_epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    match_input_channels: bool = True,
    zoo_strategy: ZooStrategy = "auto",
    progress: bool = False,
) -> RankResult:
    """Scores every model on the task's training set and ranks them.

    Each model sees the target training images once (`leep_jax.models.zoo_scores`):
    every score of ``SCORE_NAMES`` is computed, LEEP and NCE from its logits and the
    others from its features.

    Args:
      models: name -> source model (`leep_jax.models` contract). Models are put in
        eval mode; their parameters are never changed (verify trains copies).
      task: the target task (`leep_jax.data.TargetTask` or the same attributes).
      metric: the score to rank by, one of ``SCORE_NAMES`` (``"leep"``, ``"nce"``, ...).
      verify: also transfer every model to the task and correlate scores with the
        test accuracy reached.
      verify_method: ``"fine_tune"`` (all layers) or ``"retrain_head"`` (linear probe).
      verify_epochs: epochs of each transfer run.
      batch_size: images per forward call when scoring.
      seed: seeds the transfer runs.
      match_input_channels: give each model the task's images in its own channel
        count (``model.in_channels``; grey <-> RGB by `match_channels`), so grey
        targets rank RGB models and vice versa.
      zoo_strategy: how `score_zoo` runs models of one architecture: ``"loop"``,
        ``"vmap"`` (stacked weights, one vmapped pass), or ``"auto"`` (the path
        measured faster on this backend).
      progress: show tqdm progress bars (on stderr).

    Returns:
      The `RankResult`, rows best first.

    Raises:
      ValueError: no models, an unknown metric or verify method, a model that rejects
        the task's images (e.g. another channel count), or a bad task.
    """
    if not models:
        raise ValueError("no models to rank")
    if metric not in SCORE_NAMES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(SCORE_NAMES)}")
    if verify and verify_method not in VERIFY_METHODS:
        raise ValueError(
            f"unknown verify method {verify_method!r}; expected one of {', '.join(VERIFY_METHODS)}"
        )
    num_classes = int(task.num_classes)
    # TargetTask gathers images on every access: read them once (per channel count).
    views = {None: TaskArrays.of(task)}

    def view_for(name: str) -> TaskArrays:
        in_channels = getattr(models[name], "in_channels", None) if match_input_channels else None
        if in_channels not in views:
            try:
                views[in_channels] = views[None].with_channels(in_channels)
            except ValueError as error:
                raise ValueError(f"model {name!r}: {error}") from error
        return views[in_channels]

    names = list(models)
    scores, times = {}, {}
    by_view: dict[int, tuple[TaskArrays, list[str]]] = {}
    for name in names:
        view = view_for(name)
        by_view.setdefault(id(view), (view, []))[1].append(name)
    bar = tqdm(total=len(names), desc="scoring", unit="model", disable=not progress)
    for view, group in by_view.values():
        results = score_zoo(
            {name: models[name] for name in group},
            view.train_images,
            view.train_labels,
            num_classes,
            batch_size=batch_size,
            strategy=zoo_strategy,
            metrics=SCORE_NAMES,
            on_scored=lambda _: bar.update(1),
        )
        for name, result in results.items():
            times[name] = result["seconds"]
            scores[name] = {s: result[s] for s in SCORE_NAMES}
    bar.close()
    widths = {name: int(models[name].num_classes) for name in names}

    accuracies: dict[str, float] = {}
    transfer_times: dict[str, float] = {}
    if verify:
        transfer = fine_tune if verify_method == "fine_tune" else retrain_head
        bar = tqdm(names, desc=verify_method.replace("_", "-"), unit="model", disable=not progress)
        for name in bar:
            outcome = transfer(
                models[name], view_for(name), epochs=verify_epochs, seed=seed, progress=progress
            )
            accuracies[name] = outcome.test_accuracy
            transfer_times[name] = outcome.wall_time_s

    ranks = {
        s: dict(zip(names, _ranks([scores[n][s] for n in names]), strict=True)) for s in SCORE_NAMES
    }
    rows = [
        RankRow(
            name=name,
            architecture=getattr(models[name], "name", type(models[name]).__name__),
            num_source_classes=widths[name],
            scores=scores[name],
            ranks={s: ranks[s][name] for s in SCORE_NAMES},
            rank=ranks[metric][name],
            score_time_s=times[name],
            accuracy=accuracies.get(name),
            transfer_time_s=transfer_times.get(name),
        )
        for name in names
    ]
    rows.sort(key=lambda row: (row.rank, row.name))
    correlations = None
    if verify:
        accuracy_list = [accuracies[n] for n in names]
        correlations = {
            s: Correlation.between([scores[n][s] for n in names], accuracy_list)
            for s in SCORE_NAMES
        }
    return RankResult(
        task=_task_info(task, views[None]),
        metric=metric,
        rows=tuple(rows),
        verify={"method": verify_method, "epochs": verify_epochs} if verify else None,
        correlations=correlations,
        score_time_s=float(sum(times.values())),
    )
