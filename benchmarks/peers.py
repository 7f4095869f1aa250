"""NumPy versions of the scores as the public peer code writes them (the baselines).

The shape of the computation follows the common public implementations (the LogME
repository's ``LEEP``/``NCE``/``H_Score``, the Transfer-Learning-Library ranking module):
a Python loop over target classes for the per-class sums, then for LEEP a dense
``[n, Y]`` matmul ``predictions @ conditional.T`` and a pick of column ``y_i``, and for
H-score a dense ``[n, D]`` array of class means and two ``np.cov`` calls.

Two changes make these baselines *faster* than the originals, so that speedups against
them are not inflated: the pick of column ``y_i`` is one fancy-index instead of a
Python loop over examples, and LEEP stays in float32 (the originals build the joint in
float64, which promotes the ``[n, Z] @ [Z, Y]`` matmul to float64). Class counts are
arguments, not ``max(label) + 1``.
"""

from __future__ import annotations

import numpy as np


def leep(predictions: np.ndarray, labels: np.ndarray, num_target_classes: int) -> float:
    """LEEP of ``[n, Z]`` float32 probabilities and ``int[n]`` labels."""
    n, num_source = predictions.shape
    joint = np.zeros((num_target_classes, num_source), dtype=predictions.dtype)
    for target_class in range(num_target_classes):
        joint[target_class] = predictions[labels == target_class].sum(axis=0)
    joint /= n
    marginal = joint.sum(axis=0, keepdims=True)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = predictions @ conditional.T  # [n, Y]: the dense intermediate
    picked = expected[np.arange(n), labels]
    return float(np.mean(np.log(picked)))


def nce(predictions: np.ndarray, labels: np.ndarray, num_target_classes: int) -> float:
    """NCE (``-H(Y | argmax Z)``) of ``[n, Z]`` predictions and ``int[n]`` labels."""
    n, num_source = predictions.shape
    hard = predictions.argmax(axis=1)
    joint = np.zeros((num_target_classes, num_source), dtype=np.float64)
    for target_class in range(num_target_classes):
        joint[target_class] = np.bincount(hard[labels == target_class], minlength=num_source)
    joint /= n
    marginal = joint.sum(axis=0, keepdims=True)
    positive = joint > 0
    conditional = np.divide(joint, marginal, out=np.ones_like(joint), where=positive)
    return float(np.sum(np.where(positive, joint * np.log(conditional), 0.0)))


def h_score(features: np.ndarray, labels: np.ndarray, num_target_classes: int) -> float:
    """H-score ``tr(pinv(Cov f) @ Cov(E[f|y]))`` of ``[n, D]`` features, as peers do it."""
    feature_cov = np.cov(features, rowvar=False)
    class_means = np.zeros_like(features)
    for target_class in range(num_target_classes):
        members = labels == target_class
        if members.any():
            class_means[members] = features[members].mean(axis=0)
    between_cov = np.cov(class_means, rowvar=False)
    return float(np.trace(np.linalg.pinv(feature_cov, rcond=1e-15) @ between_cov))
