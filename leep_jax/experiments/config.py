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

from leep_jax.experiments.pairs import DatasetSlice, Pair, parse_pair, parse_slice
from leep_jax.transfer.methods import FINE_TUNE_RECIPE, HEAD_RECIPE
from leep_jax.transfer.presets import quick_zoo, selection_zoo
from leep_jax.transfer.recipe import TrainConfig
from leep_jax.transfer.zoo import SourceSpec

__all__ = [
    "DEFAULT_PAIRS",
    "DEFAULT_RQ4_TARGETS",
    "METHODS_WITH_LR",
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
# results of another version. Version 2: distinct tasks, fixed step budgets, learning
# rates chosen on validation tasks, every score, a 40-class source, a larger RQ4 zoo.
PROTOCOL_VERSION = 2

DEFAULT_PAIRS = (
    "fashion_mnist[0-4]->fashion_mnist[5-9]",
    "fashion_mnist->digits",
    "fashion_mnist_rot4->digits",
)
DEFAULT_RQ4_TARGETS = ("digits", "fashion_mnist[5-9]")
METHODS_WITH_LR = ("fine_tune", "train_from_scratch")


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
      model_kwargs: its extra constructor arguments (e.g. ``{"width": 16}``).
      source_train_examples: random training examples for the source model (None: all
        examples of the source classes).
      source_epochs: source training epochs (enough to converge: the source's test
        accuracy after each epoch is stored with it).
      source_batch_size: source training batch size.
      source_test_examples: test examples scoring the source model's own accuracy.
      tasks_per_regime: ``{regime: number of target tasks}`` per pair, at most: no two
        tasks of one pair and regime share a class set, so a pool with fewer class sets
        gets all of them (regimes not listed are not run).
      max_classes: at most this many classes per task (None: the whole pool); tasks draw
        their class count uniformly from 2..max_classes.
      large_per_class: at most this many training examples per class in the target
        pool, i.e. in the large regime (None: all).
      test_per_class: at most this many test examples per class in the target pool
        (None: the whole test split of the task's classes).
      small_per_class: per-class cap of the small regimes.
      imbalance_ratio: largest/smallest class size in ``small_imbalanced``.
      noise_rate: share of flipped training labels in ``small_noisy``.
      train_steps: SGD steps of fine-tuning and of training from scratch on every
        RQ1-RQ3 task, whatever its size.
      eval_every: steps between the test evaluations of the RQ2 curves.
      batch_size: batch size of head re-training, fine-tuning and scratch training.
      lr_grid: peak learning rates tried for fine-tuning and for training from scratch;
        one of each is chosen per pair (and one for RQ4's fine-tuning) by the mean
        accuracy on validation tasks (`leep_jax.experiments.learning_rates`).
      validation_tasks: validation tasks per pair (and per RQ4 target).
      validation_fraction: share of each class's pool training examples that validation
        tasks evaluate on (they never see the test split).
      head_lr: peak learning rate of head re-training.
      head_epochs: epochs of head re-training (on cached features: cheap).
      weight_decay: L2 coefficient on kernels (all methods).
      eval_batch_size: batch size of forward passes and evaluation.
      chance_alpha: a run is flagged at chance when a one-sided binomial test cannot
        tell its test accuracy from always predicting the most frequent test class at
        this level.
      knn_neighbors: k of RQ4's k-nearest-neighbour baseline.
      zoo: RQ4's source models (`SourceSpec`); empty skips RQ4.
      rq4_targets: RQ4's target pools (dataset or class-set strings).
      rq4_tasks: RQ4 target tasks per target pool (distinct class sets).
      rq4_num_classes: classes of every RQ4 task (capped by the pool): models are
        ranked within a task, so the class count is not a confound there, and one
        count per target keeps the scores' compilations few.
      rq4_train_steps: fine-tuning steps of RQ4.
      rq4_lr_models: names of the zoo models that choose RQ4's fine-tuning learning rate
        on validation tasks (the first zoo model when empty).
    """

    mode: str = "custom"
    seed: int = 0
    pairs: tuple[str, ...] = DEFAULT_PAIRS
    architecture: str = "small_cnn"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"width": 16})
    source_train_examples: int | None = None
    source_epochs: int = 8
    source_batch_size: int = 128
    source_test_examples: int | None = 2000
    tasks_per_regime: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {
            "large_balanced": 60,
            "small_balanced": 30,
            "small_imbalanced": 30,
            "small_noisy": 30,
        }
    )
    max_classes: int | None = None
    large_per_class: int | None = 200
    test_per_class: int | None = None
    small_per_class: int = 50
    imbalance_ratio: float = 5.0
    noise_rate: float = 0.2
    train_steps: int = 200
    eval_every: int = 25
    batch_size: int = 64
    lr_grid: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    validation_tasks: int = 3
    validation_fraction: float = 0.3
    head_lr: float = 0.1
    head_epochs: int = 30
    weight_decay: float = 5e-4
    eval_batch_size: int = 256
    chance_alpha: float = 0.01
    knn_neighbors: int = 5
    zoo: tuple[SourceSpec, ...] = ()
    rq4_targets: tuple[str, ...] = DEFAULT_RQ4_TARGETS
    rq4_tasks: int = 12
    rq4_num_classes: int = 3
    rq4_train_steps: int = 150
    rq4_lr_models: tuple[str, ...] = ()

    def __post_init__(self):
        pairs = tuple(str(parse_pair(p)) for p in self.pairs)
        if not pairs:
            raise ValueError("give at least one source->target pair")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"repeated pairs: {pairs}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "zoo", tuple(self.zoo))
        object.__setattr__(self, "lr_grid", tuple(float(x) for x in self.lr_grid))
        object.__setattr__(self, "rq4_lr_models", tuple(self.rq4_lr_models))
        targets = tuple(str(parse_slice(t)) for t in self.rq4_targets)
        object.__setattr__(self, "rq4_targets", targets)
        tasks = {r: int(n) for r, n in self.tasks_per_regime.items()}
        unknown = sorted(set(tasks) - set(REGIMES))
        if unknown:
            raise ValueError(f"unknown regimes {unknown}; expected some of {REGIMES}")
        if not tasks or any(n < 1 for n in tasks.values()):
            raise ValueError(f"tasks_per_regime needs positive counts, got {tasks}")
        # Canonical regime order, so equal configs serialise equally.
        object.__setattr__(self, "tasks_per_regime", {r: tasks[r] for r in REGIMES if r in tasks})
        if min(self.train_steps, self.rq4_train_steps, self.eval_every, self.head_epochs) < 1:
            raise ValueError("train_steps, rq4_train_steps, eval_every, head_epochs must be >= 1")
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid needs positive learning rates, got {self.lr_grid}")
        if self.validation_tasks < 1 or not 0 < self.validation_fraction < 1:
            raise ValueError("validation_tasks must be >= 1 and validation_fraction in (0, 1)")
        if self.max_classes is not None and self.max_classes < 2:
            raise ValueError(f"max_classes must be >= 2 or None, got {self.max_classes}")
        if self.rq4_num_classes < 2:
            raise ValueError(f"rq4_num_classes must be >= 2, got {self.rq4_num_classes}")
        if self.rq4_tasks < 1 or self.knn_neighbors < 1 or not 0 < self.chance_alpha < 1:
            raise ValueError("rq4_tasks, knn_neighbors must be >= 1 and chance_alpha in (0, 1)")
        names = [spec.name for spec in self.zoo]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate zoo model names: {names}")
        missing = [m for m in self.rq4_lr_models if m not in names]
        if missing:
            raise ValueError(f"rq4_lr_models {missing} are not zoo models ({names})")

    @property
    def lr_models(self) -> tuple[SourceSpec, ...]:
        """The zoo models that choose RQ4's fine-tuning learning rate."""
        if not self.zoo:
            return ()
        chosen = [spec for spec in self.zoo if spec.name in self.rq4_lr_models]
        return tuple(chosen) or self.zoo[:1]

    @classmethod
    def quick(cls, *, seed: int = 0, pairs: Sequence[str] | None = None) -> ExperimentConfig:
        """The quick configuration: a smoke test on real data, minutes on a 2-core CPU.

        Same protocol as `full`, scaled down: briefly trained sources on subsets, tiny
        tasks (at most 4 classes, 40 training examples per class), 6 large-regime tasks
        and 2 of each small regime per pair, 20 steps of fine-tuning, two learning rates
        on one validation task, and five small CNNs for RQ4 on 3 tasks per target. Its
        correlations rest on few tasks: a smoke test, not a result.
        """
        return cls(
            mode="quick",
            seed=seed,
            pairs=tuple(pairs or DEFAULT_PAIRS),
            model_kwargs={"width": 8},
            source_train_examples=1000,
            source_epochs=2,
            source_batch_size=64,
            source_test_examples=500,
            tasks_per_regime={
                "large_balanced": 6,
                "small_balanced": 2,
                "small_imbalanced": 2,
                "small_noisy": 2,
            },
            max_classes=4,
            large_per_class=40,
            test_per_class=20,
            small_per_class=12,
            imbalance_ratio=4.0,
            train_steps=20,
            eval_every=10,
            batch_size=32,
            lr_grid=(0.01, 0.05),
            validation_tasks=1,
            head_epochs=15,
            eval_batch_size=64,
            zoo=tuple(quick_zoo()),
            rq4_tasks=3,
            rq4_num_classes=3,
            rq4_train_steps=20,
        )

    @classmethod
    def full(cls, *, seed: int = 0, pairs: Sequence[str] | None = None) -> ExperimentConfig:
        """The full configuration, about six hours on a 2-core CPU with 2 workers
        (resumable).

        Per pair: a SmallCNN (width 16) source trained on all source examples for 8
        epochs; a target pool of at most 200 training examples per class and the whole
        test split; up to 60 large-regime tasks and 30 of each small regime (at most 50
        examples per class), all with distinct class sets; 200 SGD steps of fine-tuning
        and of training from scratch on every task, at learning rates chosen on 3
        validation tasks per pair. RQ4 ranks `selection_zoo` (16 models) on 3-class
        tasks of two targets (12 of digits, all 10 of FashionMNIST's classes 5-9;
        150 fine-tuning steps).
        """
        zoo = tuple(selection_zoo())
        return cls(
            mode="full",
            seed=seed,
            pairs=tuple(pairs or DEFAULT_PAIRS),
            zoo=zoo,
            rq4_lr_models=(zoo[0].name, next(s.name for s in zoo if s.architecture == "resnet20")),
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
    learning_rate: float,
    seed: int,
    **changes: Any,
) -> TrainConfig:
    return dataclasses.replace(
        base,
        batch_size=config.batch_size,
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        seed=seed,
        eval_batch_size=config.eval_batch_size,
        **changes,
    )


def head_recipe(config: ExperimentConfig, seed: int) -> TrainConfig:
    """The recipe of head re-training under ``config`` (`leep_jax.transfer.HEAD_RECIPE`)."""
    return _recipe(config, HEAD_RECIPE, config.head_lr, seed, epochs=config.head_epochs)


def transfer_recipe(
    config: ExperimentConfig, dataset: str, steps: int, learning_rate: float, seed: int
) -> TrainConfig:
    """The recipe of fine-tuning or training from scratch on a task of ``dataset``:
    exactly ``steps`` SGD steps, evaluated every ``config.eval_every`` steps."""
    return _recipe(
        config,
        FINE_TUNE_RECIPE,
        learning_rate,
        seed,
        steps=steps,
        eval_every=config.eval_every,
        **_augmentation(dataset),
    )
