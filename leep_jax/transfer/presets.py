"""The source-model zoos: named lists of `SourceSpec` (FashionMNIST sources).

* `default_zoo`: seven models that differ the way real zoos do: two architectures
  (ResNet20, SmallCNN) at several widths, different source label sets (all ten
  FashionMNIST classes, classes 0-4, tops only, footwear and bags) and different
  training lengths; about 5.5 CPU-minutes on a 2-core machine. `leep-jax rank` ranks
  it, and the full experiment's RQ4 selects from it.
* `selection_zoo`: sixteen models for the reproduction's source-selection study (RQ4):
  three architectures, five widths, six source label sets (40 classes included) and
  training lengths from 32 steps to several epochs.
* `quick_zoo`: five small CNNs (seconds each), RQ4 of the quick experiment.
* `tiny_zoo`: three small CNNs of 24 steps each, for tests and smoke runs.
"""

from __future__ import annotations

from leep_jax.transfer.zoo import SourceSpec

__all__ = ["FASHION_MNIST_CLASSES", "default_zoo", "quick_zoo", "selection_zoo", "tiny_zoo"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

TOPS = (0, 2, 4, 6)  # T-shirt/top, Pullover, Coat, Shirt
FOOTWEAR_AND_BAGS = (5, 7, 8, 9)  # Sandal, Sneaker, Bag, Ankle boot
ALL = tuple(range(10))
FIRST_HALF = (0, 1, 2, 3, 4)
SECOND_HALF = (5, 6, 7, 8, 9)
ROTATED = tuple(range(40))  # fashion_mnist_rot4: 10 classes x 4 rotations


def default_zoo() -> list[SourceSpec]:
    """The default FashionMNIST source zoo: seven models, about 5.5 CPU-minutes.

    Models differ in architecture (ResNet20, SmallCNN), width, source label set and
    training length, like the public zoos LEEP ranks. On an idle 2-core CPU the first
    ``leep-jax rank`` (training all seven, then scoring) took 3.7 minutes of wall time
    (286 s of user CPU time); under load (load average 5-11) the training alone took
    10-12 minutes. The ResNets take two thirds of it. Source test accuracies range from
    0.43 (the short run) to 0.93.
    """
    return [
        SourceSpec(
            "resnet20-fmnist-all", "resnet20", ALL, train_examples=5000, epochs=2,
        ),
        SourceSpec(
            "resnet20-fmnist-0to4", "resnet20", FIRST_HALF, train_examples=3500, epochs=2,
        ),
        SourceSpec(
            "cnn16-fmnist-all", "small_cnn", ALL, {"width": 16},
            train_examples=15000, epochs=3,
        ),
        SourceSpec(
            "cnn16-fmnist-0to4", "small_cnn", FIRST_HALF, {"width": 16},
            train_examples=10000, epochs=3,
        ),
        SourceSpec(
            "cnn8-fmnist-tops", "small_cnn", TOPS, {"width": 8},
            train_examples=8000, epochs=3,
        ),
        SourceSpec(
            "cnn32-fmnist-footwear-bags", "small_cnn", FOOTWEAR_AND_BAGS, {"width": 32},
            train_examples=8000, epochs=2,
        ),
        SourceSpec(
            "cnn16-fmnist-all-short", "small_cnn", ALL, {"width": 16},
            train_examples=2000, epochs=1,
        ),
    ]  # fmt: skip


def tiny_zoo() -> list[SourceSpec]:
    """Three small CNNs trained for 24 steps each (seconds): for tests and smoke runs."""
    common = {"train_examples": 512, "test_examples": 256, "epochs": 3, "batch_size": 64}
    return [
        SourceSpec("tiny-cnn8-fmnist-all", "small_cnn", ALL, {"width": 8}, **common),
        SourceSpec("tiny-cnn8-fmnist-0to4", "small_cnn", FIRST_HALF, {"width": 8}, **common),
        SourceSpec("tiny-cnn4-fmnist-tops", "small_cnn", TOPS, {"width": 4}, **common),
    ]


def quick_zoo() -> list[SourceSpec]:
    """Five small CNNs (seconds each on a CPU) for quick runs of RQ4.

    They differ in source label set and training length (like `default_zoo`, which
    also varies architecture and width).
    """
    common = {"test_examples": 500, "batch_size": 64}
    return [
        SourceSpec("quick-cnn8-fmnist-all", "small_cnn", ALL, {"width": 8},
                   train_examples=1500, epochs=2, **common),
        SourceSpec("quick-cnn8-fmnist-0to4", "small_cnn", FIRST_HALF, {"width": 8},
                   train_examples=1000, epochs=2, **common),
        SourceSpec("quick-cnn8-fmnist-tops", "small_cnn", TOPS, {"width": 8},
                   train_examples=800, epochs=2, **common),
        SourceSpec("quick-cnn8-fmnist-footwear-bags", "small_cnn", FOOTWEAR_AND_BAGS, {"width": 8},
                   train_examples=800, epochs=2, **common),
        SourceSpec("quick-cnn8-fmnist-all-short", "small_cnn", ALL, {"width": 8},
                   train_examples=256, epochs=1, **common),
    ]  # fmt: skip


def selection_zoo() -> list[SourceSpec]:
    """The source-selection zoo of the paper reproduction (RQ4): sixteen models.

    Like a real zoo they differ in architecture (SmallCNN at widths 8 to 64, ResNet20),
    source label set (all ten FashionMNIST classes, classes 0-4, classes 5-9, tops,
    footwear and bags, and the 40 classes of ``fashion_mnist_rot4``) and training
    length (from 32 steps to six epochs of all examples), so their source test
    accuracies and their transfer to a target differ. All train on FashionMNIST's
    training split; about 35 CPU-minutes on a 2-core machine.
    """
    rot = {"dataset": "fashion_mnist_rot4"}
    return [
        SourceSpec("cnn16-fmnist-all", "small_cnn", ALL, {"width": 16}, epochs=6),
        SourceSpec("cnn8-fmnist-all", "small_cnn", ALL, {"width": 8},
                   train_examples=30000, epochs=6),
        SourceSpec("cnn32-fmnist-all", "small_cnn", ALL, {"width": 32},
                   train_examples=30000, epochs=5),
        SourceSpec("cnn64-fmnist-all", "small_cnn", ALL, {"width": 64},
                   train_examples=10000, epochs=4),
        SourceSpec("cnn16-fmnist-all-short", "small_cnn", ALL, {"width": 16},
                   train_examples=2000, epochs=1),
        SourceSpec("cnn16-fmnist-0to4", "small_cnn", FIRST_HALF, {"width": 16}, epochs=6),
        SourceSpec("cnn64-fmnist-0to4", "small_cnn", FIRST_HALF, {"width": 64},
                   train_examples=8000, epochs=3),
        SourceSpec("cnn32-fmnist-5to9", "small_cnn", SECOND_HALF, {"width": 32}, epochs=5),
        SourceSpec("cnn8-fmnist-tops", "small_cnn", TOPS, {"width": 8}, epochs=6),
        SourceSpec("cnn16-fmnist-tops-short", "small_cnn", TOPS, {"width": 16},
                   train_examples=1000, epochs=2),
        SourceSpec("cnn32-fmnist-footwear-bags", "small_cnn", FOOTWEAR_AND_BAGS, {"width": 32},
                   epochs=4),
        SourceSpec("cnn16-fmnist-rot4", "small_cnn", ROTATED, {"width": 16}, epochs=6, **rot),
        SourceSpec("cnn32-fmnist-rot4", "small_cnn", ROTATED, {"width": 32},
                   train_examples=30000, epochs=5, **rot),
        SourceSpec("cnn8-fmnist-rot4-short", "small_cnn", ROTATED, {"width": 8},
                   train_examples=5000, epochs=2, **rot),
        SourceSpec("resnet20-fmnist-all", "resnet20", ALL, train_examples=15000, epochs=3),
        SourceSpec("resnet20-fmnist-0to4", "resnet20", FIRST_HALF,
                   train_examples=10000, epochs=3),
    ]  # fmt: skip
