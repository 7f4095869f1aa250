"""Tests that kill the mutants the rest of the suite let survive (scripts/mutation.sh).

Each test names the mistake it catches; benchmarks/results/mutation/report.md lists the
mutation runs and the survivors shown to be equivalent.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from leep_jax import streaming

Y, Z, D = 3, 4, 5


def _accumulators():
    return {
        "joint": streaming.joint(Y, Z),
        "nce": streaming.nce(Y, Z),
        "h_score": streaming.h_score(Y, D),
    }


@pytest.mark.parametrize("name", ["joint", "nce", "h_score"])
def test_accumulators_refuse_batches_of_the_wrong_shape(name):
    acc = _accumulators()[name]
    width = D if name == "h_score" else Z
    what = "features" if name == "h_score" else "predictions"
    labels = np.zeros(6, np.int32)
    good = np.full((6, width), 1.0 / width, np.float32)
    acc.update(acc.init(), good, labels)  # the right shapes pass
    for values in (good[:, :-1], good[:, None, :], good[0]):
        with pytest.raises(ValueError, match=rf"{what} batch must have shape \[n, {width}\]"):
            acc.update(acc.init(), values, labels)
    with pytest.raises(ValueError, match=r"labels batch must have shape \(6,\), got \(5,\)"):
        acc.update(acc.init(), good, labels[:5])


def test_log_eep_refuses_a_conditional_of_the_wrong_shape():
    eep = streaming.log_eep(Y, Z)
    probs, labels = np.full((6, Z), 0.25, np.float32), np.zeros(6, np.int32)
    eep.update(eep.init(), probs, labels, jnp.full((Y, Z), 1.0 / Y))
    for shape in [(Y, Z + 1), (Y + 1, Z), (Z, Y)]:
        with pytest.raises(ValueError, match=rf"conditional must have shape \({Y}, {Z}\)"):
            eep.update(eep.init(), probs, labels, jnp.zeros(shape))
    with pytest.raises(ValueError, match=r"predictions batch must have shape \[n, 4\]"):
        eep.update(eep.init(), probs[:, :3], labels, jnp.zeros((Y, Z)))
