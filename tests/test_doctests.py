"""The examples in the public docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "leep_jax.scores.leep",
    "leep_jax.scores.nce",
    "leep_jax.streaming.accumulators",
    "leep_jax.models.common",
    "leep_jax.experiments.statistics",
    "leep_jax.experiments.selection",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
