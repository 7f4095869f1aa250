"""The value checks computed inside the scores' own sweeps: same errors, same rows named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

import leep_jax
from leep_jax.scores import validation
from leep_jax.sharding import sharded_scores

Y = 3
# 700 rows of 300 classes: the CPU block loop runs blocks of 512 rows and a tail, so a bad
# row in the tail is found too.
RNG = np.random.default_rng(7)
LOGITS = (RNG.normal(size=(700, 300)) * 2).astype(np.float32)
PROBS = np.asarray(jax.nn.softmax(LOGITS, axis=-1))
LABELS = RNG.integers(0, Y, 700).astype(np.int32)
FEATURES = RNG.normal(size=(700, 6)).astype(np.float32)


def _with(array, row, col, value):
    array = array.copy()
    array[row, col] = value
    return array


PREDICTION_SCORES = {
    "leep": leep_jax.leep,
    "nce": leep_jax.nce,
    "sharded": lambda v, y, k, **kw: sharded_scores(v, y, k, metrics=("leep", "nce"), **kw),
}


@pytest.mark.parametrize("score", PREDICTION_SCORES)
@pytest.mark.parametrize("row", [3, 650])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("from_logits", [False, True])
def test_the_first_non_finite_row_is_named(score, row, value, from_logits):
    values = _with(LOGITS if from_logits else PROBS, row, 5, value)
    values = _with(values, row + 20, 9, np.nan)  # a later bad row is not the one named
    with pytest.raises(
        ValueError, match=rf"^predictions contain NaN or Inf \(first in row {row}\)$"
    ):
        PREDICTION_SCORES[score](values, LABELS, Y, from_logits=from_logits)


@pytest.mark.parametrize("score", PREDICTION_SCORES)
def test_the_worst_probability_row_is_named(score):
    probs = PROBS.copy()
    probs[10] *= 1.01
    probs[600] *= 1.2
    with pytest.raises(ValueError, match=r"row 600 is off by 0\.2"):
        PREDICTION_SCORES[score](probs, LABELS, Y)
    negative = _with(_with(PROBS, 4, 0, -0.5), 4, 1, PROBS[4, 1] + 0.5 + PROBS[4, 0])
    with pytest.raises(ValueError, match=r"negative probabilities \(min -0\.5\)"):
        PREDICTION_SCORES[score](negative, LABELS, Y)


@pytest.mark.parametrize("score", PREDICTION_SCORES)
def test_masked_bad_rows_and_labels_are_ignored(score):
    probs = _with(PROBS, 30, 2, np.nan)
    labels = LABELS.copy()
    labels[40] = 99
    keep = np.ones(700, bool)
    keep[[30, 40]] = False
    want = PREDICTION_SCORES[score](PROBS[keep], LABELS[keep], Y)
    # Host (NumPy) and device labels alike: only the counted rows are range-checked.
    for as_labels in (np.asarray, jnp.asarray):
        got = PREDICTION_SCORES[score](probs, as_labels(labels), Y, mask=keep)
        for name in ["leep", "nce"] if score == "sharded" else [None]:
            np.testing.assert_allclose(
                got if name is None else got[name],
                want if name is None else want[name],
                rtol=1e-5,
            )
        with pytest.raises(ValueError, match=r"labels must lie in \[0, num_target_classes=3\)"):
            PREDICTION_SCORES[score](PROBS, as_labels(labels), Y)


@pytest.mark.parametrize("score", ["h_score", "sharded"])
def test_features_name_the_first_non_finite_row(score):
    features = _with(_with(FEATURES, 500, 1, np.inf), 501, 2, -np.inf)
    with pytest.raises(ValueError, match=r"features contain NaN or Inf \(first in row 500\)"):
        if score == "h_score":
            leep_jax.h_score(features, LABELS, Y)
        else:
            sharded_scores(PROBS, LABELS, Y, features=features, metrics=("h_score",))


@pytest.mark.parametrize("from_logits", [False, True])
def test_valid_inputs_never_reach_the_detailed_checks(from_logits, monkeypatch):
    # The flags computed in the score's own sweeps clear valid inputs by themselves: the
    # detailed stage (a second read of the input) runs only for a bad one. Logits are
    # checked as logits, never as probability rows that fail to sum to 1.
    calls = []
    monkeypatch.setattr(validation, "_check_values_in_detail", lambda *a, **k: calls.append(a))
    values = LOGITS if from_logits else PROBS
    leep_jax.leep(values, LABELS, Y, from_logits=from_logits)
    leep_jax.nce(values, LABELS, Y, from_logits=from_logits)
    leep_jax.h_score(FEATURES, LABELS, Y)
    assert calls == []


def test_overflowing_row_sums_are_a_false_alarm_cleared_by_the_detailed_checks():
    # Finite logits whose row sums overflow float32: the fast flag fires, the detailed
    # checks find nothing wrong, and the score comes back.
    logits = np.full((6, 4), 3e38, np.float32)
    logits[:, 1] = 2.9e38
    labels = np.array([0, 1, 0, 1, 0, 1], np.int32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(logits.sum(axis=1, dtype=np.float32)).any()
    got = leep_jax.leep(logits, labels, 2, from_logits=True)
    want = ref.leep_from_logits(logits.astype(np.float64), labels, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The standalone check too: finite values pass however large their sums.
    features = np.full((6, 3), 2e38, np.float32)
    validation.validate_features(features, labels, 2, None, check=True)
    with pytest.raises(ValueError, match=r"first in row 5"):
        validation.validate_features(_with(features, 5, 0, np.inf), labels, 2, None, check=True)
    # And a feature score (column sums overflow): no error, the probability checks never
    # apply to features. (H-score itself is NaN here: float32 cannot hold the covariance.)
    leep_jax.h_score(features, labels, 2)
    # Sharded over 8 devices, with 6 rows per shard so that each shard's sums overflow.
    features, labels = np.full((48, 3), 2e38, np.float32), np.arange(48) % 2
    probs = np.full((48, 2), 0.5, np.float32)
    sharded_scores(probs, labels, 2, features=features, metrics=("h_score",))


def test_validate_keeps_its_contract():
    def check(values, labels, mask=None):
        validation.validate("predictions", values, labels, Y, mask, probabilities=True, check=True)

    nan_row = _with(PROBS, 8, 0, np.nan)
    with pytest.raises(ValueError, match=r"^predictions contain NaN or Inf \(first in row 8\)$"):
        check(nan_row, LABELS)
    # A masked-out bad row is not checked (NumPy and JAX masks alike).
    mask = np.arange(len(LABELS)) != 8
    check(nan_row, LABELS, mask)
    check(nan_row, LABELS, jnp.asarray(mask))
    # Nor is a masked-out label out of range, NumPy labels (checked on the host) included.
    bad_label = np.where(mask, LABELS, 99)
    check(PROBS, bad_label, mask)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        check(PROBS * 2, LABELS)
    values, labels, mask, classes = validation.validate(
        "predictions", PROBS, LABELS, Y, None, probabilities=True, check=True
    )
    assert isinstance(values, jax.Array) and mask is None and classes == Y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_leep_from_logits_with_the_sweep_one_normaliser_matches_the_reference(dtype, scale):
    logits = (LOGITS * scale).astype(dtype)
    wide = np.asarray(logits.astype(np.float32), np.float64)
    want = ref.leep_from_logits(wide, LABELS, Y)
    got = leep_jax.leep(logits, LABELS, Y, from_logits=True)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
