"""Float64 NumPy references for SFDA, PARC and NLEEP, written from the algorithms.

SFDA follows the steps of TencentARC/SFDA's ``SFDA_Score`` as its paper and code
describe them (generalised eigenproblem and all); PARC follows Bolya et al. with exact
PCA; the EM is scikit-learn's full-covariance GaussianMixture after its k-means init.
"""

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ SFDA


def power_iteration_eigenvalue(matrix, rounds=3):
    """Largest eigenvalue by the SFDA paper's power iterations from the row sums."""
    x = matrix.sum(axis=1)

    def unit(v):  # a zero vector stays 0 (the peer's 0/0 is NaN)
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    for _ in range(rounds):
        y = unit(matrix @ x)
        x = unit(matrix @ y)
    return x @ matrix @ y


def _shrink(covariance, shrinkage):
    dim = covariance.shape[0]
    return (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)


def fisher_probabilities(x, classes, shrinkage=None):
    """p(class | x) of the regularised FDA classifier; classes are indices 0..K-1."""
    n, _ = x.shape
    num_classes = classes.max() + 1
    priors = np.array([np.mean(classes == c) for c in range(num_classes)])
    means = np.stack([x[classes == c].mean(axis=0) for c in range(num_classes)])
    within = np.zeros((x.shape[1], x.shape[1]))
    for c in range(num_classes):
        deviation = x[classes == c] - means[c]
        within += priors[c] * deviation.T @ deviation / len(deviation)
    if shrinkage is None:
        shrinkage = max(np.exp(-5 * power_iteration_eigenvalue(within)), 1e-10)
    centered = x - x.mean(axis=0)
    total = _shrink(centered.T @ centered / n, shrinkage)
    within = _shrink(within, shrinkage)
    # leep_jax's ridge at float32 resolution, which is the identity for a zero scatter
    # (every example on its class mean), where the peer's eigh fails.
    ridge = np.finfo(np.float32).eps * np.max(np.diag(within))
    within = within + (ridge if ridge > 0 else 1.0) * np.eye(len(within))
    _, vectors = scipy.linalg.eigh(total - within, within)  # V^T S_w V = I
    coefficients = means @ vectors @ vectors.T
    intercepts = -0.5 * np.sum(means * coefficients, axis=1) + np.log(priors)
    return softmax(x @ coefficients.T + intercepts), shrinkage, means


def sfda(features, labels):
    """SFDA (Shao et al. 2022) over the classes present in ``labels``."""
    x = np.asarray(features, np.float64)
    _, classes = np.unique(np.asarray(labels), return_inverse=True)
    num_classes = classes.max() + 1
    rows = np.arange(len(x))
    probabilities, shrinkage, means = fisher_probabilities(x, classes)
    softened = softmax(probabilities)
    confidence = softened[rows, classes][:, None]
    if num_classes > 1:
        others = (means.sum(axis=0) - means) / (num_classes - 1)
        x = confidence * x + (1 - confidence) * others[classes]
    probabilities, _, _ = fisher_probabilities(x, classes, shrinkage)
    return float(np.mean(probabilities[rows, classes]))


# ------------------------------------------------------------------------------ PARC


def pca_scores(features, num_dims):
    """Exact PCA scores with scikit-learn's sign convention (largest |entry| positive).

    Axes whose variance is below float32 resolution (``D * eps32`` of the largest) are
    zero columns, as leep_jax documents (in float64 they would be tiny noise).
    """
    x = np.asarray(features, np.float64)
    centered = x - x.mean(axis=0)
    _, singular_values, vt = np.linalg.svd(centered, full_matrices=False)
    variances = singular_values[:num_dims] ** 2
    kept = variances > x.shape[1] * np.finfo(np.float32).eps * singular_values[0] ** 2
    vt = vt[:num_dims]
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    return centered @ (vt * signs[:, None]).T * kept


