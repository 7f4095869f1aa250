"""Writes example source-model outputs for ``leep-jax score`` (seeded, NumPy only).

A stand-in for one forward pass of a pretrained source model over a labelled target
set: penultimate features are a noisy linear function of the target label, and the
source model's head maps them linearly to logits over its own source classes, so the
predictions carry real but imperfect information about the target labels.

Usage::

    python examples/make_example_outputs.py example/
    leep-jax score --predictions example/predictions.npy --labels example/labels.npy \\
        --num-target-classes 10 --features example/features.npy

Writes ``predictions.npy`` (``float32[n, num_source_classes]`` softmax probabilities,
or logits with ``--logits``), ``labels.npy`` (``int32[n]``) and ``features.npy``
(``float32[n, feature_dim]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_outputs(
    n: int,
    num_target_classes: int,
    num_source_classes: int,
    feature_dim: int,
    *,
    noise: float = 1.5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Labels, features and source logits of a synthetic target task.

    Returns:
      ``{"labels": int32[n], "features": float32[n, feature_dim],
      "logits": float32[n, num_source_classes]}``.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_target_classes, size=n).astype(np.int32)
    class_means = rng.normal(size=(num_target_classes, feature_dim))
    features = class_means[labels] + noise * rng.normal(size=(n, feature_dim))
    head = rng.normal(size=(feature_dim, num_source_classes)) / np.sqrt(feature_dim)
    logits = 3.0 * features @ head + rng.normal(size=num_source_classes)
    return {
        "labels": labels,
        "features": features.astype(np.float32),
        "logits": logits.astype(np.float32),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the .npy files into")
    parser.add_argument("--n", type=int, default=10_000, help="number of target examples")
    parser.add_argument("--num-target-classes", type=int, default=10)
    parser.add_argument("--num-source-classes", type=int, default=100)
    parser.add_argument("--feature-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--logits", action="store_true", help="store logits (score them with --from-logits)"
    )
    args = parser.parse_args(argv)

    outputs = make_outputs(
        args.n,
        args.num_target_classes,
        args.num_source_classes,
        args.feature_dim,
        seed=args.seed,
    )
    predictions = outputs["logits"]
    if not args.logits:
        predictions = softmax(predictions).astype(np.float32)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.save(args.out_dir / "predictions.npy", predictions)
    np.save(args.out_dir / "labels.npy", outputs["labels"])
    np.save(args.out_dir / "features.npy", outputs["features"])
    print(
        f"wrote {args.n} examples to {args.out_dir}/: predictions.npy "
        f"[{args.n}, {args.num_source_classes}] ({'logits' if args.logits else 'probabilities'}), "
        f"labels.npy [{args.n}] in 0..{args.num_target_classes - 1}, "
        f"features.npy [{args.n}, {args.feature_dim}]"
    )


if __name__ == "__main__":
    main()
