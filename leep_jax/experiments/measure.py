"""What the experiment measures on one target task: scores and transfer accuracies.

`task_row` makes one typed RQ1-RQ3 row (`TaskRow`): every score of the library from
the source model's cached pool outputs (`task_scores`), then head re-training on the
cached features (`leep_jax.transfer.train_head`: the second half of `retrain_head`,
whose first half, the forward pass, the pool already did), fine-tuning and training
from scratch for a fixed number of SGD steps, each run flagged when it ends at chance
(`at_chance`). `rq4_row` makes one RQ4 row (`Rq4Row`): the same scores, a
k-nearest-neighbour baseline, head re-training and fine-tuning for one zoo model.
`validation_run` is one run of the learning-rate search
(`leep_jax.experiments.learning_rates`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.stats
from flax import nnx

from leep_jax.data.tasks import TargetTask
from leep_jax.experiments.config import (
    ExperimentConfig,
    derive_seed,
    head_recipe,
    transfer_recipe,
)
from leep_jax.experiments.pools import PoolOutputs
from leep_jax.experiments.rows import Rq4Row, TaskRow
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.streaming import engine, sources
from leep_jax.transfer.methods import fine_tune, train_from_scratch, train_head
from leep_jax.transfer.train import evaluate

__all__ = [
    "at_chance",
    "knn_accuracy",
    "rq4_row",
    "task_row",
    "task_scores",
    "validation_run",
]


def _bucket(n: int) -> int:
    return max(64, 1 << (n - 1).bit_length())


# NLEEP fits ``components_per_class * num_classes`` mixture components, so a class
# count above the task's changes it; every other score ignores classes absent from the
# labels (tested), so they may be compiled for a pool's class count once.
_CLASS_COUNT_DEPENDENT = ("nleep",)


def task_scores(
    logits: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    pad_to: int | None = None,
    compile_classes: int | None = None,
) -> dict[str, float]:
    """Every score of the library (`SCORE_NAMES`) for one task.

    Through the scoring engine, jitted per shape and class count. Rows are padded (and
    masked out) to ``pad_to`` rows, or the next power of two, and every score but
    NLEEP is computed with ``compile_classes`` classes (>= Y) when given: classes
    absent from the labels change none of them, so both give exactly the task's scores
    while one compilation serves every task of a pool. NLEEP, whose mixture has a
    component count per class, always takes Y.

    Args:
      logits: ``[n, num_source_classes]`` source logits of the task's training examples.
      features: ``[n, feature_dim]`` their penultimate features.
      labels: ``int[n]`` target labels in ``[0, num_classes)``.
      num_classes: Y.
      pad_to: rows to pad to (>= n); default the next power of two (at least 64).
      compile_classes: the class count of the class-count-free scores (default Y).

    Returns:
      ``{score name: value}`` for every name of `SCORE_NAMES`.
    """
    n = labels.shape[0]
    size = _bucket(n) if pad_to is None else pad_to
    if size < n:
        raise ValueError(f"pad_to={pad_to} is smaller than the {n} rows")
    wide = num_classes if compile_classes is None else compile_classes
    if wide < num_classes:
        raise ValueError(f"compile_classes={wide} is below the task's {num_classes} classes")

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)])

    mask = np.arange(size) < n
    arrays = {"predictions": pad(np.asarray(logits)), "features": pad(np.asarray(features))}
    labels_p = pad(np.asarray(labels, np.int32))

    def run(classes: int, names: tuple[str, ...]) -> dict[str, float]:
        return engine.run(
            lambda second_pass=False: sources.array_batches(
                arrays, labels_p, classes, size, mask=mask
            ),
            classes,
            names,
        ).scores

    free = tuple(s for s in SCORE_NAMES if s not in _CLASS_COUNT_DEPENDENT)
    scores = run(wide, free) | run(num_classes, _CLASS_COUNT_DEPENDENT)
    return {name: scores[name] for name in SCORE_NAMES}


def _pool_scores(task: TargetTask, outputs: PoolOutputs) -> tuple[dict[str, float], np.ndarray]:
    """The task's scores from the pool's cached outputs (one compilation per pool and
    class count)."""
    features = outputs.train_features[task.train_indices]
    scores = task_scores(
        outputs.train_logits[task.train_indices],
        features,
        task.train_labels,
        task.num_classes,
        pad_to=_bucket(outputs.train_logits.shape[0]),
        compile_classes=max(task.num_classes, outputs.num_pool_classes),
    )
    return scores, features


def _scores_and_head(
    task: TargetTask,
    outputs: PoolOutputs,
    config: ExperimentConfig,
    seed: int,
    timings: dict[str, float],
) -> tuple[dict[str, float], float, int]:
    """The task's scores, and the test accuracy and steps of a linear head trained on its
    cached features; their seconds go to ``timings``."""
    start = time.perf_counter()
    scores, train_features = _pool_scores(task, outputs)
    timings["scores_s"] = time.perf_counter() - start
    start = time.perf_counter()
    head, history = train_head(
        train_features, task.train_labels, task.num_classes, head_recipe(config, seed)
    )
    test_features = outputs.test_features[task.test_indices]
    accuracy = evaluate(head, test_features, task.test_labels, batch_size=config.eval_batch_size)
    timings["retrain_head_s"] = time.perf_counter() - start
    return scores, accuracy, history.num_steps


def _task_fields(task: TargetTask) -> dict[str, Any]:
    """The row fields both row types take from the task."""
    return {
        "classes": tuple(task.classes),
        "num_classes": task.num_classes,
        "n_train": int(task.train_indices.size),
        "n_test": int(task.test_indices.size),
    }


def at_chance(accuracy: float, test_labels: np.ndarray, alpha: float) -> bool:
    """Whether ``accuracy`` on ``test_labels`` is no better than chance.

    Chance is always predicting the test set's most frequent class; the run is at
    chance when a one-sided binomial test of its correct predictions against that
    rate does not reject at level ``alpha``.
    """
    labels = np.asarray(test_labels)
    n = labels.size
    majority = np.bincount(labels).max() / n
    correct = round(accuracy * n)
    return bool(scipy.stats.binomtest(correct, n, majority, alternative="greater").pvalue > alpha)


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int,
) -> float:
    """Test accuracy of a k-nearest-neighbour classifier (Euclidean) on the features."""
    from sklearn.neighbors import KNeighborsClassifier  # the experiments extra

    classifier = KNeighborsClassifier(n_neighbors=min(k, len(train_labels)))
    classifier.fit(np.asarray(train_features, np.float64), train_labels)
    return float(classifier.score(np.asarray(test_features, np.float64), test_labels))


def _flags(config: ExperimentConfig, task: TargetTask, accuracy: dict[str, float]):
    return {m: at_chance(a, task.test_labels, config.chance_alpha) for m, a in accuracy.items()}


def task_row(
    task: TargetTask,
    ident: str,
    pair: str,
    regime: str,
    index: int,
    outputs: PoolOutputs,
    source_model: nnx.Module,
    learning_rates: dict[str, float],
    config: ExperimentConfig,
    session: int,
) -> TaskRow:
    """One RQ1-RQ3 row: every score and the three methods' accuracies on ``task``.

    Args:
      task: a task of the pair's pool.
      ident: its id (`leep_jax.experiments.pools.task_id`); seeds the training runs.
      pair: the pair's name.
      regime: the task's regime.
      index: the task's index within the pair and regime.
      outputs: the source model's outputs over the pool.
      source_model: the pair's source model (fine-tuned copies are trained).
      learning_rates: the pair's chosen peak learning rate of ``fine_tune`` and of
        ``train_from_scratch``.
      config: the experiment's configuration.
      session: the current session's index.
    """
    seed = derive_seed(config.seed, ident)
    timings: dict[str, float] = {}
    scores, head_accuracy, head_steps = _scores_and_head(task, outputs, config, seed, timings)

    def recipe(method: str):
        lr = learning_rates[method]
        return transfer_recipe(config, task.dataset, config.train_steps, lr, seed)

    tuned = fine_tune(source_model, task, recipe("fine_tune"))
    timings["fine_tune_s"] = tuned.wall_time_s
    scratch = train_from_scratch(
        config.architecture,
        task,
        recipe("train_from_scratch"),
        model_kwargs=dict(config.model_kwargs),
    )
    timings["scratch_s"] = scratch.wall_time_s
    timings["compile_s"] = tuned.compile_time_s + scratch.compile_time_s
    accuracy = {
        "retrain_head": head_accuracy,
        "fine_tune": tuned.test_accuracy,
        "train_from_scratch": scratch.test_accuracy,
    }
    return TaskRow(
        id=ident,
        pair=pair,
        regime=regime,
        task_index=index,
        **_task_fields(task),
        class_counts=tuple(task.train_class_counts.tolist()),
        num_noisy_labels=task.num_noisy_labels,
        scores=scores,
        accuracy=accuracy,
        curves={
            "fine_tune": tuned.test_accuracy_curve,
            "train_from_scratch": scratch.test_accuracy_curve,
        },
        steps={
            "retrain_head": head_steps,
            "fine_tune": tuned.num_steps,
            "train_from_scratch": scratch.num_steps,
        },
        at_chance=_flags(config, task, accuracy),
        timings=timings,
        session=session,
    )


def rq4_row(
    task: TargetTask,
    ident: str,
    target: str,
    index: int,
    model_name: str,
    model: nnx.Module,
    outputs: PoolOutputs,
    learning_rate: float,
    config: ExperimentConfig,
    session: int,
) -> Rq4Row:
    """One RQ4 row: the scores of zoo model ``model`` on ``task``, the kNN baseline on
    its features, and its accuracies (fine-tuning at RQ4's chosen ``learning_rate``).

    The training seed depends on the task only, so every model of the zoo is
    transferred with the same data order.
    """
    seed = derive_seed(config.seed, "rq4", target, index)
    timings: dict[str, float] = {}
    scores, head_accuracy, _ = _scores_and_head(task, outputs, config, seed, timings)
    start = time.perf_counter()
    knn = knn_accuracy(
        outputs.train_features[task.train_indices],
        task.train_labels,
        outputs.test_features[task.test_indices],
        task.test_labels,
        config.knn_neighbors,
    )
    timings["knn_s"] = time.perf_counter() - start
    tuned = fine_tune(
        model,
        task,
        transfer_recipe(config, task.dataset, config.rq4_train_steps, learning_rate, seed),
    )
    timings["fine_tune_s"] = tuned.wall_time_s
    accuracy = {"retrain_head": head_accuracy, "fine_tune": tuned.test_accuracy}
    return Rq4Row(
        id=ident,
        target=target,
        task_index=index,
        model=model_name,
        **_task_fields(task),
        scores=scores,
        knn_accuracy=knn,
        accuracy=accuracy,
        at_chance=_flags(config, task, accuracy),
        timings=timings,
        session=session,
    )


def validation_run(
    method: str,
    task: TargetTask,
    ident: str,
    learning_rate: float,
    steps: int,
    config: ExperimentConfig,
    *,
    source_model: nnx.Module | None = None,
) -> float:
    """Validation accuracy of one learning-rate trial: ``method`` (``fine_tune`` of
    ``source_model``, or ``train_from_scratch`` of ``config.architecture``) on a
    validation task, with the recipe the experiment uses."""
    recipe = transfer_recipe(
        config, task.dataset, steps, learning_rate, derive_seed(config.seed, ident)
    )
    if method == "fine_tune":
        if source_model is None:
            raise ValueError("fine_tune needs a source model")
        return fine_tune(source_model, task, recipe).test_accuracy
    if method == "train_from_scratch":
        return train_from_scratch(
            config.architecture, task, recipe, model_kwargs=dict(config.model_kwargs)
        ).test_accuracy
    raise ValueError(f"no learning rate is chosen for method {method!r}")
