"""NumPy / scikit-learn versions of the feature scores as the public peer code writes them.

The baselines of ``benchmarks/scores.py``. Each keeps its peer's structure (written here,
not copied): thuml/LogME's Python loop over classes with its fixed point; the
Transfer-Learning-Library (``tllib/ranking``) regularized H-score with scikit-learn's
LedoitWolf and TransRate with its loop over classes; google-research stable_transfer's
GBC with its loop over class pairs (NumPy in place of TensorFlow); TencentARC/SFDA's
``SFDA_Score`` (scipy's generalised ``eigh``), ``PARC`` (scikit-learn randomized PCA,
``np.corrcoef``, ``scipy.stats.spearmanr``) and ``NLEEP`` (scikit-learn PCA and
GaussianMixture). Class counts are arguments instead of ``labels.max() + 1``. The
values follow each peer's conventions (NLEEP without the log, GBC without the factor D
in the spherical log-determinant), so they need not equal leep-jax's.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

# ------------------------------------------------------------------------ LogME


def _logme_evidence(u, sigma, y, n, dims):
    """thuml/LogME's fixed point for one target column (at most 11 rounds)."""
    x = u.T @ y
    x2 = x**2
    residual_x2 = (y**2).sum() - x2.sum()
    alpha, beta = 1.0, 1.0
    for _ in range(11):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
        res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + residual_x2
        alpha = gamma / (m2 + 1e-5)
        beta = (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    evidence = (
        dims / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    )
    return evidence / n


def _logme_columns(features, columns):
    f = features.astype(np.float64)
    n, dims = f.shape
    if n > dims:  # thuml's truncated SVD through F^T F
        _, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        rank = int(np.sum(s > 1e-10))
        s, vh = s[:rank], vh[:rank]
        u = (f @ vh.T) / s[None, :]
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = (s**2)[:, None]
    evidences = [_logme_evidence(u, sigma, column[:, None], n, dims) for column in columns]
    return float(np.mean(evidences))


def logme(features, labels, num_classes):
    return _logme_columns(features, [(labels == c).astype(np.float64) for c in range(num_classes)])


def logme_regression(features, targets):
    return _logme_columns(
        features, [targets[:, j].astype(np.float64) for j in range(targets.shape[1])]
    )


# ------------------------------------------------------- regularized H-score, TransRate


def regularized_h_score(features, labels, num_classes):
    f = features.astype(np.float64)
    estimate = LedoitWolf(assume_centered=False).fit(f)
    alpha, covariance = estimate.shrinkage_, estimate.covariance_
    class_means = np.zeros_like(f)
    for c in range(num_classes):
        members = labels == c
        if members.any():
            class_means[members] = f[members].mean(axis=0)
    between = np.cov(class_means, rowvar=False)
    return float(np.trace(np.linalg.pinv(covariance, rcond=1e-15) @ ((1 - alpha) * between)))


def _coding_rate(z, eps):
    n, dims = z.shape
    _, rate = np.linalg.slogdet(np.eye(dims) + z.T @ z / (n * eps))
    return 0.5 * rate


def transrate(features, labels, num_classes, eps=1e-4):
    f = features.astype(np.float64)
    f = f - f.mean(axis=0, keepdims=True)
    class_rates = sum(_coding_rate(f[labels == c], eps) for c in range(num_classes))
    return float(_coding_rate(f, eps) - class_rates / num_classes)


# ------------------------------------------------------------------------------ GBC


def gbc(features, labels, num_classes):
    """stable_transfer's GBC with spherical Gaussians (its log-determinant, no factor D)."""
    f = features.astype(np.float64)
    stats = []
    for c in range(num_classes):
        members = f[labels == c]
        stats.append((members.mean(axis=0), np.maximum(members.var(axis=0), 1e-4).mean()))
    total = 0.0
    for c1 in range(num_classes):
        for c2 in range(num_classes):
            if c1 == c2:
                continue
            (mu1, var1), (mu2, var2) = stats[c1], stats[c2]
            average = (var1 + var2) / 2
            distance = np.sum((mu1 - mu2) ** 2) / average / 8 + 0.5 * (
                np.log(average) - 0.5 * np.log(var1) - 0.5 * np.log(var2)
            )
            total += np.exp(-distance)
    return float(-total)


# ----------------------------------------------------------------------------- SFDA


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _shrunk(covariance, shrinkage):
    dims = covariance.shape[0]
    out = (1 - shrinkage) * covariance
    out.flat[:: dims + 1] += shrinkage * np.trace(covariance) / dims
    return out


def _power_iteration(matrix, rounds=3):
    x = matrix.sum(axis=1)
    for _ in range(rounds):
        y = matrix @ x
        y /= np.linalg.norm(y)
        x = matrix @ y
        x /= np.linalg.norm(x)
    return x @ matrix @ y


def _fda(x, labels, num_classes, shrinkage):
    priors = np.bincount(labels, minlength=num_classes) / len(labels)
    means = np.zeros((num_classes, x.shape[1]))
    np.add.at(means, labels, x)
    means /= np.bincount(labels, minlength=num_classes)[:, None]
    within = np.zeros((x.shape[1], x.shape[1]))
    for c in range(num_classes):
        within += priors[c] * np.atleast_2d(np.cov(x[labels == c].T, bias=True))
    if shrinkage is None:
        shrinkage = max(np.exp(-5 * _power_iteration(within)), 1e-10)
    total = _shrunk(np.cov(x.T, bias=True), shrinkage)
    within = _shrunk(within, shrinkage)
    values, vectors = scipy.linalg.eigh(total - within, within)
    vectors = vectors[:, np.argsort(values)[::-1]]
    coefficients = means @ vectors @ vectors.T
    intercepts = -0.5 * np.diag(means @ coefficients.T) + np.log(priors)
    return _softmax(x @ coefficients.T + intercepts), shrinkage, means


def sfda(features, labels, num_classes):
    x = features.astype(np.float64)
    probabilities, shrinkage, means = _fda(x, labels, num_classes, None)
    probabilities = np.exp(probabilities) / np.exp(probabilities).sum(axis=1, keepdims=True)
    others = (means.sum(axis=0) - means) / (num_classes - 1)
    for c in range(num_classes):
        members = np.where(labels == c)[0]
        p = probabilities[members, c][:, None]
        x[members] = p * x[members] + (1 - p) * others[c]
    probabilities, _, _ = _fda(x, labels, num_classes, shrinkage)
    return float(np.mean(probabilities[np.arange(len(labels)), labels]))


# ----------------------------------------------------------------------------- PARC


def parc(features, labels, num_classes, num_dims=32):
    reduced = PCA(
        n_components=min(num_dims, *features.shape),
        svd_solver="randomized",
        random_state=1919,
        iterated_power=1,
    ).fit_transform(features)
    standardized = StandardScaler().fit_transform(reduced)
    feature_rdm = 1 - np.corrcoef(standardized)
    label_rdm = 1 - np.corrcoef(np.eye(num_classes)[labels])
    upper = np.triu_indices(len(labels), 1)
    return float(scipy.stats.spearmanr(feature_rdm[upper], label_rdm[upper])[0] * 100)


def parc_bytes(n: int) -> float:
    """Peak working set of :func:`parc`: about eight float64 ``[n, n]`` arrays."""
    return 8.0 * 8 * n * n


# ---------------------------------------------------------------------------- NLEEP


def nleep(features, labels, num_classes, components_per_class=5, seed=0):
    reduced = PCA(n_components=0.8).fit_transform(features)
    mixture = GaussianMixture(n_components=components_per_class * num_classes, random_state=seed)
    posteriors = mixture.fit(reduced).predict_proba(reduced)
    joint = np.zeros((num_classes, posteriors.shape[1]))
    for c in range(num_classes):
        joint[c] = posteriors[labels == c].sum(axis=0) / len(labels)
    conditional = joint / joint.sum(axis=0)
    expected = posteriors @ conditional.T
    return float(np.mean(expected[np.arange(len(labels)), labels]))  # the peer has no log
