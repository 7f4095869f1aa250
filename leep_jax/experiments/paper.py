"""The LEEP paper's experiments (Nguyen et al., ICML 2020, Sec. 5), offline and resumable.

What `run_experiment` does, for each source -> target pair (`parse_pair`):

* **Source model**: a ResNet20 (by default) trained on the source dataset or class set
  (`leep_jax.transfer.zoo.train_source_model`, cached under the cache dir).
* **Target pool**: the target dataset (or class set), at most ``large_per_class``
  training and ``test_per_class`` test examples per class (CIFAR100, the paper's
  target, has 500 training examples per class). The source model's logits and
  penultimate features over the whole pool are computed ONCE and every task reuses
  them, since tasks are index subsets of the pool.
* **RQ1 / RQ3** (paper Sec. 5.1-5.3): random target tasks (2..``max_classes`` classes
  from the pool, `leep_jax.data.sample_tasks`) in four regimes: ``large_balanced`` (all
  pool examples of the chosen classes), ``small_balanced`` (at most
  ``small_per_class``), ``small_imbalanced`` (geometric class sizes with
  largest/smallest = ``imbalance_ratio``) and ``small_noisy`` (``noise_rate`` of the
  training labels flipped; test labels clean). Per task: LEEP, NCE and H-score from the
  cached outputs; the test accuracy of head re-training (a new linear head trained on
  the cached features: the recipe of `leep_jax.transfer.methods.retrain_head`),
  fine-tuning and training from scratch (`fine_tune`, `train_from_scratch`), with
  per-epoch test-accuracy curves.
* **RQ2** (convergence): the correlation of each score with the fine-tuned accuracy
  after each epoch, and with the gain of fine-tuning over training from scratch after
  the same number of steps (same epochs, batch size and data).
* **RQ4** (source selection): a zoo of source models (`leep_jax.transfer.zoo`) scored
  on tasks of each pair's target pool and fine-tuned on every one; Kendall's tau and
  weighted tau (`scipy.stats.weightedtau`, defaults) of each score with the accuracy,
  and how often each score picks the best model.

Everything is seeded (tasks by `numpy.random.SeedSequence`, training by the seeds the
transfer methods take), so the same configuration gives the same numbers.

Results go to ``OUT/results.json``, rewritten atomically (temporary file +
``os.replace``) after every task, so an interrupted run loses nothing; running again
with the same ``OUT`` skips the tasks already done (keyed by deterministic task ids)
and refuses to continue if the configuration differs. ``OUT/report.md`` and PNG figures
come from `leep_jax.experiments.report`.

Pairs are written ``SOURCE->TARGET`` (or ``SOURCE:TARGET``), each side a dataset name
with an optional class set: ``fashion_mnist[0-4]->fashion_mnist[5-9]``,
``fashion_mnist->digits``, ``tfds:cifar10->tfds:cifar100`` (also
``tfds:cifar10:tfds:cifar100``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import platform
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from leep_jax.data import dataset_num_classes, load_dataset, sample_tasks
from leep_jax.data.task import match_channels
from leep_jax.data.tasks import TargetTask
from leep_jax.experiments import report
from leep_jax.scores import h_score, leep, nce
from leep_jax.transfer.methods import fine_tune, train_from_scratch
from leep_jax.transfer.presets import default_zoo, quick_zoo
from leep_jax.transfer.train import TrainConfig, evaluate, fit, predict
from leep_jax.transfer.zoo import SourceSpec, source_metadata, train_source_model

__all__ = [
    "METRICS",
    "REGIMES",
    "ConfigMismatchError",
    "DatasetSlice",
    "ExperimentConfig",
    "Pair",
    "parse_pair",
    "quick_zoo",
    "run_experiment",
    "source_spec",
]

REGIMES = ("large_balanced", "small_balanced", "small_imbalanced", "small_noisy")
METRICS = ("leep", "nce", "h_score")
METHODS = ("retrain_head", "fine_tune", "scratch")
PROTOCOL_VERSION = 1
RESULTS_FILE = "results.json"

DEFAULT_PAIRS = ("fashion_mnist[0-4]->fashion_mnist[5-9]", "fashion_mnist->digits")


class ConfigMismatchError(ValueError):
    """``OUT/results.json`` was written by a run with another configuration."""


# ---------------------------------------------------------------------------- pairs


@dataclasses.dataclass(frozen=True)
class DatasetSlice:
    """A dataset, or a set of its classes.

    Attributes:
      dataset: a `leep_jax.data.load_dataset` name (``fashion_mnist``, ``digits``,
        ``tfds:<name>``).
      classes: sorted class ids, or None for all classes of the dataset.
    """

    dataset: str
    classes: tuple[int, ...] | None = None

    def __str__(self) -> str:
        if self.classes is None:
            return self.dataset
        return f"{self.dataset}[{_format_classes(self.classes)}]"

    def class_ids(self) -> tuple[int, ...]:
        """The class ids (all of the dataset's when ``classes`` is None)."""
        if self.classes is not None:
            return self.classes
        return tuple(range(dataset_num_classes(self.dataset)))


@dataclasses.dataclass(frozen=True)
class Pair:
    """A source -> target pair: the source model's training data and the target pool."""

    source: DatasetSlice
    target: DatasetSlice

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


def _format_classes(classes: Sequence[int]) -> str:
    """``(0, 1, 2, 4)`` -> ``"0-2,4"`` (runs of consecutive ids become ranges)."""
    parts, start = [], None
    for i, c in enumerate(classes):
        if start is None:
            start = c
        if i + 1 == len(classes) or classes[i + 1] != c + 1:
            parts.append(str(c) if c == start else f"{start}-{c}")
            start = None
    return ",".join(parts)


_SLICE = re.compile(r"^(?P<dataset>[A-Za-z0-9_.:/-]+?)(?:\[(?P<classes>[^\]]*)\])?$")
_PAIR_HELP = (
    "expected SOURCE->TARGET (or SOURCE:TARGET), each a dataset (fashion_mnist, digits, "
    "tfds:NAME) with optional classes, e.g. 'fashion_mnist[0-4]->fashion_mnist[5-9]' "
    "or 'tfds:cifar10:tfds:cifar100'"
)


def _parse_classes(text: str, where: str) -> tuple[int, ...]:
    classes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(
                f"bad pair {where!r}: bad class list {text!r} (use ids and ranges, e.g. 0-4,7)"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"bad pair {where!r}: bad class range {part!r}")
        classes.extend(range(low, high + 1))
    if len(set(classes)) != len(classes):
        raise ValueError(f"bad pair {where!r}: repeated classes")
    return tuple(sorted(classes))


def _parse_slice(text: str, pair_text: str) -> DatasetSlice:
    match = _SLICE.match(text.strip())
    if not match or not match["dataset"]:
        raise ValueError(f"bad pair {pair_text!r}: {_PAIR_HELP}")
    dataset = match["dataset"]
    if dataset.startswith("tfds:"):
        if not dataset[len("tfds:") :]:
            raise ValueError(f"bad pair {pair_text!r}: give a TFDS name after 'tfds:'")
    elif dataset not in ("fashion_mnist", "digits"):
        raise ValueError(
            f"bad pair {pair_text!r}: unknown dataset {dataset!r} (expected fashion_mnist, "
            "digits or tfds:NAME)"
        )
    classes = None
    if match["classes"] is not None:
        classes = _parse_classes(match["classes"], pair_text)
        if len(classes) < 2:
            raise ValueError(f"bad pair {pair_text!r}: {dataset} needs at least 2 classes")
        if not dataset.startswith("tfds:"):  # TFDS class counts need TensorFlow: checked later
            total = dataset_num_classes(dataset)
            if classes[-1] >= total:
                raise ValueError(
                    f"bad pair {pair_text!r}: class {classes[-1]} out of range for {dataset} "
                    f"(0..{total - 1})"
                )
    return DatasetSlice(dataset, classes)


def _split_pair(text: str) -> tuple[str, str]:
    if "->" in text:
        parts = text.split("->")
        if len(parts) != 2:
            raise ValueError(f"bad pair {text!r}: {_PAIR_HELP}")
        return parts[0], parts[1]
    # SOURCE:TARGET, where a "tfds" token joins the name after it (tfds:cifar10).
    tokens = text.split(":")
    sides: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "tfds" and i + 1 < len(tokens):
            sides.append(f"tfds:{tokens[i + 1]}")
            i += 2
        else:
            sides.append(tokens[i])
            i += 1
    if len(sides) != 2:
        raise ValueError(f"bad pair {text!r}: {_PAIR_HELP}")
    return sides[0], sides[1]


def parse_pair(text: str) -> Pair:
    """Parses ``SOURCE->TARGET`` (or ``SOURCE:TARGET``).

    Each side is ``DATASET`` or ``DATASET[CLASSES]``; DATASET is ``fashion_mnist``,
    ``digits`` or ``tfds:NAME``; CLASSES are ids and ranges (``0-4``, ``0,2,4``,
    ``0-2,7``). In the colon form a ``tfds`` token joins the name after it, so
    ``tfds:cifar10:tfds:cifar100`` is CIFAR10 -> CIFAR100.

    Raises:
      ValueError: a malformed pair, an unknown dataset or classes out of range (TFDS
        class ranges are checked when the data is loaded).

    Examples:
      >>> str(parse_pair("fashion_mnist[0,1,2,3,4]:fashion_mnist[5-9]"))
      'fashion_mnist[0-4]->fashion_mnist[5-9]'
      >>> str(parse_pair("tfds:cifar10:tfds:cifar100"))
      'tfds:cifar10->tfds:cifar100'
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"bad pair {text!r}: {_PAIR_HELP}")
    source, target = _split_pair(text.strip())
    return Pair(_parse_slice(source, text), _parse_slice(target, text))


# --------------------------------------------------------------------------- config


def _augmentation(dataset: str) -> dict[str, Any]:
    # Natural images (TFDS: CIFAR, ImageNet) take the CIFAR recipe's crops and flips;
    # flipping is wrong for digits, and FashionMNIST is kept like them.
    if dataset.startswith("tfds:"):
        return {"crop_padding": 4, "flip": True}
    return {"crop_padding": 2, "flip": False}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines an experiment's numbers (stored in results.json).

    Use `ExperimentConfig.quick` or `ExperimentConfig.full`, or build a smaller one
    (tests) with `dataclasses.replace`.

    Attributes:
      mode: a label (``"quick"``, ``"full"``, ``"custom"``).
      seed: base seed of tasks, training and source models.
      pairs: ``SOURCE->TARGET`` strings (see `parse_pair`), normalised.
      architecture: source (and from-scratch) architecture, a `build_model` name.
      model_kwargs: its extra constructor arguments (e.g. ``{"width": 2}``).
      source_train_examples: random training examples for the source model (None: all
        examples of the source classes).
      source_epochs: source training epochs.
      source_batch_size: source training batch size.
      source_test_examples: test examples scoring the source model's own accuracy.
      tasks_per_regime: ``{regime: number of target tasks}`` per pair (regimes not
        listed are not run).
      max_classes: at most this many classes per task (None: the whole pool); tasks draw
        their class count uniformly from 2..max_classes.
      large_per_class: at most this many training examples per class in the target
        pool, i.e. in the large regime (None: all).
      test_per_class: at most this many test examples per class in the target pool.
      small_per_class: per-class cap of the small regimes.
      imbalance_ratio: largest/smallest class size in ``small_imbalanced``.
      noise_rate: share of flipped training labels in ``small_noisy``.
      epochs: ``{regime: epochs}`` of fine-tuning and of training from scratch.
      batch_size: batch size of head re-training, fine-tuning and scratch training.
      fine_tune_lr: peak learning rate of fine-tuning (by default the same as from
        scratch, as in `leep_jax.transfer.methods`, so the two compare like for like).
      scratch_lr: peak learning rate of training from scratch.
      head_lr: peak learning rate of head re-training.
      head_epochs: epochs of head re-training (on cached features: cheap).
      weight_decay: L2 coefficient on kernels (all methods).
      eval_batch_size: batch size of forward passes and evaluation.
      zoo: RQ4's source models (`SourceSpec`); empty skips RQ4.
      rq4_tasks: RQ4 target tasks per distinct target pool.
      rq4_num_classes: classes per RQ4 task (capped by the pool size).
      rq4_epochs: fine-tuning epochs of RQ4.
    """

    mode: str = "custom"
    seed: int = 0
    pairs: tuple[str, ...] = DEFAULT_PAIRS
    architecture: str = "resnet20"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source_train_examples: int | None = None
    source_epochs: int = 3
    source_batch_size: int = 128
    source_test_examples: int | None = 2000
    tasks_per_regime: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(REGIMES, 100)
    )
    max_classes: int | None = None
    large_per_class: int | None = 200
    test_per_class: int | None = 100
    small_per_class: int = 50
    imbalance_ratio: float = 5.0
    noise_rate: float = 0.2
    epochs: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {
            "large_balanced": 4,
            "small_balanced": 6,
            "small_imbalanced": 6,
            "small_noisy": 6,
        }
    )
    batch_size: int = 64
    fine_tune_lr: float = 0.05
    scratch_lr: float = 0.05
    head_lr: float = 0.1
    head_epochs: int = 30
    weight_decay: float = 5e-4
    eval_batch_size: int = 128
    zoo: tuple[SourceSpec, ...] = ()
    rq4_tasks: int = 10
    rq4_num_classes: int = 4
    rq4_epochs: int = 4

    def __post_init__(self):
        pairs = tuple(str(parse_pair(p)) for p in self.pairs)
        if not pairs:
            raise ValueError("give at least one source->target pair")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"repeated pairs: {pairs}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "zoo", tuple(self.zoo))
        tasks = {r: int(n) for r, n in self.tasks_per_regime.items()}
        unknown = sorted(set(tasks) - set(REGIMES))
        if unknown:
            raise ValueError(f"unknown regimes {unknown}; expected some of {REGIMES}")
        if not tasks or any(n < 1 for n in tasks.values()):
            raise ValueError(f"tasks_per_regime needs positive counts, got {tasks}")
        # Canonical regime order, so equal configs serialise equally.
        object.__setattr__(self, "tasks_per_regime", {r: tasks[r] for r in REGIMES if r in tasks})
        missing = [r for r in tasks if r not in self.epochs]
        if missing:
            raise ValueError(f"epochs has no entry for regimes {missing}")
        object.__setattr__(self, "epochs", {r: int(self.epochs[r]) for r in self.tasks_per_regime})
        if any(e < 1 for e in self.epochs.values()) or min(self.head_epochs, self.rq4_epochs) < 1:
            raise ValueError("epochs must be >= 1")
        if self.max_classes is not None and self.max_classes < 2:
            raise ValueError(f"max_classes must be >= 2 or None, got {self.max_classes}")
        if self.rq4_num_classes < 2:
            raise ValueError(f"rq4_num_classes must be >= 2, got {self.rq4_num_classes}")
        names = [spec.name for spec in self.zoo]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate zoo model names: {names}")

    @classmethod
    def quick(cls, *, seed: int = 0, pairs: Sequence[str] | None = None) -> ExperimentConfig:
        """The quick configuration: a smoke test on real data, minutes on a 2-core CPU.

        Same protocol as `full`, scaled down: a briefly trained ResNet20, tiny tasks
        (at most 4 classes), 12 large-regime tasks and 3 of each small regime per pair,
        2-3 epochs of fine-tuning, a zoo of five small CNNs for RQ4. Its correlations
        rest on few tasks: a smoke test, not a result.
        """
        return cls(
            mode="quick",
            seed=seed,
            pairs=tuple(pairs or DEFAULT_PAIRS),
            source_train_examples=1000,
            source_epochs=2,
            source_batch_size=64,
            source_test_examples=500,
            tasks_per_regime={
                "large_balanced": 12,
                "small_balanced": 3,
                "small_imbalanced": 3,
                "small_noisy": 3,
            },
            max_classes=4,
            large_per_class=40,
            test_per_class=20,
            small_per_class=12,
            imbalance_ratio=4.0,
            epochs={
                "large_balanced": 2,
                "small_balanced": 3,
                "small_imbalanced": 3,
                "small_noisy": 3,
            },
            batch_size=32,
            head_epochs=15,
            eval_batch_size=64,
            zoo=tuple(quick_zoo()),
            rq4_tasks=3,
            rq4_num_classes=3,
            rq4_epochs=2,
        )

    @classmethod
    def full(cls, *, seed: int = 0, pairs: Sequence[str] | None = None) -> ExperimentConfig:
        """The full configuration, a few hours on a 2-core CPU (resumable).

        Per pair: a ResNet20 source trained on all source examples for 3 epochs; a
        target pool of at most 200 training and 100 test examples per class; 100
        large-regime tasks and 30 of each small regime (at most 50 examples per class);
        4 epochs of fine-tuning and of training from scratch on large tasks, 6 on small
        ones. RQ4 ranks `default_zoo` (7 models) on 10 tasks of 4 classes per target.
        """
        return cls(
            mode="full",
            seed=seed,
            pairs=tuple(pairs or DEFAULT_PAIRS),
            architecture="resnet20",
            source_train_examples=None,
            source_epochs=3,
            source_batch_size=128,
            source_test_examples=2000,
            tasks_per_regime={
                "large_balanced": 100,
                "small_balanced": 30,
                "small_imbalanced": 30,
                "small_noisy": 30,
            },
            max_classes=None,
            large_per_class=200,
            test_per_class=100,
            small_per_class=50,
            imbalance_ratio=5.0,
            noise_rate=0.2,
            epochs={
                "large_balanced": 4,
                "small_balanced": 6,
                "small_imbalanced": 6,
                "small_noisy": 6,
            },
            batch_size=64,
            head_epochs=30,
            eval_batch_size=128,
            zoo=tuple(default_zoo()),
            rq4_tasks=10,
            rq4_num_classes=4,
            rq4_epochs=4,
        )

    @property
    def parsed_pairs(self) -> tuple[Pair, ...]:
        return tuple(parse_pair(p) for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, normalised: what results.json stores and resume compares."""
        record = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "zoo"
        }
        record["zoo"] = [spec.to_dict() for spec in self.zoo]
        record["protocol_version"] = PROTOCOL_VERSION
        record["sources"] = {
            pair: source_spec(self, parse_pair(pair).source).to_dict() for pair in self.pairs
        }
        return json.loads(json.dumps(record))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def source_spec(config: ExperimentConfig, source: DatasetSlice) -> SourceSpec:
    """The `SourceSpec` of a pair's source model under ``config``.

    The name encodes everything that changes the weights, so different budgets or
    seeds never share a cache entry.
    """
    classes = source.classes
    if classes is None:
        classes = source.class_ids()
    width = "".join(f"-{k}{v}" for k, v in sorted(config.model_kwargs.items()))
    examples = "all" if config.source_train_examples is None else config.source_train_examples
    name = _slug(
        f"paper-{config.architecture}{width}-{source}-n{examples}-e{config.source_epochs}"
        f"-b{config.source_batch_size}-s{config.seed}"
    )
    return SourceSpec(
        name=name,
        architecture=config.architecture,
        classes=classes,
        model_kwargs=dict(config.model_kwargs),
        dataset=source.dataset,
        train_examples=config.source_train_examples,
        test_examples=config.source_test_examples,
        epochs=config.source_epochs,
        batch_size=config.source_batch_size,
        seed=config.seed,
        **_augmentation(source.dataset),
    )


def _seed(*parts: Any) -> int:
    """A deterministic 63-bit seed from the base seed and names (stable across runs)."""
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------- target pools


@dataclasses.dataclass
class _Pool:
    """A target pool: capped per-class subsets of a dataset's splits, channel-matched."""

    target: DatasetSlice
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    def with_channels(self, channels: int) -> _Pool:
        if self.train[0].shape[-1] == channels:
            return self
        return _Pool(
            self.target,
            (match_channels(self.train[0], channels), self.train[1]),
            (match_channels(self.test[0], channels), self.test[1]),
        )


def _capped_rows(
    labels: np.ndarray, classes: Sequence[int], cap: int | None, rng: np.random.Generator
) -> np.ndarray:
    rows = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if pool.size == 0:
            raise ValueError(f"class {c} has no examples")
        if cap is not None and pool.size > cap:
            pool = np.sort(rng.choice(pool, size=cap, replace=False))
        rows.append(pool)
    return np.sort(np.concatenate(rows))


def _load_pool(target: DatasetSlice, config: ExperimentConfig) -> _Pool:
    classes = target.class_ids()
    total = dataset_num_classes(target.dataset)
    if classes[-1] >= total:
        raise ValueError(f"class {classes[-1]} out of range for {target.dataset} (0..{total - 1})")
    rng = np.random.default_rng(_seed(config.seed, "pool", target))
    splits = []
    for split, cap in (("train", config.large_per_class), ("test", config.test_per_class)):
        images, labels = load_dataset(target.dataset, split)
        rows = _capped_rows(np.asarray(labels), classes, cap, rng)
        splits.append((np.asarray(images)[rows], np.asarray(labels)[rows]))
    return _Pool(target, splits[0], splits[1])


def _regime_kwargs(regime: str, config: ExperimentConfig) -> dict[str, Any]:
    if regime == "large_balanced":
        return {"regime": "large"}
    kwargs: dict[str, Any] = {"regime": "small", "max_per_class": config.small_per_class}
    if regime == "small_imbalanced":
        kwargs["imbalance_ratio"] = config.imbalance_ratio
    elif regime == "small_noisy":
        kwargs["noise_rate"] = config.noise_rate
    return kwargs


def _pair_tasks(pool: _Pool, pair: str, regime: str, config: ExperimentConfig) -> list[TargetTask]:
    classes = pool.target.class_ids()
    max_classes = len(classes) if config.max_classes is None else config.max_classes
    return sample_tasks(
        pool.train,
        pool.test,
        class_pool=classes,
        num_tasks=config.tasks_per_regime[regime],
        seed=_seed(config.seed, pair, regime),
        min_classes=2,
        max_classes=min(max_classes, len(classes)),
        dataset=pool.target.dataset,
        **_regime_kwargs(regime, config),
    )


def _rq4_tasks(pool: _Pool, config: ExperimentConfig) -> list[TargetTask]:
    classes = pool.target.class_ids()
    k = min(config.rq4_num_classes, len(classes))
    return sample_tasks(
        pool.train,
        pool.test,
        class_pool=classes,
        num_tasks=config.rq4_tasks,
        seed=_seed(config.seed, "rq4", pool.target),
        min_classes=k,
        max_classes=k,
        dataset=pool.target.dataset,
        regime="large",
    )


def task_id(pair: str, regime: str, index: int) -> str:
    """The deterministic id of target task ``index`` of a pair and regime."""
    return f"{pair}|{regime}|{index:03d}"


def rq4_row_id(target: str, index: int, model: str) -> str:
    """The deterministic id of one (RQ4 target task, zoo model) row."""
    return f"rq4|{target}|{index:03d}|{model}"


# --------------------------------------------------------------------- per-task work


def _bucket(n: int) -> int:
    return max(64, 1 << (n - 1).bit_length())


def task_scores(
    logits: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    pad_to: int | None = None,
) -> dict[str, float]:
    """LEEP and NCE of the logits and H-score of the features for one task.

    The scores are jitted per shape and class count. Rows are padded (and masked out)
    to ``pad_to`` rows, or the next power of two, and ``num_classes`` may exceed the
    task's class count: classes absent from the labels contribute nothing to any of
    the three scores, so both give exactly the task's scores while one compilation
    serves every task of a pool.

    Args:
      logits: ``[n, num_source_classes]`` source logits of the task's training examples.
      features: ``[n, feature_dim]`` their penultimate features.
      labels: ``int[n]`` target labels in ``[0, num_classes)``.
      num_classes: Y, or any larger count.
      pad_to: rows to pad to (>= n); default the next power of two (at least 64).

    Returns:
      ``{"leep", "nce", "h_score"}`` as floats.
    """
    n = labels.shape[0]
    size = _bucket(n) if pad_to is None else pad_to
    if size < n:
        raise ValueError(f"pad_to={pad_to} is smaller than the {n} rows")

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)])

    mask = np.arange(size) < n
    logits_p, features_p = pad(np.asarray(logits)), pad(np.asarray(features))
    labels_p = pad(np.asarray(labels, np.int32))
    return {
        "leep": float(leep(logits_p, labels_p, num_classes, from_logits=True, mask=mask)),
        "nce": float(nce(logits_p, labels_p, num_classes, from_logits=True, mask=mask)),
        "h_score": float(h_score(features_p, labels_p, num_classes, mask=mask)),
    }


