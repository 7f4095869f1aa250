"""Scores called from several Python threads at once finish (no deadlock).

jaxlib 0.10's CPU LAPACK kernels split a batch of matrices over XLA's intra-op thread
pool and block a pool thread until the parts finish, so two batched factorisations in
flight at once on a 2-thread pool wait for each other forever. TransRate (per-class
log-determinants) and NLEEP (per-component Cholesky factors) hung this way in the
experiment's two workers; ``ops.per_matrix`` factorises one matrix per call on CPU.

The check runs in a subprocess pinned to two CPUs (XLA sizes its pool from the CPU
affinity), so a hang fails on the timeout instead of hanging the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import os, threading
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    import jax, jax.numpy as jnp, numpy as np
    from leep_jax import scores

    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(1000, 64)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 1000))
    calls = {
        "transrate": lambda f: scores.transrate(f, labels, 10),
        "nleep": lambda f: scores.nleep(f, labels, 10, key=jax.random.key(0)),
    }
    name = os.environ["SCORE"]
    call = calls[name]
    expected = float(call(features))  # compiled once, outside the threads
    results = []

    def work(barrier):
        for _ in range(3):
            barrier.wait()
            results.append(float(call(features)))

    for _ in range(4):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=work, args=(barrier,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 24 and all(r == expected for r in results), (expected, results)
    print("ok", name, expected)
    """
)


@pytest.mark.parametrize("score", ["transrate", "nleep"])
def test_batched_factorisations_from_two_threads_finish(score):
    env = dict(os.environ, SCORE=score, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{score} from two threads deadlocked (no result in 180 s)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"ok {score}")
