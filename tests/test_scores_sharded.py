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
