"""SFDA, PARC and NLEEP against float64 references, invariances and degenerate inputs.

Shapes are shared between tests so that each kernel compiles a few times only.
"""

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import reference_iterative as ref
import scipy.stats
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

import leep_jax

parc_module = importlib.import_module("leep_jax.scores.parc")
nleep_module = importlib.import_module("leep_jax.scores.nleep")
sfda_module = importlib.import_module("leep_jax.scores.sfda")

NUM_CLASSES = 5


def class_data(seed, n=120, dims=6, num_classes=NUM_CLASSES, scale=1.0, present=None):
    """Gaussian features with class-dependent means; ``present`` restricts the labels."""
    rng = np.random.default_rng(seed)
    classes = np.arange(num_classes) if present is None else np.asarray(present)
    labels = classes[np.arange(n) % len(classes)]
    rng.shuffle(labels)
    spread = np.linspace(1.5, 0.5, dims)
    features = rng.normal(size=(n, dims)) * spread + 2.0 * np.eye(num_classes, dims)[labels]
    return (scale * features).astype(np.float32), labels.astype(np.int32)


# ------------------------------------------------------------------------------ SFDA


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [0.2, 3.0])  # shrinkage ~0.5 and clamped at 1e-10
def test_sfda_matches_reference(seed, scale):
    features, labels = class_data(seed, scale=scale)
    got = float(leep_jax.sfda(features, labels, NUM_CLASSES))
    assert got == pytest.approx(ref.sfda(features, labels), abs=1e-4)


def test_sfda_absent_classes_and_singleton_class():
    features, labels = class_data(2, present=[0, 2, 4])
    labels[7] = 3  # a class with a single example
    got = float(leep_jax.sfda(features, labels, NUM_CLASSES))
    assert np.isfinite(got)
    assert got == pytest.approx(ref.sfda(features, labels), abs=1e-4)


def test_sfda_invariances():
    features, labels = class_data(3)
    base = float(leep_jax.sfda(features, labels, NUM_CLASSES))
    order = np.random.default_rng(0).permutation(len(labels))
    relabel = np.array([3, 0, 4, 1, 2], np.int32)
    assert float(leep_jax.sfda(features[order], labels[order], NUM_CLASSES)) == pytest.approx(
        base, abs=1e-5
    )
    assert float(leep_jax.sfda(features, relabel[labels], NUM_CLASSES)) == pytest.approx(
        base, abs=1e-5
    )


def test_sfda_mask_drops_rows_and_jit_matches_eager():
    features, labels = class_data(4)
    keep = np.arange(len(labels)) % 4 != 0
    padded = features.copy()
    padded[~keep] = np.nan  # masked rows never touch the result
    got = leep_jax.sfda(padded, labels, NUM_CLASSES, mask=jnp.asarray(keep))
    assert float(got) == pytest.approx(ref.sfda(features[keep], labels[keep]), abs=1e-4)
    jitted = jax.jit(leep_jax.sfda, static_argnums=2)(features, labels, NUM_CLASSES)
    eager = leep_jax.sfda(features, labels, NUM_CLASSES)
    assert float(jitted) == pytest.approx(float(eager), abs=1e-6)


def sfda_degenerate_data():
    """Class data, and two degenerate versions of it: ``singular`` (repeated columns, the
    shrinkage clamped at 1e-10) and ``collapsed`` (every example on its class mean: zero
    within-class scatter)."""
    features, labels = class_data(5)
    singular = 5 * features.copy()
    singular[:, 4:] = singular[:, :1]
    collapsed = (2.0 * np.eye(NUM_CLASSES, 6)[labels]).astype(np.float32)
    return features, singular, collapsed, labels


def test_sfda_degenerate_inputs_are_finite():
    features, singular, collapsed, labels = sfda_degenerate_data()
    one_class = float(leep_jax.sfda(features, np.zeros_like(labels), NUM_CLASSES))
    assert one_class == pytest.approx(1.0)
    got = float(leep_jax.sfda(collapsed, labels, NUM_CLASSES))
    assert got == pytest.approx(ref.sfda(collapsed, labels), abs=1e-4)
    # The score saturates (the second pass's scatter is rounding noise), so check the
    # first pass, LDA with the identity standing in for the zero scatter, on its own.
    first, _, _, _ = sfda_module._fda_probabilities(
        jnp.asarray(collapsed), jnp.asarray(labels), jnp.ones(len(labels)), NUM_CLASSES, None
    )
    np.testing.assert_allclose(first, ref.fisher_probabilities(collapsed, labels)[0], atol=1e-5)
    score = float(leep_jax.sfda(singular, labels, NUM_CLASSES))
    assert 0 < score <= 1


