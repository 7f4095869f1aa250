"""Float64 NumPy references written directly from the papers' formulas (slow, clear)."""

import numpy as np


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def joint(theta, labels, num_target_classes):
    theta = np.asarray(theta, np.float64)
    out = np.zeros((num_target_classes, theta.shape[1]))
    for i, y in enumerate(labels):
        out[y] += theta[i]
    return out / len(labels)


def leep(theta, labels, num_target_classes):
    """Nguyen et al. 2020, eq. 1-2."""
    theta = np.asarray(theta, np.float64)
    p_yz = joint(theta, labels, num_target_classes)
    p_z = p_yz.sum(axis=0)
    cond = np.divide(p_yz, p_z, out=np.zeros_like(p_yz), where=p_z > 0)
    return float(np.mean([np.log(cond[y] @ theta[i]) for i, y in enumerate(labels)]))


def leep_from_logits(logits, labels, num_target_classes):
    """The same in log space: logsumexp_z(log P(y_i|z) + log_softmax(l_i)_z)."""
    logits = np.asarray(logits, np.float64)
    log_theta = logits - logits.max(1, keepdims=True)
    log_theta -= np.log(np.exp(log_theta).sum(1, keepdims=True))
    p_yz = joint(np.exp(log_theta), labels, num_target_classes)
    p_z = p_yz.sum(axis=0)
    with np.errstate(divide="ignore"):
        log_cond = np.log(p_yz) - np.log(np.where(p_z > 0, p_z, 1))
    total = 0.0
    for i, y in enumerate(labels):
        terms = log_cond[y] + log_theta[i]
        top = terms.max()
        total += top + np.log(np.exp(terms - top).sum())
    return total / len(labels)


def nce(theta, labels, num_target_classes):
    """Tran et al. 2019: -H(Y|Z) with z = argmax theta (first index on ties)."""
    theta = np.asarray(theta)
    z = np.argmax(theta, axis=1)
    counts = np.zeros((num_target_classes, theta.shape[1]))
    for y, zz in zip(labels, z, strict=True):
        counts[y, zz] += 1
    p_yz = counts / counts.sum()
    p_z = p_yz.sum(axis=0)
    total = 0.0
    for y in range(num_target_classes):
        for zz in range(theta.shape[1]):
            if p_yz[y, zz] > 0:
                total += p_yz[y, zz] * np.log(p_yz[y, zz] / p_z[zz])
    return total


def h_score(features, labels, num_target_classes):
    """Bao et al. 2019: tr(pinv(Cov f) @ Cov(E[f|y])), both normalised by n."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    mean = f.mean(axis=0)
    cov_f = (f - mean).T @ (f - mean) / len(f)
    g = np.zeros_like(f)
    for y in range(num_target_classes):
        rows = labels == y
        if rows.any():
            g[rows] = f[rows].mean(axis=0)
    cov_g = (g - mean).T @ (g - mean) / len(f)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def label_entropy(labels):
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())