def _pool_scores(
    task: TargetTask, outputs: Mapping[str, np.ndarray]
) -> tuple[dict[str, float], np.ndarray]:
    """The task's scores from the pool's cached outputs (one compilation per pool)."""
    features = outputs["train_features"][task.train_indices]
    scores = task_scores(
        outputs["train_logits"][task.train_indices],
        features,
        task.train_labels,
        max(task.num_classes, outputs["num_pool_classes"]),
        pad_to=_bucket(outputs["train_logits"].shape[0]),
    )
    return scores, features


def _retrain_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    config: ExperimentConfig,
    seed: int,
) -> tuple[float, int]:
    """`leep_jax.transfer.methods.retrain_head`'s recipe on cached features.

    retrain_head computes the frozen features itself and then trains a linear head on
    them; here the features come from the pool's single forward pass instead.
    """
    head = nnx.Linear(train_features.shape[1], num_classes, rngs=nnx.Rngs(seed))
    recipe = TrainConfig(
        epochs=config.head_epochs,
        batch_size=config.batch_size,
        learning_rate=config.head_lr,
        weight_decay=config.weight_decay,
        schedule="cosine",
        crop_padding=0,
        flip=False,
        seed=seed,
        eval_batch_size=config.eval_batch_size,
    )
    history = fit(head, train_features, train_labels, recipe)
    accuracy = evaluate(head, test_features, test_labels, batch_size=config.eval_batch_size)
    return accuracy, history.num_steps