def parc(features, labels, num_dims=32):
    """PARC (Bolya et al. 2021) as TencentARC/SFDA computes it, with exact PCA."""
    x = np.asarray(features, np.float64)
    if num_dims is not None:
        x = pca_scores(x, min(num_dims, x.shape[1]))
    # A constant column is 0, as scikit-learn's StandardScaler makes it: its rounded
    # mean would otherwise leave a tiny std, and dividing by it a column of +-1.
    std = np.where(np.ptp(x, axis=0) > 0, x.std(axis=0), 0)
    z = np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1), 0)
    _, classes = np.unique(np.asarray(labels), return_inverse=True)
    one_hot = np.eye(classes.max() + 1)[classes]
    upper = np.triu_indices(len(x), 1)
    feature_rdm = 1 - np.corrcoef(z)
    # Mathematically 0 within a class and K/(K-1) across; np.corrcoef's BLAS roundoff
    # turns some of the zeros into 1.1e-16, which splits the ties and moves rho by ~1
    # (on the x100 scale) in the peer. Rounding restores the exact ties.
    label_rdm = np.round(1 - np.corrcoef(one_hot), 12)
    return float(scipy.stats.spearmanr(feature_rdm[upper], label_rdm[upper])[0] * 100)


# ----------------------------------------------------------------------------- NLEEP


def pca_num_kept(features, fraction):
    """scikit-learn's PCA(n_components=fraction) count: first cumulative ratio > fraction."""
    x = np.asarray(features, np.float64)
    variances = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    ratio = np.cumsum(variances) / variances.sum()
    return int(np.searchsorted(ratio, fraction, side="right") + 1)


def kmeans_lloyd(x, weights, centers, tol=1e-4, max_iter=300):
    """scikit-learn's Lloyd rounds from ``centers``, with its stopping rule: no label
    changes, or the centres move (sum of squared shifts) by at most ``tol`` times the
    mean per-column variance. Rows of weight 0 are ignored; an empty cluster keeps its
    centre."""
    x, centers = np.asarray(x, np.float64), np.asarray(centers, np.float64)
    valid = np.asarray(weights) > 0
    tolerance = tol * x[valid].var(axis=0).mean()

    def assign(centers):
        return np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(axis=-1), axis=1)

    labels = assign(centers)
    for _ in range(max_iter):
        new = np.array(
            [
                x[valid & (labels == m)].mean(axis=0) if np.any(valid & (labels == m)) else c
                for m, c in enumerate(centers)
            ]
        )
        new_labels = assign(new)
        changed = np.any((new_labels != labels) & valid)
        moved = ((new - centers) ** 2).sum() > tolerance
        centers, labels = new, new_labels
        if not (changed and moved):
            break
    return centers


def _m_step(x, responsibilities, reg_covar):
    n, dims = x.shape
    counts = responsibilities.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = responsibilities.T @ x / counts[:, None]
    covariances = []
    for m in range(len(counts)):
        deviation = x - means[m]
        covariances.append(
            (responsibilities[:, m] * deviation.T) @ deviation / counts[m]
            + reg_covar * np.eye(dims)
        )
    return counts / counts.sum(), means, np.stack(covariances)


def _log_responsibilities(x, weights, means, covariances):
    dims = x.shape[1]
    log_joint = np.empty((len(x), len(weights)))
    for m in range(len(weights)):
        deviation = x - means[m]
        _, log_det = np.linalg.slogdet(covariances[m])
        mahalanobis = np.sum(deviation @ np.linalg.inv(covariances[m]) * deviation, axis=1)
        log_joint[:, m] = np.log(weights[m]) - 0.5 * (
            dims * np.log(2 * np.pi) + log_det + mahalanobis
        )
    log_norm = scipy.special.logsumexp(log_joint, axis=1)
    return log_joint - log_norm[:, None], float(log_norm.mean())


def gaussian_mixture_em(features, initial_means, reg_covar=1e-6, tol=1e-3, max_iter=100):
    """EM from hard assignments to ``initial_means``, stopping as scikit-learn does.

    Returns ``(log_responsibilities, lower_bound, num_iterations)``; the responsibilities
    are those of the final parameters.
    """
    x = np.asarray(features, np.float64)
    initial_means = np.asarray(initial_means, np.float64)
    distances = ((x[:, None, :] - initial_means[None]) ** 2).sum(axis=2)
    responsibilities = np.eye(len(initial_means))[distances.argmin(axis=1)]
    params = _m_step(x, responsibilities, reg_covar)
    lower_bound, iterations = -np.inf, 0
    while iterations < max_iter:
        iterations += 1
        previous = lower_bound
        log_resp, lower_bound = _log_responsibilities(x, *params)
        params = _m_step(x, np.exp(log_resp), reg_covar)
        if abs(lower_bound - previous) < tol:
            break
    log_resp, _ = _log_responsibilities(x, *params)
    return log_resp, lower_bound, iterations
