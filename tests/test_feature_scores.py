"""LogME, regularized H-score, TransRate and GBC: references, invariances, streaming
(with a hypothesis test: any batch split, mask and merge order), sharding."""

import doctest
import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import reference_features as ref
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from scipy.stats import ortho_group

import leep_jax
from leep_jax import streaming

C = 4

SCORES = {
    "logme": (leep_jax.logme, ref.logme),
    "regularized_h_score": (leep_jax.regularized_h_score, ref.regularized_h_score),
    "transrate": (leep_jax.transrate, ref.transrate),
    "gbc_spherical": (
        functools.partial(leep_jax.gbc, gaussian_type="spherical"),
        functools.partial(ref.gbc, gaussian_type="spherical"),
    ),
    "gbc_diagonal": (
        functools.partial(leep_jax.gbc, gaussian_type="diagonal"),
        functools.partial(ref.gbc, gaussian_type="diagonal"),
    ),
}
# float32 against the float64 reference (measured worst cases on these problems are
# 5-10x smaller; LogME's float32 eigendecomposition dominates its error).
FLOAT32_RTOL = {
    "logme": 5e-5,
    "regularized_h_score": 5e-5,
    "transrate": 5e-5,
    "gbc_spherical": 5e-5,
    "gbc_diagonal": 5e-5,
}


