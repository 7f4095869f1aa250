"""The streaming accumulators: exact under any batching, mergeable, jit/scan/psum/nnx-ready."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import leep_jax
from leep_jax import streaming
from leep_jax.scores.nce import nce_counts

N, Z, Y, D = 48, 7, 4, 3


def make_problem(seed=0, n=N):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, Z)) * 2).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    labels = rng.integers(0, Y, n).astype(np.int32)
    # A large common offset: raw float32 covariance sums would lose digits to it.
    features = (rng.normal(size=(n, D)) + labels[:, None] + 20).astype(np.float32)
    mask = rng.random(n) < 0.85
    return logits, probs, labels, features, mask


def in_memory(logits, probs, labels, features, mask):
    return {
        "leep": leep_jax.leep(probs, labels, Y, mask=mask),
        "leep_logits": leep_jax.leep(logits, labels, Y, from_logits=True, mask=mask),
        "nce": leep_jax.nce(probs, labels, Y, mask=mask),
        "h_score": leep_jax.h_score(features, labels, Y, mask=mask),
        "joint": leep_jax.joint_distribution(probs, labels, Y, mask=mask),
    }


@jax.jit
def _pass_one(states, batch, shift):
    logits, probs, labels, features, mask = batch
    joint, joint_logits = streaming.joint(Y, Z), streaming.joint(Y, Z, from_logits=True)
    nce, h_score = streaming.nce(Y, Z), streaming.h_score(Y, D, shift=shift)
    js, jls, ns, hs = states
    return (
        joint.update(js, probs, labels, mask),
        joint_logits.update(jls, logits, labels, mask),
        nce.update(ns, probs, labels, mask),
        h_score.update(hs, features, labels, mask),
    )


@jax.jit
def _pass_two(states, batch, conditionals):
    logits, probs, labels, _, mask = batch
    eep, eep_logits = streaming.log_eep(Y, Z), streaming.log_eep(Y, Z, from_logits=True)
    es, els = states
    cond, cond_logits = conditionals
    return (
        eep.update(es, probs, labels, cond, mask),
        eep_logits.update(els, logits, labels, cond_logits, mask),
    )


def streamed(batches, shift):
    """Every accumulator over ``batches`` of (logits, probs, labels, features, mask).

    The updates are jitted (one compile per batch size), as in any real loop.
    """
    joint, joint_logits = streaming.joint(Y, Z), streaming.joint(Y, Z, from_logits=True)
    eep, nce, h_score = streaming.log_eep(Y, Z), streaming.nce(Y, Z), streaming.h_score(Y, D)
    states = (joint.init(), joint_logits.init(), nce.init(), h_score.init())
    for batch in batches:
        states = _pass_one(states, batch, shift)
    js, jls, ns, hs = states
    eep_states = (eep.init(), eep.init())
    conditionals = (streaming.conditional(js), streaming.conditional(jls))
    for batch in batches:
        eep_states = _pass_two(eep_states, batch, conditionals)
    return {
        "leep": eep.compute(eep_states[0]),
        "leep_logits": eep.compute(eep_states[1]),
        "nce": nce.compute(ns),
        "h_score": h_score.compute(hs),
        "joint": joint.compute(js),
    }


def assert_scores_close(got, expected):
    for name in expected:
        rtol = 1e-5 if name == "h_score" else 1e-6
        np.testing.assert_allclose(got[name], expected[name], rtol=rtol, atol=1e-7, err_msg=name)


def split(arrays, cuts):
    return [tuple(a[lo:hi] for a in arrays) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


# Batch sizes come from a fixed set so that the jitted updates compile a few times only.
BATCH_SIZES = (1, 3, 8, 13)


def random_cuts(rng, n):
    cuts = [0]
    while cuts[-1] < n:
        size = int(rng.choice(BATCH_SIZES))
        cuts.append(cuts[-1] + (size if cuts[-1] + size <= n else 1))
    return cuts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_any_batch_split_gives_the_in_memory_scores(seed):
    arrays = make_problem(seed)
    expected = in_memory(*arrays)
    batches = split(arrays, random_cuts(np.random.default_rng(100 + seed), N))
    assert len({len(b[2]) for b in batches}) > 1
    # The shift that keeps float32 H-score sums accurate: any fixed vector near the mean.
    shift = batches[0][3].mean(axis=0)
    assert_scores_close(streamed(batches, shift), expected)


def test_batches_of_size_one():
    arrays = make_problem(3)
    batches = split(arrays, list(range(N + 1)))
    assert_scores_close(streamed(batches, arrays[3][:1].mean(0)), in_memory(*arrays))


def test_empty_batches_change_nothing():
    logits, _, labels, _, _ = make_problem(5)
    empty_logits, empty_labels = logits[:0], labels[:0]
    joint = streaming.joint(Y, Z, from_logits=True)
    state = joint.update(joint.init(), logits, labels)
    after = joint.update(state, empty_logits, empty_labels)
    jax.tree.map(np.testing.assert_array_equal, after, state)
    eep = streaming.log_eep(Y, Z, from_logits=True)
    conditional = streaming.conditional(state)
    total = eep.update(eep.init(), logits, labels, conditional)
    jax.tree.map(
        np.testing.assert_array_equal,
        eep.update(total, empty_logits, empty_labels, conditional),
        total,
    )


def test_joint_without_mask_and_single_batch():
    logits, probs, labels, _, _ = make_problem(4)
    acc = streaming.joint(Y, Z)
    state = acc.update(acc.init(), probs, labels)
    np.testing.assert_allclose(
        acc.compute(state), leep_jax.joint_distribution(probs, labels, Y), rtol=1e-6
    )


def test_conditional_is_zero_for_source_classes_never_predicted():
    probs = np.array([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0], [0.2, 0.0, 0.8]], np.float32)
    joint = streaming.joint(2, 3)
    state = joint.update(joint.init(), probs, np.array([0, 1, 1]))
    want = [[0.5 / 1.7, 0.0, 0.5 / 1.3], [1.2 / 1.7, 0.0, 0.8 / 1.3]]
    np.testing.assert_allclose(streaming.conditional(state), want, rtol=1e-6)


def test_nce_state_is_the_table_of_label_and_argmax_counts():
    # The state is documented as the co-occurrence counts [Y, Z]; NCE alone would not
    # notice cells permuted within a column (its value is invariant to that).
    _, probs, labels, _, mask = make_problem(5)
    acc = streaming.nce(Y, Z)
    state = acc.update(acc.init(), probs, labels, mask)
    want = np.zeros((Y, Z))
    np.add.at(want, (labels[mask], np.argmax(probs, axis=1)[mask]), 1)
    np.testing.assert_array_equal(state.counts, want)
    counts = nce_counts(jnp.asarray(probs), jnp.asarray(labels), Y, mask=jnp.asarray(mask))
    assert counts.dtype == jnp.float32  # f32[Y, Z], as documented
    np.testing.assert_array_equal(counts, want)


def _three_states(arrays):
    batches = split(arrays, [0, 10, 29, N])
    joint, nce = streaming.joint(Y, Z), streaming.nce(Y, Z)
    h_score = streaming.h_score(Y, D, shift=arrays[3][:10].mean(0))
    cond = streaming.conditional(
        functools.reduce(
            joint.merge, [joint.update(joint.init(), b[1], b[2], b[4]) for b in batches]
        )
    )
    eep = streaming.log_eep(Y, Z)
    states = []
    for _, probs, labels, features, mask in batches:
        states.append(
            {
                "joint": (joint, joint.update(joint.init(), probs, labels, mask)),
                "nce": (nce, nce.update(nce.init(), probs, labels, mask)),
                "h_score": (h_score, h_score.update(h_score.init(), features, labels, mask)),
                "log_eep": (eep, eep.update(eep.init(), probs, labels, cond, mask)),
            }
        )
    return states


@pytest.mark.parametrize("name", ["joint", "nce", "h_score", "log_eep"])
def test_merge_is_associative_and_commutative(name):
    a, b, c = (s[name] for s in _three_states(make_problem(5)))
    acc = a[0]
    a, b, c = a[1], b[1], c[1]
    left = acc.merge(acc.merge(a, b), c)
    right = acc.merge(a, acc.merge(b, c))
    # Float addition commutes exactly; it associates up to rounding (exactly for counts).
    jax.tree.map(np.testing.assert_array_equal, acc.merge(a, b), acc.merge(b, a))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6), left, right)
    if name == "nce":
        np.testing.assert_array_equal(left.counts, right.counts)
    np.testing.assert_allclose(acc.compute(left), acc.compute(right), rtol=1e-6)
    # The empty state is the identity of merge.
    jax.tree.map(np.testing.assert_array_equal, acc.merge(acc.init(), a), a)


def _signature(state):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_state_shapes_and_dtypes_are_fixed_from_init(dtype):
    logits, probs, labels, features, mask = make_problem(6)
    cond = jnp.full((Y, Z), 1.0 / Y)
    cases = [
        (streaming.joint(Y, Z), (probs.astype(dtype), labels, mask)),
        (streaming.joint(Y, Z, from_logits=True), (logits.astype(dtype), labels)),
        (streaming.nce(Y, Z), (probs.astype(dtype), labels, mask)),
        (streaming.h_score(Y, D), (features.astype(dtype), labels, mask)),
        (streaming.log_eep(Y, Z), (probs.astype(dtype), labels, cond, mask)),
    ]
    for acc, batch in cases:
        init = acc.init()
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init))
        updated = acc.update(init, *batch)
        assert _signature(updated) == _signature(init)
        assert _signature(acc.merge(updated, init)) == _signature(init)
        assert _signature(jax.eval_shape(acc.update, init, *batch)) == _signature(init)


def test_update_checks_batch_shapes():
    acc = streaming.joint(Y, Z)
    with pytest.raises(ValueError, match="predictions batch"):
        acc.update(acc.init(), np.ones((3, Z + 1), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="labels batch"):
        acc.update(acc.init(), np.ones((3, Z), np.float32), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="conditional"):
        eep = streaming.log_eep(Y, Z)
        eep.update(eep.init(), np.ones((3, Z), np.float32), np.zeros(3, np.int32), jnp.ones((Y, 1)))
    with pytest.raises(ValueError, match="num_target_classes"):
        streaming.nce(0, Z)


def test_jit_and_lax_scan_carry_match_in_memory():
    arrays = make_problem(7)
    expected = in_memory(*arrays)
    logits, probs, labels, features, mask = arrays
    stacked = [a.reshape(6, N // 6, *a.shape[1:]) for a in arrays]
    joint, nce = streaming.joint(Y, Z, from_logits=True), streaming.nce(Y, Z)
    h_score, eep = (
        streaming.h_score(Y, D, shift=features[:8].mean(0)),
        streaming.log_eep(Y, Z, from_logits=True),
    )

    @jax.jit
    def run(stacked):
        def pass_one(carry, batch):
            js, ns, hs = carry
            lg, _, lb, ft, mk = batch
            return (
                joint.update(js, lg, lb, mk),
                nce.update(ns, lg, lb, mk),
                h_score.update(hs, ft, lb, mk),
            ), None

        (js, ns, hs), _ = jax.lax.scan(
            pass_one, (joint.init(), nce.init(), h_score.init()), stacked
        )
        cond = streaming.conditional(js)

        def pass_two(es, batch):
            lg, _, lb, _, mk = batch
            return eep.update(es, lg, lb, cond, mk), None

        es, _ = jax.lax.scan(pass_two, eep.init(), stacked)
        return eep.compute(es), nce.compute(ns), h_score.compute(hs), joint.compute(js)

    leep, nce_score, h, joint_table = run(stacked)
    np.testing.assert_allclose(leep, expected["leep_logits"], rtol=1e-6)
    np.testing.assert_allclose(nce_score, expected["nce"], rtol=1e-6)
    np.testing.assert_allclose(h, expected["h_score"], rtol=1e-5)
    np.testing.assert_allclose(joint_table, expected["joint"], rtol=1e-6, atol=1e-7)
    # jit and eager updates agree.
    eager = nce.update(nce.init(), logits, labels, mask)
    np.testing.assert_array_equal(jax.jit(nce.update)(nce.init(), logits, labels, mask), eager)


def test_psum_merges_states_across_8_devices():
    assert len(jax.devices()) == 8
    arrays = make_problem(8)
    expected = in_memory(*arrays)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    joint, nce = streaming.joint(Y, Z), streaming.nce(Y, Z)
    h_score, eep = streaming.h_score(Y, D, shift=arrays[3].mean(0)), streaming.log_eep(Y, Z)

    def per_device(logits, probs, labels, features, mask):
        assert probs.shape[0] == N // 8  # one shard per device
        js = jax.lax.psum(joint.update(joint.init(), probs, labels, mask), "data")
        es = eep.update(eep.init(), probs, labels, streaming.conditional(js), mask)
        return {
            "leep": eep.compute(jax.lax.psum(es, "data")),
            "nce": nce.compute(jax.lax.psum(nce.update(nce.init(), probs, labels, mask), "data")),
            "h_score": h_score.compute(
                jax.lax.psum(h_score.update(h_score.init(), features, labels, mask), "data")
            ),
            "joint": joint.compute(js),
        }

    got = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P()))(
        *arrays
    )
    assert_scores_close(got, {k: v for k, v in expected.items() if k != "leep_logits"})


class TinyClassifier(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(D, Z, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


def test_accumulators_in_an_nnx_optax_train_step():
    """A training loop scores the model it trains: the states ride in the step's carry."""
    logits, probs, labels, features, mask = make_problem(9)
    source_labels = np.random.default_rng(9).integers(0, Z, N).astype(np.int32)
    model = TinyClassifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    joint, nce = streaming.joint(Y, Z, from_logits=True), streaming.nce(Y, Z)

    @nnx.jit
    def train_step(model, optimizer, scores, x, source_y, target_y, mask):
        def loss_fn(model):
            out = model(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(out, source_y).mean()
            return loss, out

        (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        out = jax.lax.stop_gradient(out)
        joint_state, nce_state = scores
        scores = (
            joint.update(joint_state, out, target_y, mask),
            nce.update(nce_state, out, target_y, mask),
        )
        return loss, out, scores

    scores = (joint.init(), nce.init())
    seen, losses = [], []
    for lo in range(0, N, 12):
        rows = slice(lo, lo + 12)
        loss, out, scores = train_step(
            model,
            optimizer,
            scores,
            features[rows] - 20,
            source_labels[rows],
            labels[rows],
            mask[rows],
        )
        seen.append(np.asarray(out))
        losses.append(float(loss))
    assert losses[-1] < losses[0]  # the model did train
    seen = np.concatenate(seen)
    assert _signature(scores) == _signature((joint.init(), nce.init()))
    np.testing.assert_allclose(
        joint.compute(scores[0]),
        leep_jax.joint_distribution(seen, labels, Y, from_logits=True, mask=mask),
        rtol=1e-6,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        nce.compute(scores[1]),
        leep_jax.nce(seen, labels, Y, from_logits=True, mask=mask),
        rtol=1e-6,
    )