def _transfer_kwargs(config: ExperimentConfig, dataset: str, epochs: int, seed: int):
    return {
        "epochs": epochs,
        "batch_size": config.batch_size,
        "weight_decay": config.weight_decay,
        "seed": seed,
        "eval_batch_size": config.eval_batch_size,
        **_augmentation(dataset),
    }


def _task_row(
    task: TargetTask,
    ident: str,
    pair: str,
    regime: str,
    index: int,
    outputs: Mapping[str, np.ndarray],
    source_model: nnx.Module,
    config: ExperimentConfig,
    session: int,
) -> dict[str, Any]:
    seed = _seed(config.seed, ident)
    k = task.num_classes
    timings: dict[str, float] = {}

    start = time.perf_counter()
    scores, train_features = _pool_scores(task, outputs)
    timings["scores_s"] = time.perf_counter() - start

    start = time.perf_counter()
    head_accuracy, head_steps = _retrain_head(
        train_features,
        task.train_labels,
        outputs["test_features"][task.test_indices],
        task.test_labels,
        k,
        config,
        seed,
    )
    timings["retrain_head_s"] = time.perf_counter() - start

    kwargs = _transfer_kwargs(config, task.dataset, config.epochs[regime], seed)
    tuned = fine_tune(source_model, task, learning_rate=config.fine_tune_lr, **kwargs)
    timings["fine_tune_s"] = tuned.wall_time_s
    scratch = train_from_scratch(
        config.architecture,
        task,
        model_kwargs=dict(config.model_kwargs),
        learning_rate=config.scratch_lr,
        **kwargs,
    )
    timings["scratch_s"] = scratch.wall_time_s
    timings["compile_s"] = tuned.compile_time_s + scratch.compile_time_s
    return {
        "id": ident,
        "pair": pair,
        "regime": regime,
        "task_index": index,
        "classes": list(task.classes),
        "num_classes": k,
        "n_train": int(task.train_indices.size),
        "n_test": int(task.test_indices.size),
        "class_counts": task.train_class_counts.tolist(),
        "num_noisy_labels": task.num_noisy_labels,
        "scores": scores,
        "accuracy": {
            "retrain_head": head_accuracy,
            "fine_tune": tuned.test_accuracy,
            "scratch": scratch.test_accuracy,
        },
        "curves": {
            "fine_tune": list(tuned.test_accuracy_curve),
            "scratch": list(scratch.test_accuracy_curve),
        },
        "steps": {
            "retrain_head": head_steps,
            "fine_tune": tuned.num_steps,
            "scratch": scratch.num_steps,
        },
        "timings": timings,
        "session": session,
    }


