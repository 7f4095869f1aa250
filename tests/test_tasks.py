"""Target-task generator: class subsets, regimes, imbalance, label noise, determinism."""

import dataclasses

import numpy as np
import pytest
import scipy.stats

from leep_jax import data
from leep_jax.data.tasks import TargetTask, imbalanced_class_sizes, make_task, sample_tasks


@pytest.fixture(scope="module")
def fashion():
    return data.load_fashion_mnist("train"), data.load_fashion_mnist("test")


@pytest.fixture(scope="module")
def digits():
    return data.load_digits("train"), data.load_digits("test")


def check_consistent(task, train, test):
    """Labels, indices and images of a task agree with the dataset it came from."""
    classes = np.asarray(task.classes)
    k = task.num_classes
    # Relabelling: new label j stands for original class classes[j].
    np.testing.assert_array_equal(classes[task.clean_train_labels], train[1][task.train_indices])
    np.testing.assert_array_equal(classes[task.test_labels], test[1][task.test_indices])
    np.testing.assert_array_equal(np.unique(task.clean_train_labels), np.arange(k))
    np.testing.assert_array_equal(np.unique(task.test_labels), np.arange(k))
    np.testing.assert_array_equal(task.train_images, train[0][task.train_indices])
    np.testing.assert_array_equal(task.test_images, test[0][task.test_indices])
    assert np.unique(task.train_indices).size == task.train_indices.size  # no duplicates
    assert np.unique(task.test_indices).size == task.test_indices.size
    assert task.train_labels.dtype == np.int32 and task.test_labels.dtype == np.int32
    assert task.train_images.dtype == np.uint8
    assert task.train_labels.min() >= 0 and task.train_labels.max() < k
    for array in (task.train_indices, task.train_labels, task.test_indices, task.test_labels):
        assert not array.flags.writeable


def counts_of(labels, values):
    return np.array([np.count_nonzero(labels == v) for v in values])


@pytest.mark.parametrize("classes", [(5, 9), (9, 5, 7), (5, 6, 7, 8, 9)])
def test_large_task_takes_every_example(fashion, classes):
    train, test = fashion
    task = make_task(train, test, classes, seed=0, dataset="fashion_mnist")
    check_consistent(task, train, test)
    assert task.classes == classes and task.num_classes == len(classes)
    np.testing.assert_array_equal(task.train_class_counts, counts_of(train[1], classes))
    np.testing.assert_array_equal(np.bincount(task.test_labels), counts_of(test[1], classes))
    assert task.regime == "large" and task.num_noisy_labels == 0


def test_large_task_on_unequal_classes(digits):
    train, test = digits
    classes = (0, 3, 8)
    task = make_task(train, test, classes, seed=1)
    check_consistent(task, train, test)
    np.testing.assert_array_equal(task.train_class_counts, counts_of(train[1], classes))


@pytest.mark.parametrize("max_per_class", [50, 7])
def test_small_task_caps_each_class(digits, max_per_class):
    train, test = digits
    classes = (1, 2, 4, 7)
    task = make_task(train, test, classes, seed=2, regime="small", max_per_class=max_per_class)
    check_consistent(task, train, test)
    expected = np.minimum(counts_of(train[1], classes), max_per_class)
    np.testing.assert_array_equal(task.train_class_counts, expected)
    # The test split is not reduced by the small regime.
    np.testing.assert_array_equal(np.bincount(task.test_labels), counts_of(test[1], classes))


def test_small_task_draws_a_random_subset(fashion):
    train, test = fashion
    a = make_task(train, test, (5, 6), seed=0, regime="small")
    b = make_task(train, test, (5, 6), seed=1, regime="small")
    assert not np.array_equal(np.sort(a.train_indices), np.sort(b.train_indices))


@pytest.mark.parametrize("num_classes", [2, 3, 5, 10])
@pytest.mark.parametrize("ratio", [1.0, 2.0, 10.0, 100.0])
def test_imbalanced_class_sizes_profile(num_classes, ratio):
    sizes = imbalanced_class_sizes(num_classes, 6000, ratio)
    assert sizes.shape == (num_classes,)
    assert sizes[0] == 6000 and sizes[-1] == round(6000 / ratio)
    assert np.all(np.diff(sizes) <= 0)
    # Geometric: consecutive ratios all equal ratio**(1/(k-1)), up to integer rounding.
    np.testing.assert_allclose(sizes[:-1] / sizes[1:], ratio ** (1 / (num_classes - 1)), rtol=1e-2)


