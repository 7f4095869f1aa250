"""Float64 NumPy references for the feature scores, written from the papers' formulas.

Slow and plain on purpose: dense matrices, loops over classes, ``np.linalg`` in float64.
Conventions (which peer each follows) are the ones documented in leep_jax.scores.
"""

import math

import numpy as np
import scipy.optimize


def one_hot_columns(labels, num_classes):
    labels = np.asarray(labels)
    return (labels[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)


# ---------------------------------------------------------------- LogME


def log_evidence(features, y, alpha, beta):
    """You et al. 2021, eq. 2: log p(y | F, alpha, beta), computed densely."""
    f = np.asarray(features, np.float64)
    n, d = f.shape
    a_matrix = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a_matrix, f.T @ y)
    _, log_det = np.linalg.slogdet(a_matrix)
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - log_det / 2
        - beta / 2 * np.sum((y - f @ m) ** 2)
        - alpha / 2 * m @ m
        - n / 2 * np.log(2 * np.pi)
    )


def logme_fixed_point_column(features, y, max_iterations=50, tolerance=1e-5):
    """The JMLR fixed point from (1, 1), stopping as leep_jax.logme does, evidence / n.

    gamma from all D eigenvalues of F^T F (zeros included); m = b A^-1 F^T y in the
    eigenbasis; the evidence is evaluated densely (eq. 2) at the final (alpha, beta).
    """
    f = np.asarray(features, np.float64)
    n, _ = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0, None)
    z = v.T @ (f.T @ y)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iterations):
        m = v @ (beta * z / (alpha + beta * s))
        gamma = np.sum(beta * s / (alpha + beta * s))
        new_alpha = gamma / (m @ m) if gamma > 0 else alpha  # zero features: alpha is moot
        new_beta = (n - gamma) / np.sum((y - f @ m) ** 2)
        done = abs(new_alpha / new_beta - alpha / beta) <= tolerance * alpha / beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return log_evidence(f, y, alpha, beta) / n


def logme_direct_column(features, y):
    """max over (log alpha, log beta) of the evidence / n, by scipy (no fixed point).

    L(a, b) is evaluated exactly in the eigenbasis of F^T F (all D eigenvalues), which
    makes each evaluation O(D) instead of a dense solve.
    """
    f = np.asarray(features, np.float64)
    n, dim = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0, None)
    z = v.T @ (f.T @ y)
    yy = y @ y

    def negative(params):
        alpha, beta = np.exp(params)
        m = beta * z / (alpha + beta * s)
        residual = yy - 2 * z @ m + s @ (m * m)
        evidence = (
            dim / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - np.sum(np.log(alpha + beta * s)) / 2
            - beta / 2 * residual
            - alpha / 2 * m @ m
            - n / 2 * np.log(2 * np.pi)
        )
        return -evidence / n

    best = scipy.optimize.minimize(
        negative,
        np.zeros(2),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-15, "maxiter": 5000},
    )
    return -best.fun


def logme(features, labels, num_classes, column=logme_fixed_point_column):
    """Mean over the classes present of the per-class evidence / n (features as given)."""
    y = one_hot_columns(labels, num_classes)
    present = y.sum(axis=0) > 0
    return float(np.mean([column(features, y[:, c]) for c in range(num_classes) if present[c]]))


def logme_regression(features, targets, column=logme_fixed_point_column):
    targets = np.asarray(targets, np.float64)
    return float(np.mean([column(features, targets[:, k]) for k in range(targets.shape[1])]))


# ---------------------------------------------------------------- regularized H-score


def ledoit_wolf(centred):
    """Ledoit & Wolf (2004) shrinkage as sklearn defines it, for centred rows.

    Returns (shrunk covariance, shrinkage): (1 - a) S + a mu I, S = X^T X / n,
    mu = tr(S) / D, a = min(b, d) / d with d = ||S - mu I||_F^2 / D and
    b = (sum_i ||x_i||^4 / n - ||S||_F^2) / (D n).
    """
    x = np.asarray(centred, np.float64)
    n, dim = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / dim
    if dim == 1:
        return s, 0.0
    delta = np.sum((s - mu * np.eye(dim)) ** 2) / dim
    beta = (np.sum(np.sum(x**2, axis=1) ** 2) / n - np.sum(s**2)) / (dim * n)
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    return (1 - shrinkage) * s + shrinkage * mu * np.eye(dim), shrinkage


def regularized_h_score(features, labels, num_classes):
    """Ibrahim et al. 2021 as tllib computes it: tr(pinv(Cov_a f) (1 - a) Cov(E[f|y]))
    with Cov_a the Ledoit-Wolf covariance of the centred features (normalised by n) and
    Cov(E[f|y]) normalised by n - 1 (np.cov)."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    f = f - f.mean(axis=0)
    cov_a, shrinkage = ledoit_wolf(f)
    g = np.zeros_like(f)
    for c in range(num_classes):
        rows = labels == c
        if rows.any():
            g[rows] = f[rows].mean(axis=0)
    cov_g = (g - g.mean(axis=0)).T @ (g - g.mean(axis=0)) / (len(f) - 1)
    return float(np.trace(np.linalg.pinv(cov_a, hermitian=True) @ ((1 - shrinkage) * cov_g)))


# ---------------------------------------------------------------- TransRate


def coding_rate(z, eps):
    """R(Z, eps) = 1/2 logdet(I + Z^T Z / (n eps)), n = rows of Z."""
    z = np.asarray(z, np.float64)
    n, dim = z.shape
    _, log_det = np.linalg.slogdet(np.eye(dim) + z.T @ z / (n * eps))
    return 0.5 * log_det


def transrate(features, labels, num_classes, eps=1e-4):
    """Huang et al. 2022 as tllib: R(F) - mean over classes of R(F_c), F centred once
    by the global mean; classes absent from the data are left out of the mean."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    f = f - f.mean(axis=0)
    rates = [coding_rate(f[labels == c], eps) for c in range(num_classes) if (labels == c).any()]
    return float(coding_rate(f, eps) - np.mean(rates))


# ---------------------------------------------------------------- GBC


def bhattacharyya(mean1, var1, mean2, var2):
    """D_B of two Gaussians with diagonal covariances (vectors of variances)."""
    var = (var1 + var2) / 2
    return np.sum((mean1 - mean2) ** 2 / var) / 8 + 0.5 * (
        np.sum(np.log(var)) - 0.5 * np.sum(np.log(var1)) - 0.5 * np.sum(np.log(var2))
    )


def gbc(features, labels, num_classes, gaussian_type="spherical"):
    """Pandy et al. 2022: -sum_{c != c'} exp(-D_B(c, c')); population variances floored
    at 1e-4 per dimension; spherical: every dimension gets their mean."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    stats = []
    for c in range(num_classes):
        rows = f[labels == c]
        if len(rows) == 0:
            continue
        var = np.maximum(rows.var(axis=0), 1e-4)
        if gaussian_type == "spherical":
            var = np.full_like(var, var.mean())
        stats.append((rows.mean(axis=0), var))
    total = 0.0
    for i, (m1, v1) in enumerate(stats):
        for j, (m2, v2) in enumerate(stats):
            if i != j:
                total += math.exp(-bhattacharyya(m1, v1, m2, v2))
    return -total
