"""Random target tasks for transferability experiments (LEEP paper, Sec. 5.1-5.3).

Following Nguyen et al. (2020), a target task is a random subset of 2..K classes of a
dataset (e.g. FashionMNIST classes 5..9 when the source model saw 0..4, or the digits
0..9), relabelled 0..k-1 in the order given (sorted when sampled). Variants:

* **large**: every training example of the chosen classes (Sec. 5.1);
* **small**: at most ``max_per_class`` (default 50) training examples per class, drawn at
  random (Sec. 5.2);
* **imbalanced** (``imbalance_ratio`` r > 1): the paper draws per-class sizes at random;
  here they follow a geometric profile instead, so the imbalance is controlled exactly:
  the k class sizes are ``n_max * r**(-j / (k - 1))`` for j = 0..k-1, rounded to
  integers, from ``n_max`` down to ``n_max / r`` (largest/smallest = r up to rounding),
  assigned to the classes in a random order. ``n_max`` is the smallest per-class count
  available in the regime (all examples for large, ``max_per_class`` for small), so every
  class can supply its share (Sec. 5.3);
* **noisy** (``noise_rate`` p): exactly ``round(p * n_train)`` training labels, chosen at
  random, are replaced by a class drawn uniformly from the k - 1 other classes. Test
  labels stay clean.

The test split holds the same classes from the dataset's test set, relabelled the same
way (all of them, or at most ``max_test_per_class``). Everything is drawn from one NumPy
Generator, so a task is a deterministic function of its seed.

Tasks keep indices into the dataset's arrays and gather images on access, so hundreds of
tasks over one dataset share its memory, and source-model outputs computed once over the
whole dataset can be reused per task through ``train_indices`` / ``test_indices``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from jax.typing import ArrayLike

REGIMES = ("large", "small")

SeedLike = int | np.random.SeedSequence | np.random.Generator


@dataclasses.dataclass(frozen=True, eq=False)
class TargetTask:
    """A target task: chosen classes, relabelled train/test examples, and how it was made.

    Attributes:
      name: an identifier, e.g. ``"fashion_mnist-s0-t003"``.
      dataset: name of the dataset the examples come from.
      classes: original class ids; new label j stands for ``classes[j]``.
      train_indices: int64 ``[n_train]`` rows of the dataset's train arrays (shuffled).
      train_labels: int32 ``[n_train]`` in 0..k-1, after label noise.
      clean_train_labels: int32 ``[n_train]`` true labels in 0..k-1.
      test_indices: int64 ``[n_test]`` rows of the dataset's test arrays (in order).
      test_labels: int32 ``[n_test]`` in 0..k-1 (never noisy).
      regime: ``"large"`` or ``"small"``.
      imbalance_ratio: requested largest/smallest class size (1.0: balanced).
      noise_rate: requested fraction of flipped training labels.
      seed: the integer seed when one was given, else None.
      source_train_images: the dataset's train images ``[N, h, w, c]`` (shared, not copied).
      source_test_images: the dataset's test images ``[M, h, w, c]`` (shared, not copied).
    """

    name: str
    dataset: str
    classes: tuple[int, ...]
    train_indices: np.ndarray
    train_labels: np.ndarray
    clean_train_labels: np.ndarray
    test_indices: np.ndarray
    test_labels: np.ndarray
    regime: str
    imbalance_ratio: float
    noise_rate: float
    seed: int | None
    source_train_images: np.ndarray = dataclasses.field(repr=False)
    source_test_images: np.ndarray = dataclasses.field(repr=False)

    def __post_init__(self):
        k = len(self.classes)
        if k < 2:
            raise ValueError(f"a target task needs at least 2 classes, got {self.classes}")
        for split, indices, labels, source in (
            ("train", self.train_indices, self.train_labels, self.source_train_images),
            ("train", self.train_indices, self.clean_train_labels, self.source_train_images),
            ("test", self.test_indices, self.test_labels, self.source_test_images),
        ):
            if indices.ndim != 1 or indices.size == 0:
                raise ValueError(f"task {self.name!r}: empty or non-1-D {split} split")
            if labels.shape != indices.shape:
                raise ValueError(
                    f"task {self.name!r}: {split} labels {labels.shape} do not match "
                    f"indices {indices.shape}"
                )
            if labels.min() < 0 or labels.max() >= k:
                raise ValueError(f"task {self.name!r}: {split} labels outside 0..{k - 1}")
            if indices.min() < 0 or indices.max() >= source.shape[0]:
                raise ValueError(f"task {self.name!r}: {split} indices out of range")

    @property
    def num_classes(self) -> int:
        """k, the number of target classes."""
        return len(self.classes)

    @property
    def train_images(self) -> np.ndarray:
        """uint8 ``[n_train, h, w, c]``, gathered on each access (keep it if reused)."""
        return self.source_train_images[self.train_indices]

    @property
    def test_images(self) -> np.ndarray:
        """uint8 ``[n_test, h, w, c]``, gathered on each access (keep it if reused)."""
        return self.source_test_images[self.test_indices]

    @property
    def train_class_counts(self) -> np.ndarray:
        """int64 ``[k]`` training examples per class (true labels)."""
        return np.bincount(self.clean_train_labels, minlength=self.num_classes)

    @property
    def num_noisy_labels(self) -> int:
        """Number of training labels that differ from the true label."""
        return int(np.count_nonzero(self.train_labels != self.clean_train_labels))


def imbalanced_class_sizes(num_classes: int, largest: int, ratio: float) -> np.ndarray:
    """Geometric class-size profile from ``largest`` down to ``largest / ratio``.

    Args:
      num_classes: k >= 2.
      largest: size of the largest class.
      ratio: largest/smallest size, >= 1.

    Returns:
      int64 ``[k]`` sizes, non-increasing: ``round(largest * ratio**(-j / (k - 1)))``.

    Raises:
      ValueError: k < 2, ratio < 1, or a smallest class that would round to 0.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not (math.isfinite(ratio) and ratio >= 1.0):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {ratio}")
    exponents = np.arange(num_classes) / (num_classes - 1)
    sizes = np.floor(largest * ratio ** (-exponents) + 0.5).astype(np.int64)
    if sizes[-1] < 1:
        raise ValueError(
            f"imbalance_ratio {ratio} is too large for classes of at most {largest} "
            "examples: the smallest class would be empty"
        )
    return sizes


