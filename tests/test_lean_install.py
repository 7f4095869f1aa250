"""`pip install leep-jax` without the ``experiments`` extra: the scores work, commands say why not.

Each check runs in a subprocess where matplotlib and scikit-learn cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ImportError), as on a machine
without the extra.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCK = """
import sys
for name in ("matplotlib", "sklearn"):
    sys.modules[name] = None
"""
EXTRA = "needs the 'experiments' extra: pip install 'leep-jax[experiments]'"


def run_without_extra(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_and_scores_work_without_the_extra():
    done = run_without_extra(
        """
        import importlib, pkgutil
        import numpy as np
        import leep_jax

        # Every module imports (no top-level matplotlib or scikit-learn anywhere).
        for info in pkgutil.walk_packages(leep_jax.__path__, "leep_jax."):
            if not info.name.endswith(".__main__"):  # runs the CLI
                importlib.import_module(info.name)
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(40, 5)).astype(np.float32)
        features = rng.normal(size=(40, 6)).astype(np.float32)
        labels = (np.arange(40) % 3).astype(np.int32)
        values = [
            leep_jax.leep(logits, labels, 3, from_logits=True),
            leep_jax.nce(logits, labels, 3, from_logits=True),
            leep_jax.h_score(features, labels, 3),
        ]
        assert all(np.isfinite(float(v)) for v in values), values
        assert "matplotlib" not in sys.modules or sys.modules["matplotlib"] is None
        print("ok", *(f"{float(v):.6f}" for v in values))
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment", "--report-only", "nowhere"],
        ["experiment", "--quick", "--out", "nowhere"],
        ["rank", "--target", "digits", "--zoo", "tiny"],
    ],
)
def test_commands_that_need_the_extra_exit_2_naming_it(argv):
    done = run_without_extra(
        f"""
        from leep_jax.cli.main import main
        sys.exit(main({argv!r}))
        """
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and EXTRA in lines[0], done.stderr