def test_sfda_ridge_lets_cholesky_factor_singular_scatters(monkeypatch):
    # The eps * max-diagonal ridge (the identity for a zero scatter) keeps the within-class
    # scatter positive definite, so the eigh fallback, 13x slower at D = 1024, stays unused.
    # Eagerly, lax.cond calls only the branch it takes.
    calls = []
    real = sfda_module._solve_by_eigh
    monkeypatch.setattr(sfda_module, "_solve_by_eigh", lambda *args: calls.append(1) or real(*args))
    features, singular, collapsed, labels = sfda_degenerate_data()
    with jax.disable_jit():
        for inputs in (features, singular, collapsed):
            assert np.isfinite(float(leep_jax.sfda(inputs, labels, NUM_CLASSES)))
    assert calls == []


def test_sfda_eigh_fallback_solves_and_floors():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    matrix = (a @ a.T + np.eye(6)).astype(np.float32)
    right = rng.normal(size=(6, 3)).astype(np.float32)
    got = sfda_module._solve_by_eigh(jnp.asarray(matrix), jnp.asarray(right))
    np.testing.assert_allclose(got, np.linalg.solve(matrix, right), rtol=1e-3, atol=1e-4)
    cholesky, ok = sfda_module._solve_by_cholesky(jnp.asarray(matrix), jnp.asarray(right))
    assert bool(ok)
    np.testing.assert_allclose(cholesky, got, rtol=1e-3, atol=1e-4)
    singular = np.zeros((6, 6), np.float32)
    singular[0, 0] = 1.0
    _, ok = sfda_module._solve_by_cholesky(
        jnp.asarray(singular - np.eye(6, dtype=np.float32)), jnp.asarray(right)
    )
    assert not bool(ok)  # what sends _fda_probabilities to the eigh path
    # A factor that exists (finite) with a solve that overflows fails too.
    tiny = jnp.diag(jnp.array([1.0, 1e-37], jnp.float32))
    _, ok = sfda_module._solve_by_cholesky(tiny, jnp.array([[1.0], [100.0]]))
    assert np.all(np.isfinite(jnp.linalg.cholesky(tiny))) and not bool(ok)
    # Eigenvalues are raised to eps * max (float32 eps), and to 1 for a zero matrix.
    diagonal = np.diag([4.0, 1.0, 0, 0, 0, 0]).astype(np.float32)
    floor = 4 * np.finfo(np.float32).eps
    want = right / np.array([4.0, 1.0, floor, floor, floor, floor], np.float32)[:, None]
    got = sfda_module._solve_by_eigh(jnp.asarray(diagonal), jnp.asarray(right))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    zero = sfda_module._solve_by_eigh(jnp.zeros((6, 6)), jnp.asarray(right))
    np.testing.assert_allclose(zero, right, rtol=1e-6)
    assert np.all(
        np.isfinite(sfda_module._solve_by_eigh(jnp.asarray(singular), jnp.asarray(right)))
    )


# ------------------------------------------------------------------------------ PARC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_with_binary_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 7, size=500).astype(np.float32) / 3  # heavy ties
    same = rng.random(500) < 0.3
    valid = rng.random(500) < 0.9
    got = jax.jit(parc_module.spearman_with_binary)(values, same, valid)
    # The binary variable as PARC has it: 0 for same-class pairs, a constant otherwise.
    want = scipy.stats.spearmanr(values[valid], np.where(same, 0.0, 1.25)[valid])[0]
    assert float(got) == pytest.approx(want, abs=2e-6)


def test_spearman_with_binary_of_three_entries():
    # The smallest defined case (the pairs of three examples); rho's denominator is < 1.
    values, same = np.array([0.1, 0.2, 0.3], np.float32), np.array([True, False, False])
    got = parc_module.spearman_with_binary(values, same, np.ones(3, bool))
    want = scipy.stats.spearmanr(values, ~same)[0]
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_spearman_with_binary_counts_a_tie_group_beyond_2_to_the_24():
    # PARC ranks n(n-1)/2 pairs: from n ~ 5,800 a tie group (duplicate examples) can
    # hold more than 2^24 entries, past which float32 counts stop at 2^24; the int32
    # counts stay exact (the group's size and its "same" entries both pass 2^24). Two tie
    # groups: Spearman's rho is then the phi coefficient of the 2x2 table.
    big, small = 2**24 + 2**22, 2**22
    values = np.zeros(big + small, np.float32)
    values[big:] = 1.0
    same = np.concatenate([np.arange(big) % 8 != 0, np.arange(small) % 2 == 0])  # 18e6 same
    got = parc_module.spearman_with_binary(
        jnp.asarray(values), jnp.asarray(same), jnp.ones(big + small, bool)
    )
    want = np.corrcoef(values.astype(np.float64), ~same)[0, 1]
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_tree_sum_is_accurate():
    values = np.random.default_rng(0).random(300_001).astype(np.float32)
    assert float(parc_module.tree_sum(jnp.asarray(values))) == pytest.approx(
        values.astype(np.float64).sum(), rel=1e-6
    )


# Even n: the k = n/2 pairs are listed twice in the kernel's layout; odd n: once.
@pytest.mark.parametrize(("n", "num_dims"), [(60, None), (61, 3)])
def test_parc_matches_reference(n, num_dims):
    features, labels = class_data(n, n=n)
    got = float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=num_dims))
    assert got == pytest.approx(ref.parc(features, labels, num_dims), abs=1e-3)