def _as_labelled(pair: tuple[ArrayLike, ArrayLike], split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = pair
    images, labels = np.asarray(images), np.asarray(labels)
    if labels.ndim != 1 or images.ndim < 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{split} images {images.shape} and labels {labels.shape} do not match "
            "(expected [n, ...] and [n])"
        )
    return images, labels


def _check_classes(classes: Sequence[int]) -> tuple[int, ...]:
    classes = tuple(int(c) for c in classes)
    if len(classes) < 2:
        raise ValueError(f"a target task needs at least 2 classes, got {classes}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    return classes


def make_task(
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike],
    classes: Sequence[int],
    *,
    seed: SeedLike,
    regime: str = "large",
    max_per_class: int = 50,
    imbalance_ratio: float = 1.0,
    noise_rate: float = 0.0,
    max_test_per_class: int | None = None,
    dataset: str = "target",
    name: str | None = None,
) -> TargetTask:
    """Builds one target task from given classes (see the module docstring).

    Args:
      train: the dataset's ``(images [N, h, w, c], labels [N])`` training split.
      test: the dataset's ``(images [M, h, w, c], labels [M])`` test split.
      classes: original class ids; new label j stands for ``classes[j]``.
      seed: an int, SeedSequence or Generator (a Generator is advanced).
      regime: ``"large"`` (all examples) or ``"small"`` (at most ``max_per_class``).
      max_per_class: the per-class cap of the small regime.
      imbalance_ratio: largest/smallest training class size; 1.0 for balanced.
      noise_rate: fraction of training labels flipped to another class, in [0, 1].
      max_test_per_class: optional cap on test examples per class (drawn at random).
      dataset: dataset name, recorded in the task.
      name: task name (default: built from the dataset and the classes).

    Returns:
      The TargetTask.

    Raises:
      ValueError: fewer than 2 or repeated classes, a class absent from a split, a bad
        regime/cap/ratio/rate, or an imbalance the available data cannot supply.
    """
    classes = _check_classes(classes)
    train_images, train_labels = _as_labelled(train, "train")
    test_images, test_labels = _as_labelled(test, "test")
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if regime == "small" and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise ValueError(f"max_per_class must be a positive int, got {max_per_class!r}")
    if max_test_per_class is not None and (
        not isinstance(max_test_per_class, int) or max_test_per_class < 1
    ):
        raise ValueError(f"max_test_per_class must be a positive int, got {max_test_per_class!r}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    rng = np.random.default_rng(seed)
    k = len(classes)

    train_pools = [_class_indices(train_labels, c, "train") for c in classes]
    test_pools = [_class_indices(test_labels, c, "test") for c in classes]
    caps = [p.size if regime == "large" else min(p.size, max_per_class) for p in train_pools]
    if imbalance_ratio != 1.0:
        sizes = imbalanced_class_sizes(k, min(caps), float(imbalance_ratio))
        sizes = sizes[rng.permutation(k)]
    else:
        sizes = np.asarray(caps)

    train_parts = [_draw(rng, pool, int(n)) for pool, n in zip(train_pools, sizes, strict=True)]
    clean = np.concatenate([np.full(part.size, j, np.int32) for j, part in enumerate(train_parts)])
    order = rng.permutation(clean.size)  # interleave classes for minibatch training
    train_indices = np.concatenate(train_parts)[order]
    clean = clean[order]
    noisy = _flip_labels(rng, clean, k, noise_rate)

    test_parts = [
        pool if max_test_per_class is None else _draw(rng, pool, min(pool.size, max_test_per_class))
        for pool in test_pools
    ]
    test_indices = np.concatenate(test_parts)
    test_order = np.argsort(test_indices, kind="stable")  # dataset order
    test_indices = test_indices[test_order]
    test_task_labels = np.concatenate(
        [np.full(part.size, j, np.int32) for j, part in enumerate(test_parts)]
    )[test_order]

    for array in (train_indices, clean, noisy, test_indices, test_task_labels):
        array.setflags(write=False)
    if name is None:
        name = f"{dataset}-c{'_'.join(map(str, classes))}-{regime}"
    return TargetTask(
        name=name,
        dataset=dataset,
        classes=classes,
        train_indices=train_indices,
        train_labels=noisy,
        clean_train_labels=clean,
        test_indices=test_indices,
        test_labels=test_task_labels,
        regime=regime,
        imbalance_ratio=float(imbalance_ratio),
        noise_rate=float(noise_rate),
        seed=int(seed) if isinstance(seed, int | np.integer) else None,
        source_train_images=train_images,
        source_test_images=test_images,
    )


def _class_indices(labels: np.ndarray, cls: int, split: str) -> np.ndarray:
    indices = np.flatnonzero(labels == cls)
    if indices.size == 0:
        raise ValueError(f"class {cls} has no examples in the {split} split")
    return indices


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """n indices drawn without replacement from pool, in increasing order."""
    if n == pool.size:
        return pool
    return np.sort(rng.choice(pool, size=n, replace=False))


def _flip_labels(
    rng: np.random.Generator, labels: np.ndarray, num_classes: int, noise_rate: float
) -> np.ndarray:
    """Flips exactly round(noise_rate * n) labels, each to one of the other classes."""
    num_flipped = math.floor(noise_rate * labels.size + 0.5)
    noisy = labels.copy()
    if num_flipped == 0:
        return noisy
    flipped = rng.choice(labels.size, size=num_flipped, replace=False)
    # An offset in 1..k-1 (mod k) is uniform over the k-1 wrong classes.
    offsets = rng.integers(1, num_classes, size=num_flipped)
    noisy[flipped] = (labels[flipped] + offsets) % num_classes
    return noisy


def sample_tasks(
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike],
    *,
    class_pool: Sequence[int],
    num_tasks: int,
    seed: int,
    min_classes: int = 2,
    max_classes: int | None = None,
    regime: str = "large",
    max_per_class: int = 50,
    imbalance_ratio: float = 1.0,
    noise_rate: float = 0.0,
    max_test_per_class: int | None = None,
    dataset: str = "target",
    distinct: bool = False,
) -> list[TargetTask]:
    """Samples random target tasks: class subsets of random size from a class pool.

    Task i draws its class count uniformly from ``min_classes..max_classes``, then that
    many distinct classes from ``class_pool`` (sorted, then relabelled 0..k-1), then
    builds the task with :func:`make_task`. Each task has its own child of
    ``np.random.SeedSequence(seed)``, so task i is the same whatever ``num_tasks`` is.

    With ``distinct=True`` no two tasks share a class set (in the large regime, where a
    task takes every pool example of its classes, two tasks with one class set would be
    the same task): task i draws its class count uniformly among the counts that still
    have an unused class set, then one of those sets uniformly. Task i still does not
    depend on ``num_tasks``.

    Args:
      train: the dataset's ``(images, labels)`` training split.
      test: the dataset's ``(images, labels)`` test split.
      class_pool: original class ids to choose from, e.g. ``range(5, 10)``.
      num_tasks: number of tasks.
      seed: base seed.
      min_classes: smallest class count, >= 2.
      max_classes: largest class count (default: the whole pool).
      regime, max_per_class, imbalance_ratio, noise_rate, max_test_per_class: as
        :func:`make_task`, for every task.
      dataset: dataset name, recorded in the tasks and their names.
      distinct: no repeated class sets (see above).

    Returns:
      ``num_tasks`` TargetTasks named ``f"{dataset}-s{seed}-t{i:03d}"``.

    Raises:
      ValueError: a bad pool or class-count range, or any error of :func:`make_task`.
    """
    pool = tuple(int(c) for c in class_pool)
    if len(set(pool)) != len(pool):
        raise ValueError(f"class_pool has repeated classes: {pool}")
    max_classes = len(pool) if max_classes is None else max_classes
    if not 2 <= min_classes <= max_classes <= len(pool):
        raise ValueError(
            f"need 2 <= min_classes ({min_classes}) <= max_classes ({max_classes}) <= "
            f"pool size ({len(pool)})"
        )
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    class_sets = None
    if distinct:
        class_sets = distinct_class_sets(pool, num_tasks, seed, min_classes, max_classes)
    tasks = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(num_tasks)):
        rng = np.random.default_rng(child)
        k = int(rng.integers(min_classes, max_classes + 1))
        classes = sorted(int(c) for c in rng.choice(pool, size=k, replace=False))
        if class_sets is not None:
            classes = list(class_sets[i])
        tasks.append(
            make_task(
                train,
                test,
                classes,
                seed=rng,
                regime=regime,
                max_per_class=max_per_class,
                imbalance_ratio=imbalance_ratio,
                noise_rate=noise_rate,
                max_test_per_class=max_test_per_class,
                dataset=dataset,
                name=f"{dataset}-s{seed}-t{i:03d}",
            )
        )
    return tasks


