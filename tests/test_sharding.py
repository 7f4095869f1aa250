"""leep_jax.sharding: padding, and the shard_map scores against the in-memory ones.

Every sharded compile on 8 simulated CPU devices costs seconds, so the tests share one
problem (n = 1001, ragged over 2, 4 and 8 devices) and few option combinations.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding

import leep_jax
from leep_jax.scores import validation
from leep_jax.sharding import axis_size, data_mesh, pad_to_multiple, sharded_scores
from leep_jax.sharding.scores import METRICS, _sharded_scores, _sharded_scores_impl

N, Z, Y, D = 1001, 16, 6, 5
RTOL = {"leep": 1e-6, "nce": 1e-6, "h_score": 1e-5}


@functools.cache
def problem(n=N):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(n, Z)) * 2).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    labels = rng.integers(0, Y, n).astype(np.int32)
    # An offset far from 0: the H-score's global-mean shift has to keep float32 exact.
    features = (rng.normal(size=(n, D)) + 3 * labels[:, None] + 50).astype(np.float32)
    mask = rng.random(n) < 0.9
    return logits, probs, labels, features, mask


@functools.cache
def expected(n=N, from_logits=True):
    logits, probs, labels, features, mask = problem(n)
    predictions = logits if from_logits else probs
    return {
        "leep": float(leep_jax.leep(predictions, labels, Y, from_logits=from_logits, mask=mask)),
        "nce": float(leep_jax.nce(predictions, labels, Y, from_logits=from_logits, mask=mask)),
        "h_score": float(leep_jax.h_score(features, labels, Y, mask=mask)),
    }


def assert_matches(got, want):
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == () and got[name].dtype == np.float32
        np.testing.assert_allclose(float(got[name]), value, rtol=RTOL[name], err_msg=name)


def mesh_of(num_devices, axis_type=AxisType.Auto):
    devices = jax.devices()[:num_devices]
    assert len(devices) == num_devices
    return jax.make_mesh((num_devices,), ("data",), axis_types=(axis_type,), devices=devices)


def scores_on(mesh, *, n=N, from_logits=True, **kwargs):
    logits, probs, labels, features, mask = problem(n)
    return sharded_scores(
        logits if from_logits else probs,
        labels,
        Y,
        features=features,
        from_logits=from_logits,
        mask=mask,
        mesh=mesh,
        **kwargs,
    )


# --- pad_to_multiple -------------------------------------------------------------------


@pytest.mark.parametrize("n,multiple,padded_n", [(5, 4, 8), (8, 4, 8), (1, 8, 8), (1001, 8, 1008)])
def test_pad_to_multiple_shapes_and_mask(n, multiple, padded_n):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    padded, mask = pad_to_multiple(x, multiple)
    assert padded.shape == (padded_n, 3) and mask.shape == (padded_n,) and mask.dtype == bool
    np.testing.assert_array_equal(padded[:n], x)
    np.testing.assert_array_equal(padded[n:], 0)
    np.testing.assert_array_equal(mask, np.arange(padded_n) < n)


def test_pad_to_multiple_other_axis_under_jit():
    x = np.ones((2, 5), np.int32)
    padded, mask = jax.jit(functools.partial(pad_to_multiple, multiple=3, axis=-1))(x)
    assert padded.shape == (2, 6) and padded.dtype == np.int32
    np.testing.assert_array_equal(mask, [True] * 5 + [False])


@pytest.mark.parametrize("multiple", [0, -2, 2.0, True])
def test_pad_to_multiple_rejects_bad_multiple(multiple):
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(np.ones(3), multiple)


def test_pad_to_multiple_axis_range():
    # Every axis from -ndim to ndim - 1 names one; the first negative one is the first axis.
    padded, mask = pad_to_multiple(np.ones((5, 2)), 4, axis=-2)
    assert padded.shape == (8, 2) and mask.tolist() == [True] * 5 + [False] * 3
    for axis in (2, -3):
        with pytest.raises(ValueError) as error:
            pad_to_multiple(np.ones((5, 2)), 4, axis=axis)
        assert str(error.value) == f"axis {axis} is out of range for an array of shape (5, 2)"


def test_padding_and_masking_leaves_scores_unchanged():
    logits, _, labels, features, mask = problem()
    padded, padding_mask = pad_to_multiple(logits, 8)
    got = leep_jax.leep(
        padded,
        pad_to_multiple(labels, 8)[0],
        Y,
        from_logits=True,
        mask=pad_to_multiple(mask, 8)[0] & padding_mask,
    )
    np.testing.assert_allclose(got, expected()["leep"], rtol=1e-6)


# --- sharded_scores --------------------------------------------------------------------


def test_ragged_n_over_8_devices_matches_in_memory():
    assert len(jax.devices()) == 8
    mesh = mesh_of(8)
    assert axis_size(mesh, "data") == 8 and N % 8 != 0
    assert_matches(scores_on(mesh), expected())
    # mesh=None means every device on a 1-D Auto mesh: the same compiled function.
    assert_matches(scores_on(None), expected())
    assert data_mesh(None, "data") == mesh


@pytest.mark.parametrize("num_devices", [1, 2, 4])
def test_device_count_does_not_change_the_result(num_devices):
    got = scores_on(mesh_of(num_devices))
    assert_matches(got, expected())
    eight = scores_on(mesh_of(8))
    for name in got:
        np.testing.assert_allclose(got[name], eight[name], rtol=RTOL[name])


def test_h_score_of_constant_features_is_zero():
    # The sharded shift is the global mean, computed in the same program as the sums:
    # without the H-score's noise floor this scored 1 (see test_scores).
    n = 40
    features = np.float32([0.3, 0.57, 0.41]) * np.ones((n, 1), np.float32)
    probs = np.full((n, 4), 0.25, np.float32)
    got = sharded_scores(probs, np.arange(n) % 3, 3, features=features, metrics=("h_score",))
    assert float(got["h_score"]) == 0.0


def test_compiles_once_per_shape():
    mesh = mesh_of(8)
    scores_on(mesh)
    before = _sharded_scores._cache_size()
    scores_on(mesh, validate_inputs=False)
    scores_on(mesh)
    assert _sharded_scores._cache_size() == before


@pytest.mark.parametrize("use_set_mesh", [False, True])
def test_explicit_mesh_with_sharded_global_arrays(use_set_mesh):
    """Global arrays already split along n (as multi-host runs build them)."""
    mesh = mesh_of(8, AxisType.Explicit)
    n = 1008  # divisible, as jax.make_array_from_process_local_data would give
    logits, _, labels, features, mask = problem(n)
    sharding = NamedSharding(mesh, jax.P("data"))
    arrays = [jax.device_put(a, sharding) for a in (logits, labels, features, mask)]
    assert len(arrays[0].sharding.device_set) == 8
    call = functools.partial(
        sharded_scores,
        arrays[0],
        arrays[1],
        Y,
        features=arrays[2],
        from_logits=True,
        mask=arrays[3],
    )
    if use_set_mesh:
        with jax.set_mesh(mesh):
            got = call()  # mesh=None: the mesh set by jax.set_mesh
    else:
        got = call(mesh=mesh)
    assert_matches(got, expected(n))


def test_probabilities_on_a_2d_explicit_mesh():
    """Examples split over "data", replicated over "model"; probabilities as input."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    got = scores_on(mesh, from_logits=False)
    assert_matches(got, expected(from_logits=False))


