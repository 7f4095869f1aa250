"""NLEEP: LEEP of a Gaussian mixture's posteriors (Li et al., CVPR 2021)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.feature_sums import matmul, symmetric
from leep_jax.scores.leep import leep
from leep_jax.scores.validation import accumulation_dtype, is_concrete, validate_features

# scikit-learn's GaussianMixture and KMeans defaults.
REG_COVAR = 1e-6
TOLERANCE = 1e-3
MAX_ITERATIONS = 100
KMEANS_MAX_ITERATIONS = 300
KMEANS_TOLERANCE = 1e-4
# Tenfold jitter increases before a covariance's Cholesky factor gives up (NaN).
JITTER_RETRIES = 6
# Components per lax.map step: about this many [n, dims] elements in flight.
_BATCH_ELEMENTS = 1 << 24


class GaussianMixture(NamedTuple):
    """A fitted mixture; ``dims`` columns, of which the first ``num_kept`` are real."""

    log_weights: jax.Array  # f32[M]
    means: jax.Array  # f32[M, dims]
    precision_cholesky: jax.Array  # f32[M, dims, dims], inv(cholesky(cov))^T
    lower_bound: jax.Array  # f32[], mean log-likelihood at the last E-step
    num_iterations: jax.Array  # i32[]


def principal_axes(features, weights, variance_fraction):
    """Mean ``[D]``, principal axes ``[D, D]`` by decreasing variance, and how many to keep.

    ``num_kept`` is scikit-learn's ``PCA(n_components=variance_fraction)`` choice: the
    fewest leading axes whose explained-variance ratio sums to more than the fraction.
    """
    total = jnp.sum(weights)
    mean = jnp.sum(features * weights[:, None], axis=0) / total
    centered = (features - mean[None, :]) * weights[:, None]
    covariance = matmul(centered.T, centered) / total
    eigenvalues, eigenvectors = jnp.linalg.eigh(symmetric(covariance))
    eigenvalues = jnp.maximum(eigenvalues[::-1], 0)
    ratio = jnp.cumsum(eigenvalues) / jnp.sum(eigenvalues)
    num_kept = jnp.minimum(jnp.sum(ratio <= variance_fraction) + 1, features.shape[1])
    return mean, eigenvectors[:, ::-1], num_kept.astype(jnp.int32)


def _component_map(fn, xs, num_rows, dims):
    batch = max(1, _BATCH_ELEMENTS // max(1, num_rows * dims))
    return jax.lax.map(fn, xs, batch_size=min(batch, jax.tree.leaves(xs)[0].shape[0]))


def _squared_distances(x, centers):
    """``|x_i - c_m|^2``, ``[n, M]``."""
    cross = matmul(x, centers.T)
    return jnp.maximum(
        jnp.sum(x * x, axis=1)[:, None] - 2 * cross + jnp.sum(centers * centers, axis=1)[None, :], 0
    )


def kmeans_init(key, x, weights, num_components):
    """k-means++ seeding from ``key``, then Lloyd iterations as scikit-learn's KMeans.

    Lloyd stops when no label changes or the centres move (sum of squared shifts) by
    at most ``1e-4`` times the mean per-column variance, after at most 300 rounds.
    Masked rows are never chosen and do not move centres; an empty cluster keeps its
    centre (scikit-learn relocates it instead). Returns the centres, ``[M, dims]``.
    """
    keys = jax.random.split(key, num_components)
    log_weights = jnp.log(weights)
    first = jax.random.categorical(keys[0], log_weights)
    centers = jnp.zeros((num_components, x.shape[1]), x.dtype).at[0].set(x[first])
    nearest = jnp.sum((x - x[first][None, :]) ** 2, axis=1)

    def seed(m, carry):
        centers, nearest = carry
        chance = weights * nearest
        # All chosen points already cover every row: pick uniformly among valid rows.
        logits = jnp.where(jnp.any(chance > 0), jnp.log(chance), log_weights)
        index = jax.random.categorical(keys[m], logits)
        centers = centers.at[m].set(x[index])
        return centers, jnp.minimum(nearest, jnp.sum((x - x[index][None, :]) ** 2, axis=1))

    centers, _ = jax.lax.fori_loop(1, num_components, seed, (centers, nearest))

    def assign(centers):
        return jnp.argmin(_squared_distances(x, centers), axis=1)

    def update(labels, centers):
        counts = ops.row_sum_into((num_components,), weights, labels, weights > 0)
        sums = ops.row_sum_into((num_components, x.shape[1]), x, labels, weights > 0)
        moved = sums / jnp.where(counts > 0, counts, 1)[:, None]
        return jnp.where((counts > 0)[:, None], moved, centers)

    total = jnp.sum(weights)
    mean = jnp.sum(x * weights[:, None], axis=0) / total
    variance = jnp.sum(((x - mean[None, :]) * weights[:, None]) ** 2, axis=0) / total
    tolerance = KMEANS_TOLERANCE * jnp.mean(variance)

    def cond(carry):
        step, _, _, going = carry
        return going & (step < KMEANS_MAX_ITERATIONS)

    def body(carry):
        step, labels, old_centers, _ = carry
        centers = update(labels, old_centers)
        new_labels = assign(centers)
        changed = jnp.any((new_labels != labels) & (weights > 0))
        moved = jnp.sum((centers - old_centers) ** 2) > tolerance
        return step + 1, new_labels, centers, changed & moved

    labels = assign(centers)
    _, labels, centers, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), labels, centers, jnp.bool_(True))
    )
    return centers


def _log_gaussians(x, mixture_means, precision_cholesky):
    """``log N(x_i | mu_m, Sigma_m)``, ``[n, M]``, from Cholesky factors of precisions."""
    num_rows, dims = x.shape

    def one(params):
        mean, factor = params
        projected = matmul(x, factor) - matmul(mean, factor)[None, :]
        log_det = jnp.sum(jnp.log(jnp.diagonal(factor)))
        return -0.5 * (dims * jnp.log(2 * jnp.pi) + jnp.sum(projected**2, axis=1)) + log_det

    return _component_map(one, (mixture_means, precision_cholesky), num_rows, dims).T


def _e_step(x, weights, log_weights, means, precision_cholesky):
    """Log-responsibilities ``[n, M]`` and the weighted mean log-likelihood."""
    joint = _log_gaussians(x, means, precision_cholesky) + log_weights[None, :]
    log_norm = jax.nn.logsumexp(joint, axis=1)
    lower_bound = jnp.sum(log_norm * weights) / jnp.sum(weights)
    return joint - log_norm[:, None], lower_bound


def _m_step(x, weights, responsibilities, num_kept):
    """scikit-learn's full-covariance M-step over weighted rows.

    Returns ``(log_weights, means, precision_cholesky)``. Covariances get
    ``REG_COVAR`` on the diagonal as in scikit-learn; on the ``num_kept`` real columns
    also float32's resolution, ``dims * eps * max variance``, or more where rounding
    still leaves a covariance indefinite (:func:`_regularized_cholesky`). The zero
    padding columns keep exactly ``REG_COVAR``: they then add the same constant to every
    component's log-density and change nothing.
    """
    num_rows, dims = x.shape
    dtype = x.dtype
    weighted = responsibilities * weights[:, None]  # [n, M]
    counts = jnp.sum(weighted, axis=0) + 10 * jnp.finfo(dtype).eps
    means = matmul(weighted.T, x) / counts[:, None]
    real = jnp.arange(dims) < num_kept

    def one(params):
        column, mean, count = params
        centered = x - mean[None, :]
        covariance = symmetric(matmul((centered * column[:, None]).T, centered) / count)
        jitter = dims * jnp.finfo(dtype).eps * jnp.max(jnp.diagonal(covariance))
        return covariance, jnp.where(real, jitter, 0)

    def precision_factor(covariance, jitter):
        lower = _regularized_cholesky(covariance, jitter)
        inverse = jax.scipy.linalg.solve_triangular(lower, jnp.eye(dims, dtype=dtype), lower=True)
        return inverse.T

    covariances, jitters = _component_map(one, (weighted.T, means, counts), num_rows, dims)
    precision_cholesky = ops.per_matrix(precision_factor, covariances, jitters)
    return jnp.log(counts / jnp.sum(counts)), means, precision_cholesky


def _regularized_cholesky(covariance, jitter):
    """Cholesky factor of ``covariance + diag(REG_COVAR + s * jitter)``, ``[dims, dims]``.

    ``s`` is the first of 1, 10, ..., ``10**JITTER_RETRIES`` that factors. A component
    whose rows lie on a line or a plane has a covariance that only ``REG_COVAR`` makes
    positive definite; in float32 that is below the resolution of its diagonal, and
    rounding can leave the matrix indefinite even with the jitter (Cholesky gives NaN).
    Ten times the jitter per retry then factors it; a covariance that factors at once
    is unchanged.
    """

    def factor(scale):
        return jnp.linalg.cholesky(covariance + jnp.diag(REG_COVAR + scale * jitter))

    def failed(carry):
        scale, lower = carry
        return ~jnp.all(jnp.isfinite(lower)) & (scale < 10.0**JITTER_RETRIES)

    def retry(carry):
        scale, _ = carry
        return scale * 10, factor(scale * 10)

    one = jnp.ones((), covariance.dtype)
    return jax.lax.while_loop(failed, retry, (one, factor(one)))[1]


def fit_gaussian_mixture(x, weights, initial_means, num_kept=None) -> GaussianMixture:
    """EM for a full-covariance Gaussian mixture from hard assignments to ``initial_means``.

    scikit-learn's ``GaussianMixture`` after its k-means initialisation: responsibilities
    one-hot on the nearest initial mean, an M-step, then E- and M-steps until the mean
    log-likelihood changes by less than ``TOLERANCE`` (at most ``MAX_ITERATIONS``).

    Args:
      x: ``f32[n, dims]``, rows with zero weight ignored.
      weights: ``f32[n]`` of 0/1.
      initial_means: ``f32[M, dims]``.
      num_kept: columns ``>= num_kept`` are zero padding (default: none).
    """
    num_components, dims = initial_means.shape
    num_kept = dims if num_kept is None else num_kept
    labels = jnp.argmin(_squared_distances(x, initial_means), axis=1)
    responsibilities = jax.nn.one_hot(labels, num_components, dtype=x.dtype)
    params = _m_step(x, weights, responsibilities, num_kept)

    def cond(carry):
        step, _, lower_bound, previous = carry
        return (step < MAX_ITERATIONS) & ~(jnp.abs(lower_bound - previous) < TOLERANCE)

    def body(carry):
        step, params, lower_bound, _ = carry
        log_responsibilities, new_bound = _e_step(x, weights, *params)
        params = _m_step(x, weights, jnp.exp(log_responsibilities), num_kept)
        return step + 1, params, new_bound, lower_bound

    inf = jnp.array(jnp.inf, x.dtype)
    step, params, lower_bound, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), params, -inf, -inf)
    )
    return GaussianMixture(*params, lower_bound, step)


@functools.partial(jax.jit, static_argnames=("num_target_classes", "num_components"))
def _nleep(features, mean, axes, num_kept, labels, mask, key, num_target_classes, num_components):
    valid = ops.valid_rows(labels, num_target_classes, mask)
    features = _valid_features(features, valid)
    weights = valid.astype(features.dtype)
    # Only the axes kept (rounded up) are projected on: N D width, not N D^2.
    scores = matmul(features - mean[None, :], axes)
    kept = jnp.arange(axes.shape[1]) < num_kept
    scores = jnp.where(valid[:, None] & kept[None, :], scores, 0)
    initial_means = kmeans_init(key, scores, weights, num_components)
    mixture = fit_gaussian_mixture(scores, weights, initial_means, num_kept)
    log_posteriors, _ = _e_step(
        scores, weights, mixture.log_weights, mixture.means, mixture.precision_cholesky
    )
    score = leep(
        log_posteriors,
        labels,
        num_target_classes,
        from_logits=True,
        mask=valid,
        validate_inputs=False,
    )
    # The intermediate results come out too, for tests against a float64 EM.
    return score, (scores, initial_means, log_posteriors, mixture.num_iterations)


def _valid_features(features, valid):
    return jnp.where(valid[:, None], features.astype(accumulation_dtype(features.dtype)), 0)


@functools.partial(jax.jit, static_argnames=("num_target_classes", "variance_fraction"))
def _principal_axes(features, labels, mask, num_target_classes, variance_fraction):
    valid = ops.valid_rows(labels, num_target_classes, mask)
    features = _valid_features(features, valid)
    return principal_axes(features, valid.astype(features.dtype), variance_fraction)


def _width(num_kept: int, limit: int) -> int:
    """Columns EM runs on for ``num_kept`` kept axes: :func:`ops.size_bucket` in quarter
    octaves (at most 1.25x; EM's work grows with the width squared), at most ``limit``."""
    return ops.size_bucket(num_kept, limit, fine=True)


def nleep(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    key: ArrayLike,
    components_per_class: int = 5,
    pca_variance: float = 0.8,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """NLEEP transferability score of penultimate features for a target task.

    Li et al., CVPR 2021 (as TencentARC/SFDA's ``NLEEP``): the features' principal
    components explaining a fraction ``pca_variance`` of the variance (scikit-learn's
    ``PCA(n_components=0.8)`` choice), a Gaussian mixture with
    ``components_per_class * num_target_classes`` full-covariance components fitted by
    EM as scikit-learn's ``GaussianMixture`` does (k-means initialisation,
    ``reg_covar=1e-6``, tolerance 1e-3 on the mean log-likelihood, at most 100
    iterations), then exact :func:`leep_jax.leep` of the mixture posteriors
    ``p(component | x)`` as the source predictions. Unlike the peer it keeps LEEP's
    log, so it is ``<= 0``; higher predicts better transfer.

    Needs all features in memory, and is iterative: k-means and EM pass over the data
    many times. Random only through ``key`` (k-means++ seeding).

    Eager calls compute the PCA first, read the number of kept components and run EM on
    that many columns rounded up by at most 1.25x (to ..., 64, 80, 96, 112, 128, ...;
    one compile per such width; EM's work grows with the width squared); traced calls
    (inside ``jit``) run on all ``feature_dim`` columns with the extra ones zero. Both
    give the same mixture: zero columns with variance ``reg_covar`` add the same
    constant to every component's log-density.

    Differences from the peer: it takes ``5 K`` components for the ``K`` classes
    present; here ``num_target_classes`` fixes the count. It has no log in its LEEP.

    Args:
      features: ``[n, feature_dim]`` penultimate features of the source model.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``C``, a static Python int.
      key: a ``jax.random`` key for the k-means++ seeding.
      components_per_class: mixture components per target class (static).
      pca_variance: fraction of the variance the kept principal components explain, in
        ``(0, 1]`` (static).
      mask: optional ``bool[n]``; False rows are dropped as if absent, except that the
        k-means++ draws from ``key`` follow row positions: the same key may seed a
        masked array and its counted rows differently.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar ``<= 0``. With fewer distinct valid rows than components the spare
      components stay empty (weight ~0); the result is finite.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`, on
        ``components_per_class < 1``, ``pca_variance`` outside ``(0, 1]``, or fewer
        rows than components (as scikit-learn).

    References:
      Li, Jia, Zhang, Wu, Liu, Hauptmann. Ranking Neural Checkpoints. CVPR 2021.

    Examples:
      >>> import jax, jax.numpy as jnp, leep_jax
      >>> features = jax.random.normal(jax.random.key(0), (40, 3))
      >>> labels = jnp.arange(40) % 2
      >>> score = leep_jax.nleep(features, labels, 2, key=jax.random.key(1))
      >>> float(score) <= 0
      True
    """
    return _fit(
        features,
        labels,
        num_target_classes,
        key,
        components_per_class,
        pca_variance,
        mask,
        validate_inputs,
    )[0]


def _fit(
    features, labels, num_target_classes, key, components_per_class, pca_variance, mask, check
):
    """:func:`nleep` and its intermediates ``(scores, initial_means, log_posteriors,
    num_iterations)``, for tests against a float64 EM."""
    if isinstance(components_per_class, bool) or int(components_per_class) < 1:
        raise ValueError(f"components_per_class must be >= 1, got {components_per_class!r}")
    if not 0 < float(pca_variance) <= 1:
        raise ValueError(f"pca_variance must lie in (0, 1], got {pca_variance!r}")
    features, labels, mask, num_target_classes = validate_features(
        features, labels, num_target_classes, mask, check=check
    )
    num_components = int(components_per_class) * num_target_classes
    if features.shape[0] < num_components:
        raise ValueError(
            f"nleep needs at least as many rows as mixture components "
            f"({components_per_class} x {num_target_classes} = {num_components}), "
            f"got {features.shape[0]}"
        )
    mean, axes, num_kept = _principal_axes(
        features, labels, mask, num_target_classes, float(pca_variance)
    )
    if is_concrete(axes, key):
        axes = axes[:, : _width(int(num_kept), axes.shape[1])]
    return _nleep(
        features, mean, axes, num_kept, labels, mask, key, num_target_classes, num_components
    )
