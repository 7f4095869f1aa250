"""What determines an experiment's numbers: `ExperimentConfig` and what derives from it.

Also here: the regimes (`REGIMES`), the default pairs, the source model of a pair
(`source_spec`), the recipes of the three transfer methods under a configuration
(`head_recipe`, `transfer_recipe`) and the deterministic seeds of tasks and runs
(`derive_seed`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leep_jax.experiments.pairs import DatasetSlice, Pair, parse_pair
from leep_jax.transfer.methods import FINE_TUNE_RECIPE, HEAD_RECIPE
from leep_jax.transfer.presets import default_zoo, quick_zoo
from leep_jax.transfer.recipe import TrainConfig
from leep_jax.transfer.zoo import SourceSpec

__all__ = [
    "DEFAULT_PAIRS",
    "PROTOCOL_VERSION",
    "REGIMES",
    "ExperimentConfig",
    "derive_seed",
    "head_recipe",
    "source_spec",
    "transfer_recipe",
]

REGIMES = ("large_balanced", "small_balanced", "small_imbalanced", "small_noisy")
# Stored in the config of results.json: the version of the protocol (and of the file's
# schema). A change that alters the numbers or the layout bumps it, so resume refuses
# results of another version.
PROTOCOL_VERSION = 1

DEFAULT_PAIRS = ("fashion_mnist[0-4]->fashion_mnist[5-9]", "fashion_mnist->digits")


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


def derive_seed(*parts: Any) -> int:
    """A deterministic 63-bit seed from the base seed and names (stable across runs)."""
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _recipe(
    config: ExperimentConfig,
    base: TrainConfig,
    epochs: int,
    learning_rate: float,
    seed: int,
    **changes: Any,
) -> TrainConfig:
    return dataclasses.replace(
        base,
        epochs=epochs,
        batch_size=config.batch_size,
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        seed=seed,
        eval_batch_size=config.eval_batch_size,
        **changes,
    )


def head_recipe(config: ExperimentConfig, seed: int) -> TrainConfig:
    """The recipe of head re-training under ``config`` (`leep_jax.transfer.HEAD_RECIPE`)."""
    return _recipe(config, HEAD_RECIPE, config.head_epochs, config.head_lr, seed)


def transfer_recipe(
    config: ExperimentConfig, dataset: str, epochs: int, learning_rate: float, seed: int
) -> TrainConfig:
    """The recipe of fine-tuning or training from scratch on a task of ``dataset``."""
    return _recipe(config, FINE_TUNE_RECIPE, epochs, learning_rate, seed, **_augmentation(dataset))
