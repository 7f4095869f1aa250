"""A training loop that tracks transferability to a held-out task every epoch.

Trains a small CNN (:class:`leep_jax.models.SmallCNN`) with optax on FashionMNIST
classes 0-4 (the source task). After every epoch it scores the model, as a source
model, for a held-out target task the model never trains on (classes 5-9, relabelled
0-4): LEEP, NCE and H-score, from the metric objects of :mod:`leep_jax.metrics` in
``nnx.MultiMetric`` (exact LEEP in two phases: the joint, then the log-EEP with the
conditional frozen), and again with :func:`leep_jax.score_model`, which must agree.
The training loss, accuracy and NCE are tracked by an ``nnx.MultiMetric`` updated
inside the ``nnx.jit`` train step.

Usage::

    python examples/train_loop.py --quick      # under two minutes on a 2-core CPU
    python examples/train_loop.py --epochs 5   # all 30,000 source images

Needs the FashionMNIST IDX files (see ``leep_jax.data.load_fashion_mnist``).
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import leep_jax
from leep_jax import data, metrics
from leep_jax.models import SmallCNN, forward
from leep_jax.transfer import recalibrate_batch_norm

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
COLUMNS = ("epoch", "loss", "train_acc", "train_nce", "test_acc", "leep", "nce", "h_score", "s")


def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """``(images, labels, mask)`` batches of one size: the last is zero-padded, masked."""
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(y)
        mask = np.arange(batch_size) < len(y)
        yield np.pad(x, [(0, pad)] + [(0, 0)] * 3), np.pad(y, (0, pad)), mask


@nnx.jit
def train_step(model, optimizer, tracked, images, labels):
    def loss_fn(model):
        logits, features = forward(model, images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    # Average("loss") reads `loss`; Accuracy and the NCE metric read `logits`, `labels`.
    tracked.update(loss=loss, logits=logits, labels=labels)


@nnx.jit
def target_step(model, tracked, images, labels, mask):
    """Phase 1 on the target task: the LEEP joint, NCE counts and H-score sums."""
    logits, features = forward(model, images)
    tracked.update(logits=logits, features=features, labels=labels, mask=mask)


@nnx.jit
def log_eep_step(model, tracked, images, labels, mask, conditional):
    """Phase 2 of LEEP: the log-EEP with the conditional frozen after phase 1."""
    logits, _ = forward(model, images)
    tracked.update(logits=logits, labels=labels, mask=mask, conditional=conditional)


@nnx.jit
def correct_predictions(model, images, labels, mask):
    return jnp.sum((jnp.argmax(model(images), axis=-1) == labels) & mask)


def target_scores(model, target_phase_one, target_phase_two, batches):
    """LEEP, NCE and H-score of ``model`` on the target batches, from the metrics."""
    target_phase_one.reset()
    for images, labels, mask in batches:
        target_step(model, target_phase_one, images, labels, mask)
    frozen = metrics.conditional(target_phase_one.joint.value)
    target_phase_two.reset()
    for images, labels, mask in batches:
        log_eep_step(model, target_phase_two, images, labels, mask, frozen)
    scores = {**target_phase_one.compute(), **target_phase_two.compute()}
    return {name: float(scores[name]) for name in ("leep", "nce", "h_score")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (1,500 images, 3 epochs)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.epochs is not None and args.epochs < 1) or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be positive")
    epochs = args.epochs or (3 if args.quick else 5)
    per_class = {"regime": "small", "max_per_class": 300} if args.quick else {}
    test_cap = 100 if args.quick else None

    train, test = data.load_fashion_mnist("train"), data.load_fashion_mnist("test")
    source = data.make_task(
        train, test, SOURCE_CLASSES, seed=args.seed, max_test_per_class=test_cap, **per_class
    )
    target = data.make_task(
        train, test, TARGET_CLASSES, seed=args.seed + 1, regime="small",
        max_per_class=100 if args.quick else 500,
    )  # fmt: skip
    train_images, train_labels = data.to_float(source.train_images), source.train_labels
    test_images, test_labels = data.to_float(source.test_images), source.test_labels
    target_batches = list(
        padded_batches(data.to_float(target.train_images), target.train_labels, args.batch_size)
    )
    num_source, num_target = source.num_classes, target.num_classes

    model = SmallCNN(num_source, width=16, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    # Built once: the metric classes are part of what nnx.jit compiles against.
    tracked = nnx.MultiMetric(
        loss=nnx.metrics.Average("loss"),
        accuracy=nnx.metrics.Accuracy(),
        nce=metrics.NnxMetric(metrics.nce(num_source, num_source)),
    )
    target_phase_one = nnx.MultiMetric(
        joint=metrics.NnxMetric(metrics.joint(num_target, num_source)),
        nce=metrics.NnxMetric(metrics.nce(num_target, num_source)),
        h_score=metrics.NnxMetric(metrics.h_score(num_target, model.feature_dim)),
    )
    target_phase_two = nnx.MultiMetric(
        leep=metrics.NnxMetric(metrics.log_eep(num_target, num_source))
    )

    print(
        f"source: FashionMNIST classes {SOURCE_CLASSES}, {len(train_labels)} train / "
        f"{len(test_labels)} test images; target (held out): classes {TARGET_CLASSES}, "
        f"{len(target.train_labels)} images",
        flush=True,
    )
    print(" ".join(f"{c:>9}" for c in COLUMNS), flush=True)
    rng = np.random.default_rng(args.seed)
    differences = {"leep": 0.0, "nce": 0.0, "h_score": 0.0}
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        tracked.reset()
        order = rng.permutation(len(train_labels))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[start : start + args.batch_size]
            train_step(model, optimizer, tracked, train_images[batch], train_labels[batch])
        trained = {name: float(value) for name, value in tracked.compute().items()}

        # BatchNorm's moving averages lag the weights after a few dozen steps.
        recalibrate_batch_norm(model, train_images, batch_size=args.batch_size)
        model.eval()
        correct = sum(
            int(correct_predictions(model, *batch))
            for batch in padded_batches(test_images, test_labels, args.batch_size)
        )
        scores = target_scores(model, target_phase_one, target_phase_two, target_batches)
        # The same scores in one call; compiled once, reused by every later epoch.
        reference = leep_jax.score_model(model, target_batches, num_target)
        for name in differences:
            differences[name] = max(differences[name], abs(scores[name] - reference[name]))
        row = (
            epoch,
            trained["loss"],
            trained["accuracy"],
            trained["nce"],
            correct / len(test_labels),
            scores["leep"],
            scores["nce"],
            scores["h_score"],
            time.perf_counter() - started,
        )
        print(f"{row[0]:>9d} " + " ".join(f"{v:>9.4f}" for v in row[1:]), flush=True)
    print(
        "metrics vs leep_jax.score_model, max |difference|: "
        + ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
    )


if __name__ == "__main__":
    main()