def _rq4_row(
    task: TargetTask,
    ident: str,
    target: str,
    index: int,
    model_name: str,
    model: nnx.Module,
    outputs: Mapping[str, np.ndarray],
    config: ExperimentConfig,
    session: int,
) -> dict[str, Any]:
    seed = _seed(config.seed, "rq4", target, index)  # the same for every model of a task
    k = task.num_classes
    timings: dict[str, float] = {}
    start = time.perf_counter()
    scores, train_features = _pool_scores(task, outputs)
    timings["scores_s"] = time.perf_counter() - start
    start = time.perf_counter()
    head_accuracy, _ = _retrain_head(
        train_features,
        task.train_labels,
        outputs["test_features"][task.test_indices],
        task.test_labels,
        k,
        config,
        seed,
    )
    timings["retrain_head_s"] = time.perf_counter() - start
    kwargs = _transfer_kwargs(config, task.dataset, config.rq4_epochs, seed)
    tuned = fine_tune(model, task, learning_rate=config.fine_tune_lr, **kwargs)
    timings["fine_tune_s"] = tuned.wall_time_s
    return {
        "id": ident,
        "target": target,
        "task_index": index,
        "model": model_name,
        "classes": list(task.classes),
        "num_classes": k,
        "n_train": int(task.train_indices.size),
        "scores": scores,
        "accuracy": {"retrain_head": head_accuracy, "fine_tune": tuned.test_accuracy},
        "timings": timings,
        "session": session,
    }


