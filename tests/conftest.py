"""Test configuration: 8 simulated CPU devices and strict JAX modes.

XLA_FLAGS must be set before jax initialises its backends, so it happens here, at
import time of the conftest, before any test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