def test_metrics_subset_and_no_features_needed():
    logits, _, labels, _, mask = problem()
    got = sharded_scores(
        logits, labels, Y, from_logits=True, mask=mask, mesh=mesh_of(8), metrics=("nce",)
    )
    assert set(got) == {"nce"}
    np.testing.assert_allclose(got["nce"], expected()["nce"], rtol=1e-6)


@pytest.mark.parametrize("use_set_mesh", [False, True])
def test_inside_an_outer_jit(use_set_mesh):
    """Traced inputs: the mesh comes from jax.set_mesh (abstract under jit) or all devices."""
    logits, _, labels, _, mask = problem()

    # Under set_mesh the rows are split over both axes of a 2-D mesh (8 shards).
    axis_name = ("data", "model") if use_set_mesh else "data"

    @jax.jit
    def nce(logits, labels, mask):
        return sharded_scores(
            logits, labels, Y, from_logits=True, mask=mask, metrics="nce", axis_name=axis_name
        )

    if use_set_mesh:
        mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
        with jax.set_mesh(mesh):
            got = nce(logits, labels, mask)
    else:
        got = nce(logits, labels, mask)
    np.testing.assert_allclose(got["nce"], expected()["nce"], rtol=1e-6)


@pytest.mark.parametrize("check", [False, True])
def test_each_device_reads_only_its_shard_of_the_examples(check):
    # Replicated inputs would give the same scores (every sum scaled by 8), eight times
    # the work: the shard_map body must see 1008 / 8 = 126 rows of each input.
    logits, _, labels, features, mask = problem()
    program = functools.partial(
        _sharded_scores_impl, num_target_classes=Y, from_logits=True, metrics=METRICS,
        mesh=mesh_of(8), axis_name="data", check=check,
    )  # fmt: skip
    jaxpr = jax.make_jaxpr(program)(logits, labels, features, mask)
    (shard_map,) = [e for e in jaxpr.eqns if e.primitive.name == "shard_map"]
    shapes = [v.aval.shape for v in shard_map.params["jaxpr"].invars]
    assert shapes == [(126, Z), (126,), (126,), (126, D)]