def _pool_outputs(model: nnx.Module, pool: _Pool, batch_size: int) -> dict[str, Any]:
    """The model's logits and features over the whole pool: ONE forward pass per image."""
    start = time.perf_counter()
    train_logits, train_features = predict(model, pool.train[0], batch_size=batch_size)
    _, test_features = predict(model, pool.test[0], batch_size=batch_size)
    return {
        "train_logits": np.asarray(train_logits),
        "train_features": np.asarray(train_features),
        "test_features": np.asarray(test_features),
        "num_pool_classes": len(pool.target.class_ids()),
        "forward_s": time.perf_counter() - start,
        "num_images": int(pool.train[0].shape[0] + pool.test[0].shape[0]),
    }


# --------------------------------------------------------------------------- results


def _jsonable(value: Any) -> Any:
    """Plain JSON values; NaN and infinities (undefined statistics) become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Writes JSON to ``path`` atomically: a temporary file in the same folder, fsync,
    then ``os.replace`` (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(_jsonable(data), f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _config_differences(stored: Any, wanted: Mapping[str, Any]) -> list[str]:
    if not isinstance(stored, dict):
        return ["(no config stored)"]
    return [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def load_results(out_dir: str | os.PathLike[str], config: ExperimentConfig) -> dict[str, Any]:
    """The results so far in ``out_dir`` for ``config`` (a fresh skeleton if none).

    Raises:
      ConfigMismatchError: ``out_dir/results.json`` belongs to another configuration.
      ValueError: the file is not a results file of this program.
    """
    path = Path(out_dir) / RESULTS_FILE
    wanted = config.to_dict()
    if not path.exists():
        return {
            "config": wanted,
            "duration_s": 0.0,
            "complete": False,
            "sessions": [],
            "sources": {},
            "zoo": {},
            "tasks": [],
            "summary": {},
            "rq2": {},
            "rq4": {"rows": [], "summary": {}},
        }
    try:
        with open(path) as f:
            stored = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); move it away to start over"
        ) from None
    if not isinstance(stored, dict) or "tasks" not in stored:
        raise ValueError(f"{path} is not a leep-jax experiment results file")
    differences = _config_differences(stored.get("config"), wanted)
    if differences:
        raise ConfigMismatchError(
            f"{path} was written with another configuration (differs in: "
            f"{', '.join(differences)}); use another --out directory, or delete it to start over"
        )
    return stored


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
    }


def _refresh(results: dict[str, Any], config: ExperimentConfig) -> None:
    """Recomputes the summaries from the rows (cheap), so every write is consistent."""
    results["summary"] = report.summarize(results["tasks"], config.pairs, config.tasks_per_regime)
    results["rq2"] = report.convergence(results["tasks"], config.pairs, config.tasks_per_regime)
    results["rq4"]["summary"] = report.selection(results["rq4"]["rows"])


# -------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Run:
    """What the work generators share: the config, pools, results so far, progress."""

    config: ExperimentConfig
    pools: dict[str, _Pool]
    results: dict[str, Any]
    done: set[str]
    session: int
    bar: tqdm
    progress: bool

    def model_info(self, spec: SourceSpec) -> dict[str, Any]:
        metadata = source_metadata(spec) or {}
        return {"spec": spec.to_dict(), **{k: v for k, v in metadata.items() if k != "spec"}}


Work = Iterator[tuple[list[dict[str, Any]], Callable[[], dict[str, Any]]]]


def _pair_work(run: _Run, pair: Pair) -> Work:
    """RQ1-RQ3 rows of one pair, as ``(rows, compute)``: the source model is trained (or
    loaded) when the first row is asked for, and ``compute()`` makes one row."""
    config, name = run.config, str(pair)
    ids = [task_id(name, r, i) for r, n in config.tasks_per_regime.items() for i in range(n)]
    if all(i in run.done for i in ids):
        return
    spec = source_spec(config, pair.source)
    run.bar.set_postfix_str(f"source {spec.name}")
    model = train_source_model(spec, progress=run.progress)
    pool = run.pools[str(pair.target)].with_channels(model.in_channels)
    outputs = _pool_outputs(model, pool, config.eval_batch_size)
    run.results["sources"][name] = run.model_info(spec) | {
        "pool_forward": {
            "seconds": outputs["forward_s"],
            "num_images": outputs["num_images"],
            "num_train": int(pool.train[1].size),
            "num_test": int(pool.test[1].size),
        }
    }
    for regime in config.tasks_per_regime:
        for i, task in enumerate(_pair_tasks(pool, name, regime, config)):
            ident = task_id(name, regime, i)
            if ident not in run.done:
                run.bar.set_postfix_str(f"{name} {regime} {i}")
                yield (
                    run.results["tasks"],
                    functools.partial(
                        _task_row, task, ident, name, regime, i, outputs, model, config, run.session
                    ),
                )


def _rq4_work(run: _Run, targets: Sequence[str]) -> Work:
    """RQ4 rows: every zoo model scored and fine-tuned on every RQ4 task of each target."""
    config = run.config
    for spec in config.zoo:
        ids = [rq4_row_id(t, i, spec.name) for t in targets for i in range(config.rq4_tasks)]
        if all(i in run.done for i in ids):
            continue
        run.bar.set_postfix_str(f"zoo {spec.name}")
        model = train_source_model(spec, progress=run.progress)
        run.results["zoo"][spec.name] = run.model_info(spec)
        for target in targets:
            if all(rq4_row_id(target, i, spec.name) in run.done for i in range(config.rq4_tasks)):
                continue
            pool = run.pools[target].with_channels(model.in_channels)
            outputs = _pool_outputs(model, pool, config.eval_batch_size)
            for i, task in enumerate(_rq4_tasks(pool, config)):
                ident = rq4_row_id(target, i, spec.name)
                if ident not in run.done:
                    run.bar.set_postfix_str(f"rq4 {spec.name} {target} {i}")
                    yield (
                        run.results["rq4"]["rows"],
                        functools.partial(
                            _rq4_row,
                            task,
                            ident,
                            target,
                            i,
                            spec.name,
                            model,
                            outputs,
                            config,
                            run.session,
                        ),
                    )


def _round_robin(*streams: Iterator) -> Iterator:
    """One item from each stream in turn, dropping streams as they end."""
    active = collections.deque(iter(s) for s in streams)
    while active:
        stream = active.popleft()
        try:
            item = next(stream)
        except StopIteration:
            continue
        active.append(stream)
        yield item


def _computed(work: Work, workers: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """``(rows, row)`` for every item of ``work``, computing up to ``workers`` rows at once.

    Rows come in the order they finish. Each row trains its own models from its own
    seed, so running rows side by side (threads: JAX releases the GIL while it computes)
    changes their timings, not their values. ``work`` itself advances in this thread.
    """
    if workers == 1:
        for rows, compute in work:
            yield rows, compute()
        return
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="experiment")
    running: dict[concurrent.futures.Future, list[dict[str, Any]]] = {}
    try:
        for rows, compute in work:
            running[executor.submit(compute)] = rows
            if len(running) == workers:
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    yield running.pop(future), future.result()
        for future in concurrent.futures.as_completed(list(running)):
            yield running.pop(future), future.result()
    finally:
        # Interrupted: rows not started are dropped; rows running finish in the background
        # (the process waits for them at exit) but are not saved.
        executor.shutdown(wait=False, cancel_futures=True)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    max_new_tasks: int | None = None,
    on_task: Callable[[dict[str, Any]], None] | None = None,
    write_report: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Runs (or resumes) the experiment and writes results.json, report.md and figures.

    Rows are taken in turn from each pair and from RQ4 (round robin), so a run stopped
    part way has rows for every research question, not only for the first pair. Each
    source model is trained (or loaded) when its first row is reached.

    Args:
      config: what to run.
      out_dir: output folder (created). Results already there for the same config are
        kept and their tasks skipped.
      progress: progress bars on stderr.
      max_new_tasks: stop after computing this many new tasks (RQ4 rows count as
        tasks); the results so far are written, and a later call resumes.
      on_task: called with each new row after it has been written.
      write_report: write report.md and the figures at the end (results.json is
        always written).
      workers: rows computed side by side (threads). Training a small network keeps
        about one CPU core busy, so ``workers=2`` nearly halves a run on two cores; the
        values do not depend on it, the timings do.

    Returns:
      The results dict (as written to results.json).

    Raises:
      ConfigMismatchError: ``out_dir`` holds results of another configuration.
      ValueError, FileNotFoundError, ImportError: bad pairs, missing datasets, TFDS
        datasets without the ``tfds`` extra.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    out = Path(out_dir)
    results = load_results(out, config)  # refuses another config before any work
    previous_duration = float(results.get("duration_s") or 0.0)
    # Tasks are index subsets of the pools, cheap to re-create: only their ids are
    # stored, and a resumed run re-creates them from the seed.
    pools: dict[str, _Pool] = {}
    for pair in config.parsed_pairs:
        pools.setdefault(str(pair.target), _load_pool(pair.target, config))
    rq4_targets = list(pools) if config.zoo else []
    ids = [
        task_id(str(pair), regime, i)
        for pair in config.parsed_pairs
        for regime, count in config.tasks_per_regime.items()
        for i in range(count)
    ] + [
        rq4_row_id(target, i, spec.name)
        for target in rq4_targets
        for spec in config.zoo
        for i in range(config.rq4_tasks)
    ]
    done = {row["id"] for row in results["tasks"]} | {row["id"] for row in results["rq4"]["rows"]}

    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    session = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": 0.0,
        "new_tasks": 0,
        "environment": _environment(),
    }
    results["sessions"].append(session)

    def save() -> None:
        session["duration_s"] = time.perf_counter() - start
        results["duration_s"] = previous_duration + session["duration_s"]
        results["complete"] = all(i in done for i in ids)
        _refresh(results, config)
        write_json_atomic(path, results)

    bar = tqdm(
        total=len(ids),
        initial=sum(i in done for i in ids),
        desc="experiment",
        unit="task",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    run = _Run(config, pools, results, done, len(results["sessions"]) - 1, bar, progress)
    # Generators: a source model is trained or loaded only when its rows are reached.
    work = _round_robin(
        *(_pair_work(run, pair) for pair in config.parsed_pairs), _rq4_work(run, rq4_targets)
    )
    if max_new_tasks is not None:
        work = itertools.islice(work, max_new_tasks)
    try:
        save()
        for rows, row in _computed(work, workers):
            rows.append(row)
            done.add(row["id"])
            session["new_tasks"] += 1
            save()
            bar.update(1)
            if on_task is not None:
                on_task(row)
    finally:
        bar.close()
        save()
        # Also on Ctrl-C: a report of the rows so far, marked incomplete.
        interrupted = sys.exc_info()[1]
        if write_report and (interrupted is None or isinstance(interrupted, KeyboardInterrupt)):
            report.write_report(results, out)
    return results