def num_class_sets(pool_size: int, min_classes: int, max_classes: int) -> int:
    """How many distinct class sets of ``min_classes..max_classes`` classes a pool has."""
    return sum(math.comb(pool_size, k) for k in range(min_classes, max_classes + 1))


def distinct_class_sets(
    class_pool: Sequence[int], num_sets: int, seed: int, min_classes: int, max_classes: int
) -> list[tuple[int, ...]]:
    """``num_sets`` different sorted class sets, drawn as `sample_tasks` does with
    ``distinct=True`` (set i does not depend on ``num_sets``).

    Raises:
      ValueError: the pool has fewer than ``num_sets`` class sets of those sizes.
    """
    pool = tuple(sorted(int(c) for c in class_pool))
    available = num_class_sets(len(pool), min_classes, max_classes)
    if num_sets > available:
        raise ValueError(
            f"asked for {num_sets} distinct class sets of {min_classes}..{max_classes} classes, "
            f"but a pool of {len(pool)} classes has only {available}"
        )
    rng = np.random.default_rng([seed, 1])
    used: set[tuple[int, ...]] = set()
    sizes = list(range(min_classes, max_classes + 1))
    out = []
    for _ in range(num_sets):
        open_sizes = [k for k in sizes if sum(len(c) == k for c in used) < math.comb(len(pool), k)]
        k = open_sizes[int(rng.integers(len(open_sizes)))]
        if math.comb(len(pool), k) <= 4096:  # small: draw among the unused sets exactly
            unused = [c for c in itertools.combinations(pool, k) if c not in used]
            chosen = unused[int(rng.integers(len(unused)))]
        else:  # large: collisions are rare, so redraw until unused
            while True:
                chosen = tuple(sorted(int(c) for c in rng.choice(pool, size=k, replace=False)))
                if chosen not in used:
                    break
        used.add(chosen)
        out.append(chosen)
    return out