@pytest.mark.parametrize("regime, ratio", [("large", 10.0), ("large", 3.0), ("small", 5.0)])
def test_imbalanced_task(fashion, regime, ratio):
    train, test = fashion
    classes = (5, 6, 7, 8, 9)
    task = make_task(train, test, classes, seed=3, regime=regime, imbalance_ratio=ratio)
    check_consistent(task, train, test)
    largest = 6000 if regime == "large" else 50
    counts = task.train_class_counts
    np.testing.assert_array_equal(np.sort(counts)[::-1], imbalanced_class_sizes(5, largest, ratio))
    assert counts.max() / counts.min() == pytest.approx(ratio, rel=0.5 / counts.min())
    assert task.imbalance_ratio == ratio
    # The test split stays balanced.
    np.testing.assert_array_equal(np.bincount(task.test_labels), np.full(5, 1000))


def test_imbalance_assignment_is_random(fashion):
    train, test = fashion
    tasks = [make_task(train, test, (5, 6, 7), seed=s, imbalance_ratio=4.0) for s in range(12)]
    majority = {int(np.argmax(t.train_class_counts)) for t in tasks}
    assert len(majority) > 1  # the largest class is not always the same one


@pytest.mark.parametrize("noise_rate", [0.0, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("classes", [(5, 6), (0, 2, 4, 6, 8)])
def test_label_noise_exact(digits, noise_rate, classes):
    train, test = digits
    task = make_task(train, test, classes, seed=4, noise_rate=noise_rate)
    check_consistent(task, train, test)
    n = task.train_labels.size
    flipped = task.train_labels != task.clean_train_labels
    # Exactly round(p * n) labels changed, and every changed label is a different class.
    assert task.num_noisy_labels == np.count_nonzero(flipped) == int(np.floor(noise_rate * n + 0.5))
    assert task.noise_rate == noise_rate


def test_label_noise_uniform_over_other_classes(fashion):
    train, test = fashion
    task = make_task(train, test, (5, 6, 7, 8), seed=5, noise_rate=0.5)
    flipped = task.train_labels != task.clean_train_labels
    # Offsets (noisy - clean) mod k should be uniform over 1..k-1.
    offsets = (task.train_labels[flipped] - task.clean_train_labels[flipped]) % 4
    observed = np.bincount(offsets, minlength=4)
    assert observed[0] == 0
    assert scipy.stats.chisquare(observed[1:]).pvalue > 1e-3
    # The noisy labels still cover every class, and the test labels are untouched.
    np.testing.assert_array_equal(np.unique(task.train_labels), np.arange(4))


def test_noise_with_imbalance_and_small(digits):
    train, test = digits
    task = make_task(
        train, test, (1, 3, 5), seed=6, regime="small", imbalance_ratio=4.0, noise_rate=0.2
    )
    check_consistent(task, train, test)
    # 50 * 4**(-j/2) for j = 0, 1, 2: 50, 25, 12.5 (rounded half up).
    np.testing.assert_array_equal(np.sort(task.train_class_counts), [13, 25, 50])
    assert task.num_noisy_labels == 18  # 0.2 * 88 = 17.6


def test_test_split_cap(fashion):
    train, test = fashion
    task = make_task(train, test, (5, 7), seed=7, max_test_per_class=30)
    check_consistent(task, train, test)
    np.testing.assert_array_equal(np.bincount(task.test_labels), [30, 30])
    assert np.all(np.diff(task.test_indices) > 0)  # dataset order


def test_make_task_deterministic(fashion):
    train, test = fashion
    kwargs = dict(regime="small", imbalance_ratio=3.0, noise_rate=0.3, max_test_per_class=20)
    a = make_task(train, test, (5, 8, 9), seed=11, **kwargs)
    b = make_task(train, test, (5, 8, 9), seed=11, **kwargs)
    c = make_task(train, test, (5, 8, 9), seed=12, **kwargs)
    for field in ("train_indices", "train_labels", "clean_train_labels", "test_indices"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.train_indices, c.train_indices)
    assert not np.array_equal(a.train_labels, c.train_labels)
    assert a.seed == 11


def test_training_order_is_shuffled(fashion):
    train, test = fashion
    task = make_task(train, test, (5, 6), seed=0, regime="small")
    # Classes interleave (not all of class 0 then all of class 1).
    assert np.count_nonzero(np.diff(task.clean_train_labels)) > 10


def test_sample_tasks(fashion):
    train, test = fashion
    pool = range(5, 10)
    tasks = sample_tasks(
        train, test, class_pool=pool, num_tasks=12, seed=0, regime="small", dataset="fmnist"
    )
    assert len(tasks) == 12 and len({t.name for t in tasks}) == 12
    sizes = set()
    for task in tasks:
        check_consistent(task, train, test)
        assert 2 <= task.num_classes <= 5
        assert set(task.classes) <= set(pool) and list(task.classes) == sorted(task.classes)
        assert task.dataset == "fmnist" and task.name.startswith("fmnist-s0-t")
        sizes.add(task.num_classes)
    assert len(sizes) > 1  # the class count varies between tasks


def test_sample_tasks_class_count_range(digits):
    train, test = digits
    tasks = sample_tasks(
        train, test, class_pool=range(10), num_tasks=15, seed=1, min_classes=3, max_classes=4
    )
    assert {t.num_classes for t in tasks} == {3, 4}


def test_sample_tasks_deterministic_and_prefix_stable(digits):
    train, test = digits
    kwargs = dict(class_pool=range(10), seed=5, regime="small", noise_rate=0.1)
    few = sample_tasks(train, test, num_tasks=3, **kwargs)
    many = sample_tasks(train, test, num_tasks=6, **kwargs)
    other = sample_tasks(train, test, num_tasks=3, **{**kwargs, "seed": 6})
    for a, b in zip(few, many[:3], strict=True):
        assert a.classes == b.classes and a.name == b.name
        np.testing.assert_array_equal(a.train_indices, b.train_indices)
        np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert any(
        a.classes != b.classes or not np.array_equal(a.train_indices, b.train_indices)
        for a, b in zip(few, other, strict=True)
    )


@pytest.mark.parametrize(
    "classes, kwargs, match",
    [
        ((5,), {}, "at least 2 classes"),
        ((), {}, "at least 2 classes"),
        ((5, 5), {}, "distinct"),
        ((5, 11), {}, "no examples"),
        ((5, 6), dict(regime="medium"), "regime"),
        ((5, 6), dict(regime="small", max_per_class=0), "max_per_class"),
        ((5, 6), dict(max_test_per_class=0), "max_test_per_class"),
        ((5, 6), dict(noise_rate=1.5), "noise_rate"),
        ((5, 6), dict(noise_rate=-0.1), "noise_rate"),
        ((5, 6), dict(imbalance_ratio=0.5), "imbalance_ratio"),
        ((5, 6), dict(imbalance_ratio=float("nan")), "imbalance_ratio"),
        ((5, 6), dict(regime="small", imbalance_ratio=200.0), "too large"),
    ],
)
def test_make_task_rejects(fashion, classes, kwargs, match):
    train, test = fashion
    with pytest.raises(ValueError, match=match):
        make_task(train, test, classes, seed=0, **kwargs)


def test_make_task_rejects_mismatched_arrays(fashion):
    train, test = fashion
    with pytest.raises(ValueError, match="do not match"):
        make_task((train[0][:10], train[1]), test, (5, 6), seed=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_pool=[5]), "min_classes"),
        (dict(class_pool=[5, 5, 6]), "repeated"),
        (dict(class_pool=range(5, 10), min_classes=1), "min_classes"),
        (dict(class_pool=range(5, 10), max_classes=6), "pool size"),
        (dict(class_pool=range(5, 10), num_tasks=0), "num_tasks"),
    ],
)
def test_sample_tasks_rejects(digits, kwargs, match):
    train, test = digits
    kwargs = {"num_tasks": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_tasks(train, test, **kwargs)


def test_target_task_refuses_empty_split(digits):
    train, test = digits
    task = make_task(train, test, (0, 1), seed=0)
    empty = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="empty"):
        dataclasses.replace(task, test_indices=empty, test_labels=empty.astype(np.int32))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dataclasses.replace(task, classes=(0,))


def test_target_task_is_frozen(digits):
    train, test = digits
    task = make_task(train, test, (0, 1), seed=0)
    assert isinstance(task, TargetTask)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.noise_rate = 0.5