def test_parc_keeps_32_principal_components_by_default():
    # The peer's default (TencentARC/SFDA projects on 32 components).
    features, labels = class_data(18, n=61, dims=40)
    got = float(leep_jax.parc(features, labels, NUM_CLASSES))
    assert got == pytest.approx(ref.parc(features, labels, 32), abs=1e-3)
    assert got != pytest.approx(ref.parc(features, labels, 33), abs=1e-3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's 1-value rows
def test_parc_takes_one_component_and_at_most_46340_examples(monkeypatch):
    features, labels = class_data(19, n=61)
    # One component is allowed; a row of one value has no correlation with another, so
    # every dissimilarity is 1 and rho undefined, as in the reference.
    got = float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=1))
    assert np.isnan(got) and np.isnan(ref.parc(features, labels, 1))
    # The limit of the int32 pair ranks, checked before the O(n^2) kernel (stubbed here:
    # 46,340 examples would take ~13 GB).
    reached = []
    monkeypatch.setattr(parc_module, "_parc", lambda *args: reached.append(args[0].shape[0]))
    labels = np.arange(46_341, dtype=np.int32) % NUM_CLASSES
    features = np.zeros((46_341, 2), np.float32)
    with pytest.raises(
        ValueError, match=r"at most 46340 examples \(int32 pair ranks\), got 46341;"
    ):
        leep_jax.parc(features, labels, NUM_CLASSES)
    leep_jax.parc(features[:-1], labels[:-1], NUM_CLASSES)
    assert reached == [46_340]


def test_parc_absent_classes():
    features, labels = class_data(7, n=60, present=[1, 3, 4])
    got = float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=None))
    assert got == pytest.approx(ref.parc(features, labels, None), abs=1e-3)


def test_parc_invariances_mask_and_jit():
    features, labels = class_data(8, n=60)
    base = float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=None))
    order = np.random.default_rng(1).permutation(60)
    relabel = np.array([3, 0, 4, 1, 2], np.int32)
    permuted = leep_jax.parc(features[order], labels[order], NUM_CLASSES, num_dims=None)
    assert float(permuted) == pytest.approx(base, abs=1e-3)
    relabelled = leep_jax.parc(features, relabel[labels], NUM_CLASSES, num_dims=None)
    assert float(relabelled) == pytest.approx(base, abs=1e-4)
    jitted = jax.jit(leep_jax.parc, static_argnums=2, static_argnames="num_dims")
    assert float(jitted(features, labels, NUM_CLASSES, num_dims=None)) == pytest.approx(
        base, abs=1e-5
    )
    keep = np.arange(60) % 5 != 1
    padded = np.where(keep[:, None], features, 1e6).astype(np.float32)
    masked = leep_jax.parc(padded, labels, NUM_CLASSES, num_dims=None, mask=jnp.asarray(keep))
    assert float(masked) == pytest.approx(ref.parc(features[keep], labels[keep], None), abs=1e-3)


