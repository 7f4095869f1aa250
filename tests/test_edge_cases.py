"""Inputs no other test feeds: tied maxima, labels just outside the range, merges of log-EEP.

Each case here was a deliberate bug (a mutant) that the rest of the suite let through:
NCE breaking argmax ties toward the last index, a label range check off by one, and a
max-instead-of-sum merge.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from flax import nnx

import leep_jax
from leep_jax import streaming
from leep_jax.models import SmallCNN, score_zoo
from leep_jax.scores import validation

Y, Z = 3, 4


def _tied_problem(n=60, seed=0):
    """Probabilities whose maximum is tied in every row, between varying columns."""
    rng = np.random.default_rng(seed)
    probs = np.zeros((n, Z), np.float32)
    for i in range(n):
        first, second = sorted(rng.choice(Z, 2, replace=False))
        probs[i, [first, second]] = 0.4
        probs[i, probs[i] == 0] = 0.2 / (Z - 2)
    labels = rng.integers(0, Y, n).astype(np.int32)
    return probs, labels


def test_nce_breaks_ties_toward_the_first_index():
    probs, labels = _tied_problem()
    want = ref.nce(probs.astype(np.float64), labels, Y)
    last_index = ref.nce(probs[:, ::-1].astype(np.float64), labels, Y)  # ties the other way
    assert abs(want - last_index) > 1e-3  # the data tell the two rules apart
    logits = np.log(probs)
    np.testing.assert_allclose(leep_jax.nce(probs, labels, Y), want, rtol=1e-6)
    np.testing.assert_allclose(leep_jax.nce(logits, labels, Y, from_logits=True), want, rtol=1e-6)
    acc = streaming.nce(Y, Z)
    state = functools.reduce(
        acc.merge,
        [acc.update(acc.init(), probs[i : i + 7], labels[i : i + 7]) for i in range(0, 60, 7)],
    )
    np.testing.assert_allclose(acc.compute(state), want, rtol=1e-6)


def _problem(n=40, seed=1):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, Z)).astype(np.float32)
    labels = rng.integers(0, Y, n).astype(np.int32)
    features = rng.normal(size=(n, 5)).astype(np.float32)
    return logits, np.asarray(jax.nn.softmax(logits)), labels, features


SCORES = {
    "leep": lambda p, lg, f, y, **kw: leep_jax.leep(p, y, Y, **kw),
    "leep_logits": lambda p, lg, f, y, **kw: leep_jax.leep(lg, y, Y, from_logits=True, **kw),
    "nce": lambda p, lg, f, y, **kw: leep_jax.nce(p, y, Y, **kw),
    "h_score": lambda p, lg, f, y, **kw: leep_jax.h_score(f, y, Y, **kw),
    "joint_distribution": lambda p, lg, f, y, **kw: leep_jax.joint_distribution(p, y, Y, **kw),
    "sharded_scores": lambda p, lg, f, y, **kw: leep_jax.sharded_scores(p, y, Y, features=f, **kw),
    **{
        name: functools.partial(
            lambda fn, p, lg, f, y, **kw: fn(f, y, Y, **kw), getattr(leep_jax, name)
        )
        for name in ("logme", "regularized_h_score", "transrate", "gbc", "sfda", "parc")
    },
    "nleep": lambda p, lg, f, y, **kw: leep_jax.nleep(f, y, Y, key=jax.random.key(0), **kw),
}


def test_scores_accumulate_in_float32_unless_the_input_is_wider():
    """Under x64 too: float32 and narrower inputs give float32, float64 gives float64
    (NCE, a function of counts, is float32 always). A float64 default would double the
    memory of every float32 call."""
    rng = np.random.default_rng(2)
    labels = np.arange(24, dtype=np.int32) % Y
    # Dyadic rows sum to 1 exactly in every dtype.
    probs = np.array([[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]])[labels % 2]
    features = rng.normal(size=(24, 5)) + labels[:, None]
    calls = {name: SCORES[name] for name in SCORES if name not in ("leep_logits", "sharded_scores")}
    calls["logme_regression"] = lambda p, lg, f, y: leep_jax.logme_regression(f, f[:, :2])
    with jax.enable_x64(True):
        for dtype in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64):
            want = jnp.float64 if dtype == jnp.float64 else jnp.float32
            p, f = jnp.asarray(probs, dtype), jnp.asarray(features, dtype)
            for name, call in calls.items():
                got = call(p, None, f, labels).dtype
                assert got == (jnp.float32 if name == "nce" else want), (name, dtype)


@pytest.mark.parametrize("bad", [Y, -1])
@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax"])
@pytest.mark.parametrize("score", sorted(SCORES))
def test_labels_just_outside_the_range_are_refused(score, as_jax, bad):
    logits, probs, labels, features = _problem()
    labels = labels.copy()
    labels[17] = bad
    labels = jnp.asarray(labels) if as_jax else labels
    with pytest.raises(
        ValueError, match=rf"labels must lie in \[0, num_target_classes={Y}\), found {bad}"
    ):
        SCORES[score](probs, logits, features, labels)


@pytest.mark.parametrize("score", sorted(SCORES))
def test_host_labels_that_int32_would_wrap_are_refused_with_a_mask_too(score):
    # 2**40 casts to 0 in int32, so only the host check, before the cast, can see it.
    logits, probs, labels, features = _problem()
    labels = labels.astype(np.int64)
    labels[17] = 2**40
    message = rf"^labels must lie in \[0, num_target_classes={Y}\), found {2**40}$"
    for kwargs in ({}, {"mask": np.arange(len(labels)) != 5}):
        with pytest.raises(ValueError, match=message):
            SCORES[score](probs, logits, features, labels, **kwargs)


@pytest.mark.parametrize("score", sorted(SCORES))
def test_valid_input_never_reaches_the_detailed_checks(score, monkeypatch):
    # The detailed stage is a second program over the data: the fast flags alone must
    # clear valid input, masked rows holding NaN and labels out of range included.
    detailed = []
    monkeypatch.setattr(
        validation, "_check_values_in_detail", lambda name, *args, **kw: detailed.append(name)
    )
    logits, probs, labels, features = _problem()
    mask = np.arange(len(labels)) % 7 != 3
    SCORES[score](probs, logits, features, labels)
    SCORES[score](probs, logits, features, labels, mask=mask)
    masked = lambda x: np.where(mask[:, None], x, np.nan).astype(x.dtype)  # noqa: E731
    bad_labels = jnp.asarray(np.where(mask, labels, 99))
    SCORES[score](masked(probs), masked(logits), masked(features), bad_labels, mask=mask)
    one_row = np.arange(len(labels)) == 0
    SCORES[score](probs, logits, features, labels, mask=one_row)
    # bfloat16 rows off by exactly their tolerance, 2**-7 (the fast stage sums in float32).
    edge = jnp.asarray(np.tile([[0.5078125, 0.25, 0.125, 0.125]], (len(labels), 1)), jnp.bfloat16)
    SCORES[score](edge, edge, features, labels)
    assert not detailed
    SCORES[score](masked(probs), masked(logits), masked(features), labels)
    assert detailed  # the spy sits where a raised flag leads


@pytest.mark.parametrize("score", sorted(SCORES))
def test_unchecked_or_traced_calls_drop_out_of_range_labels_like_masked_rows(score):
    # The value checks need every input concrete: one traced input (values, labels or
    # mask alone under jit) or validate_inputs=False skips them, host label check too.
    logits, probs, labels, features = _problem()
    bad = labels.copy()
    bad[[4, 17]] = [Y, -1]
    mask = np.arange(len(labels)) != 9
    want = SCORES[score](probs, logits, features, labels, mask=mask & (bad >= 0) & (bad < Y))
    calls = {
        "unchecked": lambda: SCORES[score](
            probs, logits, features, bad, mask=mask, validate_inputs=False
        ),
        "values": lambda: jax.jit(lambda p, lg, f: SCORES[score](p, lg, f, bad, mask=mask))(
            probs, logits, features
        ),
        "labels": lambda: jax.jit(lambda y: SCORES[score](probs, logits, features, y, mask=mask))(
            bad
        ),
        "mask": lambda: jax.jit(lambda m: SCORES[score](probs, logits, features, bad, mask=m))(
            mask
        ),
    }
    for traced, call in calls.items():
        np.testing.assert_allclose(
            jax.tree.leaves(call()), jax.tree.leaves(want), rtol=2e-5, err_msg=traced
        )


@pytest.mark.parametrize(
    "score", sorted(set(SCORES) - {"leep", "leep_logits", "nce", "joint_distribution"})
)
def test_non_finite_features_are_named_with_their_first_row(score):
    logits, probs, labels, features = _problem()
    features = features.copy()
    features[7, 2], features[30, 0] = np.inf, np.nan
    with pytest.raises(ValueError, match=r"^features contain NaN or Inf \(first in row 7\)$"):
        SCORES[score](probs, logits, features, labels)


# 2**40 only on the host: jax.Array labels are int32 here.
@pytest.mark.parametrize(
    "as_jax, bad", [(False, Y), (False, -1), (False, 2**40), (True, Y), (True, -1)]
)
@pytest.mark.parametrize("score", sorted(SCORES))
def test_masked_labels_outside_the_range_are_dropped_as_if_absent(score, as_jax, bad):
    # The host check looks only at counted rows, as the device checks do: a masked row's
    # label changes nothing, even one a cast to int32 would wrap.
    logits, probs, labels, features = _problem()
    mask = np.arange(len(labels)) % 7 != 3
    bad_labels = labels.astype(np.int64)
    bad_labels[~mask] = bad
    bad_labels = jnp.asarray(bad_labels) if as_jax else bad_labels
    got = SCORES[score](probs, logits, features, bad_labels, mask=mask)
    want = SCORES[score](probs, logits, features, labels, mask=mask)
    np.testing.assert_allclose(
        jax.tree.leaves(got), jax.tree.leaves(want), rtol=1e-6, err_msg=score
    )
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_target_classes=3\)"):
        SCORES[score](probs, logits, features, bad_labels)


@pytest.mark.parametrize("bad", [Y, -1])
@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax"])
def test_score_model_and_score_zoo_refuse_labels_just_outside_the_range(as_jax, bad):
    rng = np.random.default_rng(2)
    images = rng.random((20, 10, 10, 1)).astype(np.float32)
    labels = rng.integers(0, Y, 20).astype(np.int32)
    labels[13] = bad
    labels = jnp.asarray(labels) if as_jax else labels
    model = SmallCNN(5, width=4, rngs=nnx.Rngs(0))
    message = rf"labels must lie in \[0, num_target_classes={Y}\), found {bad}"
    with pytest.raises(ValueError, match=message):
        leep_jax.score_model(model, [(images[:10], labels[:10]), (images[10:], labels[10:])], Y)
    forward_passes = []

    class Counted(SmallCNN):
        def features(self, x):
            forward_passes.append(x.shape)
            return super().features(x)

    # A zoo refuses its labels on the host before any model runs, not after the sweep.
    counted = Counted(5, width=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=message + "$"):
        score_zoo({"m": counted}, images, labels, Y, batch_size=8)
    assert not forward_passes


def test_log_eep_merge_is_the_sum_over_the_concatenated_data():
    logits, probs, labels, _ = _problem(seed=3)
    joint, eep = streaming.joint(Y, Z), streaming.log_eep(Y, Z)
    conditional = streaming.conditional(joint.update(joint.init(), probs, labels))
    # Log-EEP terms are negative: a max-instead-of-sum merge would keep one batch only.
    parts = [
        eep.update(eep.init(), probs[i : i + 9], labels[i : i + 9], conditional)
        for i in range(0, 40, 9)
    ]
    merged = functools.reduce(eep.merge, parts)
    np.testing.assert_allclose(eep.compute(merged), leep_jax.leep(probs, labels, Y), rtol=1e-6)
    np.testing.assert_allclose(merged.count, 40)
    whole = eep.update(eep.init(), probs, labels, conditional)
    np.testing.assert_allclose(merged.log_eep_sum, whole.log_eep_sum, rtol=1e-6)