def _problem(seed=0, n=240, d=12, c=C, offset=2.0, absent=None):
    """Class-dependent features with a non-zero mean (LogME does not centre)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % c
    centres = rng.normal(size=(c, d))
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    features = rng.normal(size=(n, d)) @ mixing + 0.7 * centres[labels] + offset
    return features, labels.astype(np.int32)


def _x64(fn, *args, **kwargs):
    with jax.enable_x64(True):
        return float(fn(*args, **kwargs))


@pytest.mark.parametrize("name", list(SCORES))
def test_matches_float64_reference(name):
    """On a problem where class 2 is absent (it must not count in any mean)."""
    score, reference = SCORES[name]
    features, labels = _problem(1, absent=2)
    expected = reference(features, labels, C)
    got64 = _x64(score, features, labels, C)
    np.testing.assert_allclose(got64, expected, rtol=1e-6)
    got32 = float(score(features.astype(np.float32), labels, C))
    np.testing.assert_allclose(got32, expected, rtol=FLOAT32_RTOL[name])


def test_regularized_h_score_shrinkage_matches_sklearn():
    from sklearn.covariance import LedoitWolf

    from leep_jax.scores.regularized_h_score import ledoit_wolf_shrinkage, regularized_h_score_sums

    features, labels = _problem(3, n=60, d=20)
    centred = features - features.mean(axis=0)
    fitted = LedoitWolf(assume_centered=False).fit(centred)

    @jax.jit
    def shrunk_covariance(features, labels, shift):
        sums = regularized_h_score_sums(features, labels, C, shift=shift)
        covariance, shrinkage = ledoit_wolf_shrinkage(sums)
        mu = jnp.trace(covariance) / 20
        return (1 - shrinkage) * covariance + shrinkage * mu * jnp.eye(20), shrinkage

    with jax.enable_x64(True):
        shift = features[:5].mean(axis=0)  # not the mean: exercises the expansion
        shrunk, shrinkage = shrunk_covariance(features, labels, shift)
    np.testing.assert_allclose(float(shrinkage), fitted.shrinkage_, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(shrunk), fitted.covariance_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n, d, rank", [(200, 10, 10), (40, 60, 8)])
def test_logme_is_the_maximum_evidence(n, d, rank):
    """Against direct maximisation over (log alpha, log beta), without the fixed point.

    The second case has n < D and rank-deficient features (an interior maximum): all D
    eigenvalues, the zero ones included, must enter the log-determinant."""
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 3, n)
    latent = rng.normal(size=(n, rank))
    latent[:, 0] += labels
    features = latent @ rng.normal(size=(rank, d)) + 0.5
    direct = ref.logme(features, labels, 3, column=ref.logme_direct_column)
    got = _x64(leep_jax.logme, features, labels, 3)
    np.testing.assert_allclose(got, direct, rtol=1e-5)


def test_logme_of_zero_features_is_the_maximum_evidence():
    # The evidence of F = 0 does not depend on alpha, but the fixed point's alpha = gamma/m2
    # was 0/0 (NaN, as in thuml's code), and the m^2 floor divided by a zero trace (-1e30).
    labels = np.arange(40) % 4
    targets = np.stack([labels, np.sin(labels)], axis=1).astype(np.float32)
    for dim in (1, 3):
        features = np.zeros((40, dim), np.float32)
        direct = ref.logme(features, labels, 4, column=ref.logme_direct_column)
        np.testing.assert_allclose(float(leep_jax.logme(features, labels, 4)), direct, rtol=1e-6)
        accumulator = streaming.logme(4, dim)
        state = accumulator.update(accumulator.init(), features, labels)
        np.testing.assert_allclose(float(accumulator.compute(state)), direct, rtol=1e-6)
        np.testing.assert_allclose(
            float(leep_jax.logme_regression(features, targets)),
            ref.logme_regression(features, targets, column=ref.logme_direct_column),
            rtol=1e-6,
        )


def test_logme_of_float32_inputs_is_the_same_with_x64_enabled():
    # Targets exactly linear in the features: the evidence is capped by float32 floors
    # (eps of the inputs' dtype), which x64 must not turn into float64 ones.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 4)).astype(np.float32)
    targets = (features @ np.float32([1, 2, -1, 0.5]))[:, None]
    want = float(leep_jax.logme_regression(features, targets))
    assert _x64(leep_jax.logme_regression, features, targets) == want


def test_logme_of_well_separated_features_matches_reference():
    # Rows that sum to one put the feature mean in the scatter's null space; with labels
    # the features nearly determine, beta grows large and the mean direction's Sherman-
    # Morrison term must not cancel in float32 (it gave -504 and -30.7 here).
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 500)
    probabilities = reference.softmax(rng.normal(size=(500, 10)) + 10 * np.eye(5, 10)[labels])
    near_one_hot = np.eye(5)[labels] + 1e-3 * rng.normal(size=(500, 5))
    for features, rtol in ((probabilities, 0.03), (near_one_hot, 0.01)):
        want = ref.logme(features, labels, 5)
        features = features.astype(np.float32)
        np.testing.assert_allclose(float(leep_jax.logme(features, labels, 5)), want, rtol=rtol)
        accumulator = streaming.logme(5, features.shape[1])
        state = accumulator.init()
        for rows in np.array_split(np.arange(500), 3):
            state = accumulator.update(state, features[rows], labels[rows])
        np.testing.assert_allclose(float(accumulator.compute(state)), want, rtol=rtol)


def test_logme_of_exactly_linear_targets_is_finite_and_keeps_its_invariances():
    # The evidence is unbounded there and float32 floors cap it; the cap must keep the
    # maximum evidence's invariances: features scaled by c give the same value, targets
    # scaled by c give it minus log c (c a power of two: exact in float32).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 64)
    features = np.concatenate(
        [np.eye(3)[labels], rng.normal(size=(64, 2))], axis=1, dtype=np.float32
    )
    capped = float(leep_jax.logme(features, labels, 3))
    noisy = features + 1e-2 * rng.normal(size=features.shape).astype(np.float32)
    assert capped > float(leep_jax.logme(noisy, labels, 3))
    for scale in (2.0**-6, 0.25, 4.0, 64.0):
        np.testing.assert_allclose(float(leep_jax.logme(features * scale, labels, 3)), capped)
    targets = (features @ np.float32([1, -2, 0.5, 0.25, 4]))[:, None]
    capped = float(leep_jax.logme_regression(features, targets))
    for scale in (2.0**-6, 0.25, 4.0, 64.0):
        np.testing.assert_allclose(
            float(leep_jax.logme_regression(features * scale, targets)), capped, rtol=1e-6
        )
        np.testing.assert_allclose(
            float(leep_jax.logme_regression(features, targets * scale)),
            capped - np.log(scale),
            rtol=1e-6,
        )


def test_logme_of_targets_orthogonal_to_the_features_is_the_supremum():
    # Each class's rows come in pairs f, -f: F^T y = 0, so m = 0 and the evidence grows
    # towards its supremum as alpha -> infinity. The m^2 floor keeps alpha finite at every
    # feature scale (the float64 fixed point, without one, is NaN here).
    rng = np.random.default_rng(0)
    half = rng.normal(size=(20, 3))
    features = np.concatenate([half, -half])
    labels = np.tile(rng.integers(0, 2, 20), 2)
    want = ref.logme(features, labels, 2, column=ref.logme_direct_column)
    for scale in (0.01, 1.0):
        got = float(leep_jax.logme((features * scale).astype(np.float32), labels, 2))
        np.testing.assert_allclose(got, want, rtol=2e-3)


def test_logme_regression_matches_reference_and_direct():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(150, 8)) + 1.0
    targets = np.stack(
        [features[:, 0] * 2 + rng.normal(size=150), np.sin(features[:, 1]), rng.normal(size=150)],
        axis=1,
    )
    expected = ref.logme_regression(features, targets)
    direct = ref.logme_regression(features, targets, column=ref.logme_direct_column)
    got64 = _x64(leep_jax.logme_regression, features, targets)
    np.testing.assert_allclose(got64, expected, rtol=1e-9)
    np.testing.assert_allclose(got64, direct, rtol=1e-5)
    got32 = float(
        leep_jax.logme_regression(features.astype(np.float32), targets.astype(np.float32))
    )
    np.testing.assert_allclose(got32, expected, rtol=5e-5)
    # One-hot targets as regression columns = classification.
    labels = rng.integers(0, 3, 150).astype(np.int32)
    np.testing.assert_allclose(
        float(leep_jax.logme_regression(features, np.eye(3, dtype=np.float32)[labels])),
        float(leep_jax.logme(features, labels, 3)),
        rtol=1e-6,
    )


def test_logme_float32_accurate_at_large_dim():
    """Uncentred ReLU features at D = 128: the rank-one mean update keeps float32 close."""
    rng = np.random.default_rng(7)
    n, d = 400, 128
    labels = rng.integers(0, 10, n)
    raw = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d))
    features = np.maximum(raw + 0.3 * rng.normal(size=(10, d))[labels] + 0.5, 0)
    expected = ref.logme(features, labels, 10)
    got = float(leep_jax.logme(features.astype(np.float32), labels, 10))
    np.testing.assert_allclose(got, expected, rtol=5e-5)


@pytest.mark.parametrize("name", list(SCORES))
def test_invariant_to_example_order_and_class_names(name):
    score, _ = SCORES[name]
    features, labels = _problem(2)
    base = float(score(features, labels, C))
    order = np.random.default_rng(0).permutation(len(labels))
    relabel = np.array([2, 0, 3, 1], np.int32)
    # float32 rounding differs with the order of the sums: LogME's eigendecomposition
    # amplifies it most.
    rtol = FLOAT32_RTOL[name]
    np.testing.assert_allclose(float(score(features[order], labels[order], C)), base, rtol=rtol)
    np.testing.assert_allclose(float(score(features, relabel[labels], C)), base, rtol=rtol)


@pytest.mark.parametrize(
    "name, transform",
    [
        ("logme", "rotate"),
        ("regularized_h_score", "rotate_scale_shift"),
        ("transrate", "rotate_shift"),
        ("gbc_spherical", "rotate_shift"),
        ("gbc_diagonal", "permute_dims_shift"),
    ],
)
def test_invariant_to_feature_maps(name, transform):
    score, _ = SCORES[name]
    features, labels = _problem(4)
    d = features.shape[1]
    rng = np.random.default_rng(1)
    q = ortho_group.rvs(d, random_state=2)
    mapped = {
        "rotate": features @ q,
        "rotate_scale_shift": 3.0 * features @ q + rng.normal(size=d),
        "rotate_shift": features @ q + rng.normal(size=d),
        "permute_dims_shift": features[:, rng.permutation(d)] + rng.normal(size=d),
    }[transform]
    with jax.enable_x64(True):
        base = float(score(jnp.asarray(features), labels, C))
        got = float(score(jnp.asarray(mapped), labels, C))
    np.testing.assert_allclose(got, base, rtol=1e-9)


def test_coding_rates_fall_back_to_eigenvalues_when_a_sign_is_negative():
    """A Gram that float32 rounding made indefinite: its eigenvalue -3e-4 makes
    ``I + G / (n eps)`` -2 there, a finite log |det| (log 2 too many) with sign -1, so
    the rates of every matrix in the batch come from eigenvalues clipped at 0."""
    from leep_jax.scores.transrate import coding_rates

    grams = jnp.stack([jnp.diag(jnp.array([1.0, -3e-4])), jnp.diag(jnp.array([1.0, 2.0]))])
    rates = coding_rates(grams, jnp.array([1.0, 2.0]), 1e-4)
    expected = [0.5 * np.log1p(1e4), 0.5 * (np.log1p(1 / 2e-4) + np.log1p(2 / 2e-4))]
    np.testing.assert_allclose(np.asarray(rates), expected, rtol=1e-6)
    np.testing.assert_allclose(
        float(coding_rates(grams[1:], jnp.array([2.0]), 1e-4)[0]), expected[1], rtol=1e-6
    )


@pytest.mark.parametrize("name", list(SCORES))
def test_degenerate_inputs_are_finite_and_match_reference(name):
    score, reference = SCORES[name]
    features, labels = _problem(8)
    n = len(labels)
    cases = {
        "constant feature": (np.concatenate([features[:, 1:], np.ones((n, 1))], axis=1), labels),
        "zero feature": (np.concatenate([features[:, 1:], np.zeros((n, 1))], axis=1), labels),
        "class with one example": (features, np.where(np.arange(n) == 0, 3, labels % 3)),
        "two classes": (features, labels % 2),
        "one feature": (features[:, :1], labels),
        "one class present": (features, np.zeros_like(labels)),
    }
    for case, (f, y) in cases.items():
        y = y.astype(np.int32)
        got = float(score(f.astype(np.float32), y, C))
        assert np.isfinite(got), case
        expected = reference(f, y, C)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6, err_msg=case)


def test_single_example_and_bad_arguments():
    features = np.ones((1, 3), np.float32)
    labels = np.zeros(1, np.int32)
    for name in ("logme", "regularized_h_score", "transrate", "gbc_spherical"):
        assert np.isfinite(float(SCORES[name][0](features, labels, 2))), name
    with pytest.raises(ValueError, match="gaussian_type"):
        leep_jax.gbc(features, labels, 2, gaussian_type="full")
    with pytest.raises(ValueError, match="eps"):
        leep_jax.transrate(features, labels, 2, eps=0.0)
    with pytest.raises(ValueError, match="NaN"):
        leep_jax.logme(np.full((2, 3), np.nan, np.float32), np.zeros(2, np.int32), 2)
    with pytest.raises(ValueError, match="must lie in"):
        leep_jax.transrate(np.ones((2, 3), np.float32), np.array([0, 5], np.int32), 2)
    with pytest.raises(ValueError, match="zero on every example"):
        leep_jax.logme_regression(np.ones((3, 2), np.float32), np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match="length mismatch"):
        leep_jax.logme_regression(np.ones((3, 2), np.float32), np.ones((4, 1), np.float32))


@pytest.mark.parametrize("name", list(SCORES))
def test_mask_drops_rows_exactly(name):
    score, _ = SCORES[name]
    features, labels = _problem(9)
    mask = np.random.default_rng(0).random(len(labels)) < 0.7
    padded = features.copy()
    padded[~mask] = np.nan  # masked rows may hold anything
    got = float(score(padded.astype(np.float32), labels, C, mask=mask))
    expected = float(score(features[mask].astype(np.float32), labels[mask], C))
    np.testing.assert_allclose(got, expected, rtol=FLOAT32_RTOL[name])


def test_logme_regression_mask():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(50, 4)).astype(np.float32)
    targets = rng.normal(size=(50, 2)).astype(np.float32)
    mask = rng.random(50) < 0.6
    got = float(leep_jax.logme_regression(features, targets, mask=mask))
    expected = float(leep_jax.logme_regression(features[mask], targets[mask]))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_streamed_logme_regression_matches_the_reference():
    # Far from zero, with a rough shift and masked rows poisoned: the shift and the mask
    # must both reach the sums.
    rng = np.random.default_rng(6)
    features = rng.normal(size=(120, 5)) + 300
    targets = np.stack([features[:, 0] - 300 + rng.normal(size=120), rng.normal(size=120)], 1)
    mask = rng.random(120) < 0.8
    expected = ref.logme_regression(features[mask], targets[mask])
    poisoned = np.where(mask[:, None], features, 1e4).astype(np.float32)
    acc = streaming.logme_regression(2, 5, shift=features[:7].mean(0))
    states = []
    for rows in np.split(np.arange(120), [7, 50]):
        batch = (poisoned[rows], targets[rows].astype(np.float32), mask[rows])
        states.append(acc.update(acc.init(), *batch))
    state = acc.merge(acc.merge(states[0], states[1]), states[2])
    np.testing.assert_allclose(float(acc.compute(state)), expected, rtol=1e-4)
    f, t = np.ones((4, 5), np.float32), np.ones((4, 2), np.float32)
    for bad_features in (f[0], f[:, :4]):
        with pytest.raises(ValueError, match=r"^features batch must have shape \[n, 5\]$"):
            acc.update(state, bad_features, t)
    with pytest.raises(ValueError, match=r"^targets batch must have shape \(4, 2\), got \(4, 1\)$"):
        acc.update(state, f, t[:, :1])


def test_logme_regression_mask_hides_bad_rows_and_may_be_traced_alone():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(50, 4)).astype(np.float32)
    targets = rng.normal(size=(50, 2)).astype(np.float32)
    mask = np.arange(50) % 5 != 0
    expected = float(leep_jax.logme_regression(features[mask], targets[mask]))
    poisoned = features.copy()
    poisoned[~mask] = np.nan  # masked rows are never checked nor read
    got = leep_jax.logme_regression(poisoned, targets, mask=mask)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # Any one argument traced: the value checks skip (they need concrete arrays).
    by_targets = jax.jit(lambda t: leep_jax.logme_regression(features, t, mask=mask))
    by_mask = jax.jit(lambda m: leep_jax.logme_regression(features, targets, mask=m))
    np.testing.assert_allclose(float(by_targets(targets)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(by_mask(mask)), expected, rtol=1e-5)
    # One example, one feature, one target are enough.
    for f, y in ((features[:1], targets[:1]), (features[:, :1], targets[:, :1])):
        assert not np.isnan(float(leep_jax.logme_regression(f, y)))


@pytest.mark.parametrize(
    ("features", "targets", "mask", "message"),
    [
        ((5,), (5, 2), None, "features must be 2-D [n, D], got shape (5,)"),
        ((5, 3), (5,), None, "targets must be 2-D [n, K], got shape (5,)"),
        ("int", (5, 2), None, "features must be floating point, got dtype int32"),
        ((5, 3), "int", None, "targets must be floating point, got dtype int32"),
        ((5, 3), (4, 2), None, "length mismatch: features has 5 rows but targets has 4"),
        (
            (0, 3),
            (0, 2),
            None,
            "empty input: features (0, 3), targets (0, 2); a score needs "
            "at least one example, feature and target",
        ),
        (
            (5, 0),
            (5, 2),
            None,
            "empty input: features (5, 0), targets (5, 2); a score needs "
            "at least one example, feature and target",
        ),
        (
            (5, 3),
            (5, 0),
            None,
            "empty input: features (5, 3), targets (5, 0); a score needs "
            "at least one example, feature and target",
        ),
        ((5, 3), (5, 2), np.ones(4, bool), "mask must have shape (5,), got (4,)"),
        ((5, 3), (5, 2), np.ones(5, np.int32), "mask must be boolean, got dtype int32"),
    ],
)
def test_logme_regression_errors_name_the_problem(features, targets, mask, message):
    def array(shape):
        if shape == "int":
            return np.ones((5, 3), np.int32)
        return np.random.default_rng(0).normal(size=shape).astype(np.float32)

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        leep_jax.logme_regression(array(features), array(targets), mask=mask)


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("no rows", "mask excludes every example; a score needs at least one"),
        ("nan feature", "features contain NaN or Inf"),
        ("inf target", "targets contain NaN or Inf"),
        ("zero target", "target column 1 is zero on every example: its evidence is unbounded"),
    ],
)
def test_logme_regression_value_errors_name_the_problem(problem, message):
    rng = np.random.default_rng(5)
    features = rng.normal(size=(6, 3)).astype(np.float32)
    targets = rng.normal(size=(6, 2)).astype(np.float32)
    mask = np.ones(6, bool)
    if problem == "no rows":
        mask[:] = False
    elif problem == "nan feature":
        features[2, 1] = np.nan
    elif problem == "inf target":
        targets[4, 0] = np.inf
    else:
        targets[:, 1] = 0
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        leep_jax.logme_regression(features, targets, mask=mask)


def test_vmap_over_a_zoo_matches_loop_and_jit_matches_eager():
    features, labels = _problem(10)
    zoo = np.stack([features * s + s for s in (0.5, 2.0)]).astype(np.float32)
    for name, (score, _) in SCORES.items():
        loop = np.array([float(score(f, labels, C)) for f in zoo])
        vmapped = np.asarray(jax.vmap(lambda f, s=score: s(f, labels, C))(zoo))
        # Batched and single kernels round differently in float32: on an Intel Xeon,
        # vmapped LogME is 1.6e-5 from the float64 value and the loop 4.8e-6.
        np.testing.assert_allclose(vmapped, loop, rtol=FLOAT32_RTOL[name], err_msg=name)
        jitted = float(jax.jit(lambda f, y, s=score: s(f, y, C))(zoo[0], labels))
        # TransRate with traced labels sums D x D class Grams (eager calls: Z Z^T blocks),
        # so the float32 rounding differs.
        rtol = 2e-5 if name == "transrate" else 1e-6
        np.testing.assert_allclose(jitted, loop[0], rtol=rtol, err_msg=name)
    targets = np.stack([labels, labels**2], axis=1).astype(np.float32)
    loop = np.array([float(leep_jax.logme_regression(f, targets)) for f in zoo])
    vmapped = np.asarray(jax.vmap(lambda f: leep_jax.logme_regression(f, targets))(zoo))
    np.testing.assert_allclose(vmapped, loop, rtol=FLOAT32_RTOL["logme"])


def test_kernels_compile_once_per_shape():
    modules = ["logme", "regularized_h_score", "transrate", "gbc"]
    kernels = [getattr(importlib.import_module(f"leep_jax.scores.{m}"), f"_{m}") for m in modules]
    features, labels = _problem(11, n=50, d=3)  # a shape no other test uses
    before = [k._cache_size() for k in kernels]
    for seed in range(3):
        f = features + seed
        for name in ("logme", "regularized_h_score", "transrate", "gbc_spherical"):
            SCORES[name][0](f, labels, C)
    assert [k._cache_size() - b for k, b in zip(kernels, before, strict=True)] == [1, 1, 1, 1]


STREAMING = {
    "logme": (streaming.logme, {}, leep_jax.logme),
    "regularized_h_score": (streaming.regularized_h_score, {}, leep_jax.regularized_h_score),
    "transrate": (streaming.transrate, {}, leep_jax.transrate),
    "gbc_spherical": (streaming.gbc, {"gaussian_type": "spherical"}, SCORES["gbc_spherical"][0]),
    "gbc_diagonal": (streaming.gbc, {"gaussian_type": "diagonal"}, SCORES["gbc_diagonal"][0]),
}


BATCH = 128


def _stream(accumulator, features, labels, cuts, mask):
    """Batches cut at ``cuts``, each padded to BATCH rows (mask False), one compile."""
    update = jax.jit(accumulator.update)
    state = accumulator.init()
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        pad = BATCH - (stop - start)
        f = np.pad(features[start:stop], ((0, pad), (0, 0)), constant_values=np.nan)
        y = np.pad(labels[start:stop], (0, pad))
        m = np.pad(mask[start:stop], (0, pad))
        state = update(state, f, y, m)
    return state


@pytest.mark.parametrize("name", list(STREAMING))
@pytest.mark.parametrize("use_shift", [False, True])
def test_streaming_over_random_batches_matches_in_memory(name, use_shift):
    factory, options, score = STREAMING[name]
    features, labels = _problem(12, offset=5.0)
    features = features.astype(np.float32)
    mask = np.random.default_rng(1).random(len(labels)) < 0.9
    rng = np.random.default_rng(2)
    # Three random cut points, no batch longer than BATCH.
    cuts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, 240), 3, replace=False)), [240]])
    while np.max(np.diff(cuts)) > BATCH:
        cuts[1:-1] = np.sort(rng.choice(np.arange(1, 240), 3, replace=False))
    shift = features[:16].mean(axis=0) if use_shift else None
    accumulator = factory(C, features.shape[1], shift=shift, **options)
    state = _stream(accumulator, features, labels, cuts, mask)
    expected = float(score(features, labels, C, mask=mask))
    # Without a shift the float32 sums of uncentred features (mean 5) lose a little.
    rtol = 1e-4 if use_shift else 1e-3
    np.testing.assert_allclose(float(jax.jit(accumulator.compute)(state)), expected, rtol=rtol)
    # merge = sum, associative.
    half = len(cuts) // 2
    a = _stream(accumulator, features, labels, cuts[: half + 1], mask)
    b = _stream(accumulator, features, labels, cuts[half:], mask)
    merged = accumulator.merge(a, b)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-3)


def test_streaming_logme_regression_and_scan_carry():
    rng = np.random.default_rng(4)
    features = (rng.normal(size=(96, 5)) + 2).astype(np.float32)
    targets = rng.normal(size=(96, 2)).astype(np.float32)
    accumulator = streaming.logme_regression(2, 5, shift=features[:8].mean(axis=0))

    def body(state, batch):
        return accumulator.update(state, *batch), None

    state, _ = jax.lax.scan(
        body, accumulator.init(), (features.reshape(6, 16, 5), targets.reshape(6, 16, 2))
    )
    np.testing.assert_allclose(
        float(jax.jit(accumulator.compute)(state)),
        float(leep_jax.logme_regression(features, targets)),
        rtol=1e-4,
    )


def _all_feature_scores(features, labels, mask, targets):
    scores = [float(score(features, labels, C, mask=mask)) for score, _ in SCORES.values()]
    scores.append(float(leep_jax.logme_regression(features, targets, mask=mask)))
    return np.array(scores)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_inputs_give_unsharded_result(axis_type):
    """Explicit axes under jax.set_mesh; a plain Auto mesh without it."""
    assert len(jax.devices()) == 8
    features, labels = _problem(13)
    features = features.astype(np.float32)
    mask = np.random.default_rng(0).random(len(labels)) < 0.9
    targets = np.eye(3, dtype=np.float32)[labels % 3]
    expected = _all_feature_scores(features, labels, mask, targets)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, jax.P("data"))
    placed = [jax.device_put(a, sharding) for a in (features, labels, mask, targets)]
    assert len(placed[0].sharding.device_set) == 8
    if axis_type == AxisType.Explicit:
        with jax.set_mesh(mesh):
            got = _all_feature_scores(*placed)
    else:
        got = _all_feature_scores(*placed)
    np.testing.assert_allclose(got, expected, rtol=2e-5)


@pytest.mark.parametrize(
    "module",
    [
        "leep_jax.scores.logme",
        "leep_jax.scores.regularized_h_score",
        "leep_jax.scores.transrate",
        "leep_jax.scores.gbc",
        "leep_jax.streaming.feature_accumulators",
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


_PROPERTY_ROWS = 64


@functools.cache
def _jitted_streaming(name):
    factory, options, score = STREAMING[name]
    accumulator = factory(C, 6, **options)
    return jax.tree.map(jax.jit, accumulator), jax.jit(
        functools.partial(score, num_target_classes=C)
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(24, _PROPERTY_ROWS),
    cuts=st.sets(st.integers(1, _PROPERTY_ROWS - 1), max_size=4),
    masked=st.lists(st.booleans(), min_size=_PROPERTY_ROWS, max_size=_PROPERTY_ROWS),
    seed=st.integers(0, 2**16),
)
@example(  # a one-row first batch: the streamed sums' shift is one example
    n=39,
    cuts={1, 13},
    masked=[i in {9, 11, 13, 19, 23, 33, 35} for i in range(64)],
    seed=55798,
)
@example(n=25, cuts={1}, masked=[False] * 64, seed=1)  # 13 counted rows in 6 dims: see atol
def test_any_batch_split_mask_and_merge_order_give_the_in_memory_score(n, cuts, masked, seed):
    features, labels = _problem(seed, n=n, d=6, offset=0.0)
    features = features.astype(np.float32)
    mask = np.array(masked[:n])
    mask[::2] = True  # enough counted rows for well-conditioned 6 x 6 covariances
    cuts = [0, *sorted(c for c in cuts if c < n), n]

    def padded(x, lo, hi):  # rows lo:hi, zero-padded to one shape (one compilation)
        return np.pad(x[lo:hi], [(0, _PROPERTY_ROWS - (hi - lo))] + [(0, 0)] * (x.ndim - 1))

    for name in STREAMING:
        accumulator, score = _jitted_streaming(name)
        want = float(score(*(padded(x, 0, n) for x in (features, labels)), mask=padded(mask, 0, n)))
        states = [
            accumulator.update(
                accumulator.init(), *(padded(x, lo, hi) for x in (features, labels, mask))
            )
            for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        left = functools.reduce(accumulator.merge, states)
        right = functools.reduce(lambda a, b: accumulator.merge(b, a), reversed(states))
        # TransRate's streamed sums are shifted by the first batch's mean; when that batch
        # is one row, the near-singular class Grams of ~7 rows in 6 dims lose more float32
        # digits in the logdet: 1.3e-4 relative to the float64 value, measured on the
        # @example above (the in-memory score, shifted by the exact mean, is within 2e-7).
        rtol = 1e-3 if name == "transrate" else 2e-4
        # LogME near 0 has float32 errors of a few 1e-5 whichever way it is summed: on the
        # second @example (LogME -0.038138 in float64) in-memory is off by 1.3e-5, one
        # streamed batch by 2.0e-5, a one-row first batch by 4.2e-5 (found by hypothesis).
        atol = 1e-4 if name == "logme" else 1e-5
        for merged in (left, right):
            np.testing.assert_allclose(
                float(accumulator.compute(merged)), want, rtol=rtol, atol=atol, err_msg=name
            )


def _dot_precisions(jaxpr):
    """The ``precision`` of every dot_general in ``jaxpr`` and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _dot_precisions(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _dot_precisions(sub)
    return found


@pytest.mark.parametrize(
    "name",
    ["h_score", "logme", "regularized_h_score", "transrate", "sfda", "parc", "nleep"],
)
def test_every_matmul_asks_for_highest_precision(name):
    # CPU matmuls are full float32 whatever the precision, so only the program shows it:
    # at DEFAULT, TPUs (bfloat16 passes) and GPUs (TF32) lose the covariances.
    score = getattr(leep_jax, name)
    if name == "nleep":
        score = functools.partial(score, key=jax.random.key(0))
    features, labels = _problem(n=40, d=6)
    program = jax.make_jaxpr(lambda f, y: score(f, y, C, validate_inputs=False))(
        jnp.asarray(features), jnp.asarray(labels)
    )
    precisions = _dot_precisions(program.jaxpr)
    assert precisions, "no matmul traced"
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(p == highest for p in precisions), precisions
