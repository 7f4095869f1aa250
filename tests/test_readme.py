"""The README's Python examples run as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_and_streaming_matches_in_memory():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    leep_jax = namespace["leep_jax"]
    streamed = float(namespace["eep"].compute(namespace["total"]))
    in_memory = float(leep_jax.leep(namespace["logits"], namespace["labels"], 10, from_logits=True))
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-6)