def test_valid_inputs_and_masked_bad_rows_raise_no_flag(monkeypatch):
    # The fused sweep's flags decide alone when nothing is wrong: the detailed checks (a
    # second program) never run, neither for the padded shards (1001 rows over 8
    # devices) nor for bad rows that the mask drops.
    logits, probs, labels, features, mask = problem()
    calls = []
    monkeypatch.setattr(validation, "_check_values_in_detail", lambda *a, **k: calls.append(a))
    dropped = np.flatnonzero(~mask)
    probs, labels, features = probs.copy(), labels.copy(), features.copy()
    probs[dropped[0]], features[dropped[1]], labels[dropped[2]] = np.nan, np.inf, Y + 2
    # Device labels: no host check, so the masked label out of range reaches the flags.
    labels = jax.numpy.asarray(labels)
    got = sharded_scores(probs, labels, Y, features=features, mask=mask, mesh=mesh_of(8))
    assert calls == []
    assert_matches(got, expected(from_logits=False))
    # The same flags do fire for a counted bad row.
    probs[np.flatnonzero(mask)[0]] = np.nan
    sharded_scores(probs, labels, Y, features=features, mask=mask, mesh=mesh_of(8))
    assert [a[0] for a in calls] == ["predictions"]


def test_invalid_inputs_raise_value_error():
    logits, probs, labels, features, mask = problem()
    mesh = mesh_of(8)
    with pytest.raises(ValueError, match="needs features"):
        sharded_scores(logits, labels, Y, from_logits=True, mesh=mesh)
    with pytest.raises(ValueError, match="metrics"):
        sharded_scores(logits, labels, Y, from_logits=True, mesh=mesh, metrics=("logme",))
    with pytest.raises(ValueError, match="lack axis_name 'batch'"):
        sharded_scores(
            logits, labels, Y, from_logits=True, mesh=mesh, axis_name="batch", metrics="nce"
        )
    with pytest.raises(ValueError, match="mesh must be"):
        sharded_scores(logits, labels, Y, from_logits=True, mesh="data", metrics="nce")
    with pytest.raises(ValueError, match="length mismatch"):
        sharded_scores(logits[:-1], labels, Y, from_logits=True, mesh=mesh, metrics=("nce",))
    with pytest.raises(ValueError, match="labels must lie"):
        sharded_scores(logits, labels + 1, Y, from_logits=True, mesh=mesh, metrics=("nce",))
    with pytest.raises(ValueError, match="from_logits=True"):
        sharded_scores(logits, labels, Y, mesh=mesh, metrics=("leep",))
    with pytest.raises(ValueError, match="mask excludes every example"):
        sharded_scores(probs, labels, Y, mesh=mesh, mask=np.zeros(N, bool), features=features)


def test_argument_errors_in_full():
    logits, _, labels, _, mask = problem()
    mesh = mesh_of(8)

    def message(**kwargs):
        args = {"predictions": logits, "labels": labels, "num_target_classes": Y}
        with pytest.raises(ValueError) as error:
            sharded_scores(**{**args, "from_logits": True, "metrics": "nce", **kwargs})
        return str(error.value)

    assert message(axis_name=("a", "b")) == (
        "axis_name ('a', 'b') names several axes: pass the mesh that has them"
    )
    for axis_name in ((), ("data", 3)):
        assert message(mesh=mesh, axis_name=axis_name) == (
            f"axis_name must be a mesh axis name or a tuple of them, got {axis_name!r}"
        )
    assert message(mesh=mesh, axis_name=("data", "data")) == (
        "axis_name repeats a mesh axis: ('data', 'data')"
    )
    assert message(mesh="data") == "mesh must be a jax.sharding.Mesh or None, got str"
    assert message(mesh=mesh, axis_name="batch") == (
        "mesh axes ('data',) lack axis_name 'batch'; pass axis_name= one of them (the axis "
        "the examples are split over)"
    )
    assert message(mesh=mesh, from_logits="yes") == "from_logits must be a bool, got 'yes'"
    assert message(mesh=mesh, predictions=logits[:, 0]) == (
        "predictions must be 2-D [n, k], got shape (1001,)"
    )
    assert message(mesh=mesh, mask=mask[:-1]) == "mask must have shape (1001,), got (1000,)"
    assert message(mesh=mesh, metrics=("h_score",)) == (
        'metric "h_score" needs features= (penultimate features [n, d])'
    )
    assert message(mesh=mesh, metrics=("h_score",), features=logits[:, 0]) == (
        "features must be 2-D [n, k], got shape (1001,)"
    )


def test_each_argument_traced_alone_and_axis_names_as_a_list():
    # Any traced argument turns the value checks off (they would fetch tracers).
    logits, _, labels, features, mask = problem()
    args = {"predictions": logits, "labels": labels, "features": features, "mask": mask}
    want = expected()
    for name in args:

        def score(x, name=name):
            return sharded_scores(
                **{**args, name: x}, num_target_classes=Y, from_logits=True, mesh=mesh_of(8)
            )

        assert_matches(jax.jit(score)(args[name]), want)
    assert_matches(scores_on(mesh_of(8), axis_name=["data"]), want)