def test_parc_degenerate_inputs():
    features, labels = class_data(9, n=60)
    # One class: the label dissimilarity is constant and Spearman's rho undefined.
    one_class = leep_jax.parc(features, np.zeros_like(labels), NUM_CLASSES, num_dims=None)
    assert np.isnan(float(one_class))
    # A singleton class is fine.
    labels = labels.copy()
    labels[labels == 4] = 3
    labels[0] = 4
    got = float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=None))
    assert got == pytest.approx(ref.parc(features, labels, None), abs=1e-3)
    # An example at the feature mean (constant standardised row) stays finite.
    features = features.copy()
    features[1] = features.mean(axis=0)
    assert np.isfinite(float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=None)))
    with pytest.raises(ValueError, match="num_dims"):
        leep_jax.parc(features, labels, NUM_CLASSES, num_dims=0)
    # A constant row has no correlation (NaN in NumPy): it becomes 0, correlation 0.
    rows = parc_module._row_normalize(jnp.array([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(rows, [[0, 0, 0], [-(0.5**0.5), 0, 0.5**0.5]], rtol=1e-6)


def test_sfda_mask_with_class_zero_absent():
    # Masked rows take label 0 inside; class 0 being absent must not make them NaN.
    features, labels = class_data(15, present=[1, 2, 3, 4])
    keep = np.arange(len(labels)) % 6 != 0
    got = leep_jax.sfda(features, labels, NUM_CLASSES, mask=jnp.asarray(keep))
    assert float(got) == pytest.approx(ref.sfda(features[keep], labels[keep]), abs=1e-4)


def test_principal_components_signs_and_weights_match_reference():
    # The signs matter (a flipped column changes the row correlations); rows of weight 0
    # (masked; _parc zeroes their features first) take no part and score 0.
    keep = np.arange(61) % 4 != 2
    for seed in range(4):
        features, _ = class_data(20 + seed, n=61)
        padded = np.where(keep[:, None], features, 0).astype(np.float32)
        got = parc_module.principal_components(
            jnp.asarray(padded), jnp.asarray(keep, jnp.float32), 3
        )
        got = np.asarray(got)
        np.testing.assert_allclose(got[keep], ref.pca_scores(features[keep], 3), atol=1e-4)
        np.testing.assert_array_equal(got[~keep], 0)


def test_parc_with_pca_and_mask_matches_reference():
    features, labels = class_data(13, n=61)
    keep = np.arange(61) % 5 != 1
    padded = np.where(keep[:, None], features, 1e6).astype(np.float32)
    got = leep_jax.parc(padded, labels, NUM_CLASSES, num_dims=3, mask=jnp.asarray(keep))
    assert float(got) == pytest.approx(ref.parc(features[keep], labels[keep], 3), abs=1e-3)


def test_parc_zeroes_a_constant_column_whose_mean_rounds():
    # In float32 the mean of 49 copies of 0.3 is not 0.3: centred, the column is a
    # constant ~6e-8 with a variance > 0, which standardised would be a column of +-1.
    # Its spread over the kept rows (0) marks it constant, as in scikit-learn.
    features, labels = class_data(16, n=61)
    features[:, 2] = 0.3
    keep = np.arange(61) % 5 != 1
    padded = np.where(keep[:, None], features, -7.0).astype(np.float32)
    got = leep_jax.parc(padded, labels, NUM_CLASSES, num_dims=None, mask=jnp.asarray(keep))
    assert float(got) == pytest.approx(ref.parc(features[keep], labels[keep], None), abs=1e-3)
    # A column of variance exactly 1 (+-1, mean exactly 0) is an ordinary column.
    features, labels = class_data(17, n=60)
    features[:, 3] = np.where(np.arange(60) % 2 == 0, 1.0, -1.0)
    got = leep_jax.parc(features, labels, NUM_CLASSES, num_dims=None)
    assert float(got) == pytest.approx(ref.parc(features, labels, None), abs=1e-3)


def test_parc_zeroes_principal_axes_without_variance():
    # Repeated columns at a large scale: two axes of zero variance whose float32
    # eigenvalues are roundoff of the largest; kept, they would be standardised noise.
    features, labels = class_data(14, n=61, scale=1000.0)
    features[:, 4] = features[:, 0]
    features[:, 5] = features[:, 1]
    got = float(leep_jax.parc(features, labels, NUM_CLASSES, num_dims=6))
    assert got == pytest.approx(ref.parc(features, labels, 6), abs=1e-3)


# ----------------------------------------------------------------------------- NLEEP

NLEEP_CLASSES = 3
PER_CLASS = 2


def mixture_data(seed, n=150):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % NLEEP_CLASSES).astype(np.int32)
    rng.shuffle(labels)
    spread = np.array([3, 2, 1.5, 1, 0.5, 0.3])
    features = rng.normal(size=(n, 6)) * spread + 4 * np.eye(NLEEP_CLASSES, 6)[labels]
    return features.astype(np.float32), labels


def _fit(features, labels, key, mask):
    """nleep and its intermediates: PCA scores, initial means, log-posteriors, iterations."""
    return nleep_module._fit(
        features, labels, NLEEP_CLASSES, key, PER_CLASS, 0.8, jnp.asarray(mask), True
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_nleep_matches_float64_em_and_leep(seed):
    features, labels = mixture_data(seed)
    # The last rows are padding: the mask drops them, NaN and all.
    keep = np.arange(len(labels)) < 140
    features[~keep] = np.nan
    score, (scores, initial, log_posteriors, iterations) = _fit(
        features, labels, jax.random.key(seed), keep
    )
    valid = features[keep]
    num_kept = ref.pca_num_kept(valid, 0.8)
    pca = PCA(0.8).fit(valid.astype(np.float64))
    assert num_kept == pca.n_components_
    # The kernel's PCA scores: scikit-learn's up to each axis's sign, zero past num_kept.
    kernel = np.asarray(scores)[keep]
    want = pca.transform(valid.astype(np.float64))
    signs = np.sign(np.sum(kernel[:, :num_kept] * want, axis=0))
    np.testing.assert_allclose(kernel[:, :num_kept] * signs, want, atol=1e-4)
    assert not np.any(kernel[:, num_kept:])
    # Given the kernel's PCA scores and k-means means, a float64 EM finds the same mixture.
    scores = np.asarray(scores)[keep, :num_kept]
    initial = np.asarray(initial)[:, :num_kept]
    log_resp, lower_bound, want_iterations = ref.gaussian_mixture_em(scores, initial)
    assert int(iterations) == want_iterations
    np.testing.assert_allclose(np.exp(log_posteriors[keep]), np.exp(log_resp), atol=1e-4)
    # The final step is exact LEEP (with the log) of the posteriors.
    want = reference.leep_from_logits(log_resp, labels[keep], NLEEP_CLASSES)
    assert float(score) == pytest.approx(want, abs=1e-4)
    # Sanity: about as good a fit as scikit-learn's EM from its own k-means start.
    sklearn_fit = GaussianMixture(NLEEP_CLASSES * PER_CLASS, random_state=0).fit(scores)
    assert lower_bound == pytest.approx(sklearn_fit.score(scores), abs=0.05)


def test_nleep_kept_axes_at_an_exact_variance_fraction():
    # Covariance diag(4, 1) exactly: the first axis explains exactly 0.8 (4 / 5 rounds to
    # float32(0.8)). scikit-learn's rule keeps the axes up to the first cumulative ratio
    # above the fraction, here both (its own SVD lands a rounding error above 0.8).
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    features = np.tile(signs * np.float32([2, 1]), (5, 1))
    labels = np.arange(20) % 2
    _, _, num_kept = nleep_module._principal_axes(features, labels, None, 2, 0.8)
    assert int(num_kept) == 2
    _, _, num_kept = nleep_module._principal_axes(features, labels, None, 2, 0.79)
    assert int(num_kept) == 1


def test_nleep_em_width_is_at_most_a_quarter_octave_above_the_kept_axes():
    for limit in (7, 100, 1000):  # none a bucket: the cap must bind
        for num_kept in range(1, limit + 1):
            width = nleep_module._width(num_kept, limit)
            assert num_kept <= width <= min(limit, int(1.25 * num_kept) + 1), (num_kept, limit)


def test_nleep_defaults_are_the_papers():
    # Li et al. (CVPR 2021): 5 Gaussians per class on the PCA axes explaining 80 %.
    features, labels = mixture_data(6)
    key = jax.random.key(0)
    explicit = leep_jax.nleep(
        features, labels, NLEEP_CLASSES, key=key, components_per_class=5, pca_variance=0.8
    )
    assert float(leep_jax.nleep(features, labels, NLEEP_CLASSES, key=key)) == float(explicit)


def test_nleep_components_mapped_in_batches_give_the_same_score(monkeypatch):
    # Real workloads map the mixture components in batches (about 2^24 elements in
    # flight); shrink the budget so these 150 x 6 rows take 2 of the 9 components a step.
    features, labels = mixture_data(5)
    call = {"key": jax.random.key(3), "components_per_class": PER_CLASS}
    whole = float(leep_jax.nleep(features, labels, NLEEP_CLASSES, **call))
    monkeypatch.setattr(nleep_module, "_BATCH_ELEMENTS", 2 * features.size)
    jax.clear_caches()
    batched = float(leep_jax.nleep(features, labels, NLEEP_CLASSES, **call))
    jax.clear_caches()
    assert batched == pytest.approx(whole, abs=1e-5)


def test_nleep_kmeans_ends_at_a_lloyd_fixed_point():
    # Lloyd stopped because no label changed: every centre is the mean of the valid rows
    # nearest to it (float64 distances), and masked rows move nothing. At two scales:
    # squared distances mostly above and all below one.
    features, _ = mixture_data(7)
    weights = (np.arange(len(features)) % 10 != 0).astype(np.float32)
    for scale in (1, 1 / 16):
        x = features * np.float32(scale)
        centers = nleep_module.kmeans_init(jax.random.key(1), jnp.asarray(x), weights, 6)
        centers, x = np.asarray(centers, np.float64), x.astype(np.float64)
        nearest = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        for m in range(6):
            rows = (nearest == m) & (weights > 0)
            assert rows.any()
            np.testing.assert_allclose(centers[m], x[rows].mean(axis=0), atol=1e-5 * scale)


@pytest.mark.parametrize("scale", [1, 1 / 8])
def test_nleep_kmeans_plus_plus_draws_rows_by_squared_distance(monkeypatch, scale):
    # With no Lloyd rounds the centres are the k-means++ seeds: the first a uniform draw
    # among the valid rows, the next one row with probability proportional to its squared
    # distance to the nearest seed so far (a seed never twice, a masked row never).
    monkeypatch.setattr(nleep_module, "KMEANS_MAX_ITERATIONS", 0)
    x = jnp.array([[7.0], [0.0], [1.0], [3.0]]) * scale
    weights = jnp.array([0.0, 1.0, 1.0, 1.0])
    keys = jax.random.split(jax.random.key(0), 6000)
    seeds = jax.vmap(lambda key: nleep_module.kmeans_init(key, x, weights, 3))(keys)
    seeds = np.asarray(seeds[..., 0]) / scale
    first, second = seeds[:, 0], seeds[:, 1]
    np.testing.assert_array_equal(np.sort(seeds, axis=1), np.tile([0, 1, 3], (len(keys), 1)))
    for value in (0, 1, 3):
        picked = first == value
        assert abs(picked.mean() - 1 / 3) < 4.5 * np.sqrt(2 / 9 / len(keys))
        others = np.array([v for v in (0, 1, 3) if v != value], np.float64)
        chance = (others - value) ** 2 / np.sum((others - value) ** 2)
        got = np.array([np.mean(second[picked] == other) for other in others])
        np.testing.assert_allclose(got, chance, atol=4.5 * np.sqrt(0.25 / picked.sum()))


def test_nleep_kmeans_plus_plus_with_every_row_covered_draws_a_valid_row(monkeypatch):
    # Two distinct valid rows, three seeds: the third has no distance left to weigh by and
    # is a uniform draw among the valid rows, never the masked first one.
    monkeypatch.setattr(nleep_module, "KMEANS_MAX_ITERATIONS", 0)
    x = jnp.array([[7.0], [0.0], [1.0], [1.0]])
    weights = jnp.array([0.0, 1.0, 1.0, 1.0])
    keys = jax.random.split(jax.random.key(1), 200)
    seeds = jax.vmap(lambda key: nleep_module.kmeans_init(key, x, weights, 3))(keys)
    assert set(np.unique(np.asarray(seeds[:, 2, 0]))) == {0.0, 1.0}


def test_nleep_kmeans_matches_float64_lloyd_from_its_seeds(monkeypatch):
    # Uniform rows, 20 clusters: Lloyd stops by the movement tolerance after 15 rounds
    # here, which twice the tolerance (12 rounds) or none (21) would move by 6e-3, 2e-2.
    x = np.random.default_rng(3).uniform(size=(1000, 2)).astype(np.float32)
    weights = np.ones(1000, np.float32)
    key = jax.random.key(3)
    centers = nleep_module.kmeans_init(key, jnp.asarray(x), weights, 20)
    monkeypatch.setattr(nleep_module, "KMEANS_MAX_ITERATIONS", 0)
    seeds = nleep_module.kmeans_init(key, jnp.asarray(x), weights, 20)
    assert np.all(np.any(np.all(np.asarray(seeds)[:, None] == x[None], axis=-1), axis=1))
    want = ref.kmeans_lloyd(x, weights, seeds)
    np.testing.assert_allclose(np.asarray(centers), want, atol=1e-5)
    # At most KMEANS_MAX_ITERATIONS rounds.
    monkeypatch.setattr(nleep_module, "KMEANS_MAX_ITERATIONS", 3)
    capped = nleep_module.kmeans_init(key, jnp.asarray(x), weights, 20)
    want = ref.kmeans_lloyd(x, weights, seeds, max_iter=3)
    np.testing.assert_allclose(np.asarray(capped), want, atol=1e-5)


def test_nleep_kmeans_matches_float64_lloyd_on_small_clusters(monkeypatch):
    # 30 rows, 6 clusters, 16 keys: some runs leave a cluster with one row away from its
    # centre, which must move onto that row.
    x = jnp.asarray(np.random.default_rng(3).normal(size=(30, 2)).astype(np.float32))
    keys = jax.random.split(jax.random.key(3), 16)
    run = jax.vmap(lambda key: nleep_module.kmeans_init(key, x, jnp.ones(30), 6))
    centers = np.asarray(run(keys))
    monkeypatch.setattr(nleep_module, "KMEANS_MAX_ITERATIONS", 0)
    for got, seeds in zip(centers, np.asarray(run(keys)), strict=True):
        np.testing.assert_allclose(got, ref.kmeans_lloyd(x, np.ones(30), seeds), atol=1e-5)


def test_nleep_kmeans_empty_cluster_keeps_its_centre():
    # Two distinct rows, three clusters: two seeds coincide, argmin gives their rows to
    # the first, and the empty one stays where it was seeded (not at the origin).
    x = jnp.array([[5.0], [5.0], [5.0], [10.0]])
    keys = jax.random.split(jax.random.key(4), 20)
    centers = jax.vmap(lambda key: nleep_module.kmeans_init(key, x, jnp.ones(4), 3))(keys)
    assert set(np.unique(np.asarray(centers))) == {5.0, 10.0}


def test_nleep_m_step_matches_scikit_learn_with_an_empty_component():
    # scikit-learn's M-step, float64: every count gets 10 eps, so a component without
    # responsibility keeps a positive weight (10 eps / n), a zero mean and reg_covar.
    from sklearn.mixture._gaussian_mixture import (
        _compute_precision_cholesky,
        _estimate_gaussian_parameters,
    )

    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 3))
    resp = rng.dirichlet(np.ones(3), size=12)
    resp = np.concatenate([resp, np.zeros((12, 1))], axis=1)  # component 3 is empty
    counts, means, covariances = _estimate_gaussian_parameters(
        x, resp, nleep_module.REG_COVAR, "full"
    )
    with jax.enable_x64(True):
        log_weights, got_means, precision_cholesky = nleep_module._m_step(
            jnp.asarray(x), jnp.ones(12), jnp.asarray(resp), 3
        )
    np.testing.assert_allclose(np.exp(log_weights), counts / counts.sum(), rtol=1e-12)
    np.testing.assert_allclose(got_means, means, atol=1e-12)
    want = _compute_precision_cholesky(covariances, "full")
    np.testing.assert_allclose(precision_cholesky, want, rtol=1e-6)


def test_nleep_m_step_keeps_the_padding_columns_at_exactly_reg_covar():
    # Traced calls run EM on all columns, those past num_kept zero. Their variance must
    # be REG_COVAR alone in every component (no jitter), so that they add the same
    # constant to every component's log-density; the real block is that of the kept
    # columns alone (up to the jitter, which scales with the width).
    rng = np.random.default_rng(4)
    kept = rng.normal(size=(12, 2)).astype(np.float32)
    x = jnp.asarray(np.concatenate([kept, np.zeros((12, 2), np.float32)], axis=1))
    resp = jnp.asarray(rng.dirichlet(np.ones(3), size=12), jnp.float32)
    m_step = jax.jit(nleep_module._m_step)
    _, means, precision_cholesky = m_step(x, jnp.ones(12), resp, jnp.int32(2))
    _, kept_means, kept_cholesky = m_step(jnp.asarray(kept), jnp.ones(12), resp, jnp.int32(2))
    np.testing.assert_allclose(means[:, :2], kept_means, rtol=1e-6)
    np.testing.assert_array_equal(means[:, 2:], 0)
    np.testing.assert_allclose(precision_cholesky[:, :2, :2], kept_cholesky, rtol=1e-5)
    np.testing.assert_array_equal(precision_cholesky[:, :2, 2:], 0)
    np.testing.assert_array_equal(precision_cholesky[:, 2:, :2], 0)
    padding = 1 / np.sqrt(np.float32(nleep_module.REG_COVAR))
    for block in precision_cholesky[:, 2:, 2:]:
        np.testing.assert_allclose(block, padding * np.eye(2), rtol=1e-6)


def test_nleep_mixture_without_num_kept_has_no_padding_columns():
    features, _ = mixture_data(0, n=60)
    x = jnp.asarray(features[:, :3])
    initial = x[:4]
    default = nleep_module.fit_gaussian_mixture(x, jnp.ones(60), initial)
    every = nleep_module.fit_gaussian_mixture(x, jnp.ones(60), initial, 3)
    jax.tree.map(np.testing.assert_array_equal, default, every)
    # Its bound and iterations are those of a float64 EM from the same means.
    _, lower_bound, iterations = ref.gaussian_mixture_em(features[:, :3], initial)
    assert int(default.num_iterations) == iterations
    assert float(default.lower_bound) == pytest.approx(lower_bound, abs=1e-4)


def test_nleep_cholesky_retries_with_more_jitter_where_rounding_breaks_it():
    # Rows on a line give a covariance singular but for REG_COVAR, which float32 cannot
    # resolve next to 1e4; rounding can leave it indefinite by a few ulps, more than the
    # jitter of one attempt (2 eps 1e4, about 2.4 ulps) makes up for.
    big = np.float32(1e4)
    low = big - 8 * np.spacing(big)
    covariance = jnp.array([[big, big], [big, low]])
    jitter = jnp.full(2, 2 * np.finfo(np.float32).eps * big)
    once = jnp.linalg.cholesky(covariance + jnp.diag(nleep_module.REG_COVAR + jitter))
    assert not np.all(np.isfinite(once))
    lower = nleep_module._regularized_cholesky(covariance, jitter)
    assert np.all(np.isfinite(lower))
    np.testing.assert_allclose(lower @ lower.T, covariance, atol=20 * float(jitter[0]))
    # A covariance that factors at once is factored as it is.
    good = jnp.array([[2.0, 0.5], [0.5, 1.0]], jnp.float32)
    want = jnp.linalg.cholesky(good + jnp.diag(nleep_module.REG_COVAR + jitter))
    np.testing.assert_array_equal(nleep_module._regularized_cholesky(good, jitter), want)


@pytest.mark.parametrize("depth", [5e5, 5e6])
def test_nleep_cholesky_jitter_grows_tenfold_up_to_a_million_times(depth):
    # diag(1, -depth) with jitter 1 factors once the jitter is scaled past depth: at
    # 10**6 for 5e5; 5e6 would need a seventh retry, and the factor stays NaN.
    covariance = jnp.diag(jnp.array([1.0, -depth], jnp.float32))
    lower = nleep_module._regularized_cholesky(covariance, jnp.ones(2, jnp.float32))
    assert nleep_module.JITTER_RETRIES == 6
    if depth < 1e6:
        np.testing.assert_allclose(lower[1, 1] ** 2, 1e6 - depth, rtol=1e-6)
    else:
        assert np.all(np.isnan(lower[1]))


def test_nleep_of_classes_on_lines_is_finite_and_matches_float64_em():
    # Each class on a line, far apart: EM squeezes components onto the lines, where
    # float32 Cholesky factors failed (NaN) before the jitter retries.
    rng = np.random.default_rng(0)
    labels = (np.arange(150) % NLEEP_CLASSES).astype(np.int32)
    directions = np.array([[1.0, 0.3], [-0.4, 1.0], [0.7, -0.7]])
    centres = np.array([[0.0, 0.0], [600.0, 0.0], [0.0, 600.0]])
    along = rng.uniform(-300, 300, size=150)
    features = (centres[labels] + along[:, None] * directions[labels]).astype(np.float32)
    iterations = []
    for seed in range(4):
        score, (scores, initial, _, num_iterations) = _fit(
            features, labels, jax.random.key(seed), np.ones(150, bool)
        )
        log_resp, _, _ = ref.gaussian_mixture_em(np.asarray(scores), np.asarray(initial))
        want = reference.leep_from_logits(log_resp, labels, NLEEP_CLASSES)
        assert float(score) == pytest.approx(want, abs=1e-6)
        iterations.append(int(num_iterations))
    # The likelihood keeps growing as components squeeze: EM stops at its cap.
    assert max(iterations) == nleep_module.MAX_ITERATIONS == 100


def test_nleep_under_x64_float32_inputs_unchanged_float64_inputs_in_float64():
    features, labels = mixture_data(8)
    call = {"key": jax.random.key(2), "components_per_class": PER_CLASS}
    want = float(leep_jax.nleep(features, labels, NLEEP_CLASSES, **call))
    with jax.enable_x64(True):
        assert float(leep_jax.nleep(features, labels, NLEEP_CLASSES, **call)) == want
        wide = leep_jax.nleep(features.astype(np.float64), labels, NLEEP_CLASSES, **call)
        assert wide.dtype == np.float64 and -10 < float(wide) <= 0


def test_nleep_jit_and_relabelling():
    features, labels = mixture_data(2)
    key = jax.random.key(7)
    mask = jnp.ones(len(labels), bool)
    call = {"key": key, "components_per_class": PER_CLASS, "mask": mask}
    eager = float(leep_jax.nleep(features, labels, NLEEP_CLASSES, **call))
    assert eager <= 0
    jitted = jax.jit(leep_jax.nleep, static_argnums=2, static_argnames="components_per_class")
    # Traced: EM on all 6 columns, the unkept ones zero; the same mixture.
    assert float(jitted(features, labels, NLEEP_CLASSES, **call)) == pytest.approx(eager, abs=1e-4)
    relabel = np.array([2, 0, 1], np.int32)
    relabelled = leep_jax.nleep(features, relabel[labels], NLEEP_CLASSES, **call)
    assert float(relabelled) == pytest.approx(eager, abs=1e-5)


def test_nleep_degenerate_inputs():
    features, labels = mixture_data(3)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"components \(5 x 3 = 15\), got 5$"):
        leep_jax.nleep(features[:5], labels[:5], NLEEP_CLASSES, key=key)
    # As many rows as components is enough (as scikit-learn).
    few = leep_jax.nleep(features[:6], labels[:6], NLEEP_CLASSES, key=key, components_per_class=2)
    assert np.isfinite(float(few))
    # Fewer distinct points than components: empty components, finite score.
    repeated = np.repeat(features[:3], 50, axis=0)
    score, _ = _fit(repeated, labels, key, np.ones(len(labels), bool))
    assert np.isfinite(float(score)) and float(score) <= 1e-6


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("components_per_class", 0, "components_per_class must be >= 1, got 0"),
        ("components_per_class", True, "components_per_class must be >= 1, got True"),
        ("pca_variance", 0.0, r"pca_variance must lie in \(0, 1\], got 0.0"),
        ("pca_variance", 1.5, r"pca_variance must lie in \(0, 1\], got 1.5"),
    ],
)
def test_nleep_rejects_bad_arguments(argument, value, message):
    features, labels = mixture_data(3, n=60)
    with pytest.raises(ValueError, match=f"^{message}$"):
        leep_jax.nleep(features, labels, NLEEP_CLASSES, key=jax.random.key(0), **{argument: value})


