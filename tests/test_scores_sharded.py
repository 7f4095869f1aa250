"""The in-memory scores on inputs sharded along n over 8 (simulated) devices."""

import jax
import numpy as np
import pytest
import reference as ref
from jax.sharding import AxisType, NamedSharding

import leep_jax


def _problem(n=800, z=16, y=6, d=5):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(n, z)) * 2).astype(np.float32)
    labels = rng.integers(0, y, n).astype(np.int32)
    features = (rng.normal(size=(n, d)) + labels[:, None]).astype(np.float32)
    mask = rng.random(n) < 0.9
    return logits, ref.softmax(logits).astype(np.float32), labels, features, mask


def _all_scores(logits, probs, labels, features, mask, y=6):
    return np.array(
        [
            leep_jax.leep(probs, labels, y, mask=mask),
            leep_jax.leep(logits, labels, y, from_logits=True, mask=mask),
            leep_jax.nce(probs, labels, y, mask=mask),
            leep_jax.h_score(features, labels, y, mask=mask),
            *np.asarray(leep_jax.joint_distribution(probs, labels, y, mask=mask)).ravel()[:5],
        ]
    )


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("use_set_mesh", [True, False])
def test_sharded_inputs_give_unsharded_result(axis_type, use_set_mesh):
    assert len(jax.devices()) == 8
    arrays = _problem()
    expected = _all_scores(*arrays)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, jax.P("data"))
    sharded = [jax.device_put(a, sharding) for a in arrays]
    assert len(sharded[0].sharding.device_set) == 8
    if use_set_mesh:
        with jax.set_mesh(mesh):
            got = _all_scores(*sharded)
    else:
        got = _all_scores(*sharded)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_labels_split_predictions_replicated(axis_type):
    """Only the labels split along n (predictions whole on every device)."""
    arrays = _problem()
    expected = _all_scores(*arrays)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    logits, probs, labels, features, mask = arrays
    split = NamedSharding(mesh, jax.P("data"))
    whole = NamedSharding(mesh, jax.P())
    placed = [
        jax.device_put(logits, whole),
        jax.device_put(probs, whole),
        jax.device_put(labels, split),
        jax.device_put(features, whole),
        jax.device_put(mask, split),
    ]
    with jax.set_mesh(mesh):
        got = _all_scores(*placed)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_model_axis_sharded_in_shard_map_labels_replicated():
    """A zoo's predictions split over a model axis, the shared labels replicated: each
    device vmaps the scores over its own models (the loops' carries must vary over the
    model axis although the labels do not)."""
    logits, probs, labels, _, mask = _problem(n=300, z=700)  # several CPU blocks + a tail
    zoo = np.stack([logits * s for s in (0.5, 1.0, 1.5, 2.0, -1.0, 3.0, 0.1, 1.2)])
    mesh = jax.make_mesh((8,), ("models",), axis_types=(AxisType.Explicit,))

    def scores(zoo_logits, labels, mask):
        def one(z):
            return jax.numpy.stack(
                [
                    leep_jax.leep(z, labels, 6, from_logits=True, mask=mask),
                    leep_jax.joint_distribution(z, labels, 6, from_logits=True, mask=mask)[0, 0],
                ]
            )

        return jax.vmap(one)(zoo_logits)

    sharded = jax.shard_map(
        scores, mesh=mesh, in_specs=(jax.P("models"), jax.P(), jax.P()), out_specs=jax.P("models")
    )
    placed = (
        jax.device_put(zoo, NamedSharding(mesh, jax.P("models"))),
        jax.device_put(labels, NamedSharding(mesh, jax.P())),
        jax.device_put(mask, NamedSharding(mesh, jax.P())),
    )
    got = np.asarray(jax.jit(sharded)(*placed))
    expected = np.stack(
        [
            [
                ref.leep_from_logits(z[mask], labels[mask], 6),
                ref.joint(ref.softmax(z[mask]), labels[mask], 6)[0, 0],
            ]
            for z in zoo
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
