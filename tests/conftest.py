"""Test configuration: 8 simulated CPU devices and strict JAX modes.

XLA_FLAGS must be set before jax initialises its backends, so it happens here, at
import time of the conftest, before any test module imports jax.
"""

import getpass
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by both pytest-xdist workers and every
# subprocess a test starts (they inherit os.environ): the suite compiles the same
# programs in many processes (CLI runs, sweeps, the quick experiment and its resume), and
# a cache hit skips only XLA's compilation; tracing, and every result, stay the same. Its
# key is the compiled program with the JAX version and the device set, so a stale entry
# is never used. JAX still reports a cache hit as a compilation (its
# backend_compile_duration event wraps the cache read), so test_engine.py's counts hold.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"leep-jax-tests-{getpass.getuser()}", "jax-cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)

assert len(jax.devices()) == 8, f"expected 8 simulated CPU devices, got {jax.devices()}"


@pytest.fixture(autouse=True)
def _retrace_in_mutmut_stats():
    """mutmut's stats run (scripts/mutation.sh) records which tests call each function,
    and a jitted function is only called when it is traced: without clearing JAX's
    caches, a test whose shapes an earlier test compiled would not count as covering it,
    and its mutants would never meet that test."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        jax.clear_caches()