def test_nleep_takes_one_component_per_class_and_every_axis():
    features, labels = mixture_data(3, n=60)
    call = {"key": jax.random.key(0), "components_per_class": 1, "pca_variance": 1.0}
    assert -10 < float(leep_jax.nleep(features, labels, NLEEP_CLASSES, **call)) <= 0


@pytest.mark.parametrize("name", ["sfda", "parc", "nleep"])
def test_docstring_examples(name):
    module = importlib.import_module(f"leep_jax.scores.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_each_kernel_compiles_once_per_shape():
    features, labels = class_data(10)
    _, small_labels = class_data(11, n=60)
    nleep_features, nleep_labels = mixture_data(4)
    mask = jnp.ones(len(nleep_labels), bool)
    calls = [
        (sfda_module._sfda, lambda f: leep_jax.sfda(f, labels, NUM_CLASSES)),
        (
            parc_module._parc,
            lambda f: leep_jax.parc(f[:60], small_labels, NUM_CLASSES, num_dims=None),
        ),
        (
            nleep_module._nleep,
            lambda f: leep_jax.nleep(
                nleep_features * (1 + f[0, 0] ** 2),  # new values, same PCA width
                nleep_labels,
                NLEEP_CLASSES,
                key=jax.random.key(int(f[0, 0] > 0)),
                components_per_class=PER_CLASS,
                mask=mask,
            ),
        ),
    ]
    for kernel, call in calls:
        call(features)
        size = kernel._cache_size()
        call(features + 1.5)
        call(2 * features)
        assert kernel._cache_size() == size, kernel
