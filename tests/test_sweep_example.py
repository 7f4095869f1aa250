"""The README's sweep example runs as written, from a fresh folder.

The README's zoo file must be the one ``examples/make_sweep_zoo.py`` writes, and each
line of its shell block must succeed there: the example script, ``leep-jax sweep``
(run in-process through the CLI's ``main``, with ``--metrics leep,nce,h_score`` added
to keep the test short: a sweep's other scores are tested in test_sweep.py),
``leep-jax sweep --report`` and the ``sqlite3`` query (run through Python's sqlite3).
"""

from __future__ import annotations

import importlib.util
import math
import re
import shlex
import sqlite3
from pathlib import Path

from leep_jax.cli.main import main

REPO = Path(__file__).resolve().parents[1]
MODELS = ("cnn-a", "mlp", "from-pytorch")


def sweeps_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("### Sweeps\n") : text.index("### Command line\n")]


def example_module():
    spec = importlib.util.spec_from_file_location(
        "make_sweep_zoo", REPO / "examples" / "make_sweep_zoo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_sweep_example_runs_as_written(tmp_path, monkeypatch, capsys):
    section = sweeps_section()
    (toml,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    (shell,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [shlex.split(line, comments=True) for line in shell.strip().splitlines()]
    assert [c[0] for c in commands] == ["python", "leep-jax", "leep-jax", "sqlite3"]
    monkeypatch.chdir(tmp_path)

    make, sweep, report, query = commands
    assert make[1] == "examples/make_sweep_zoo.py"
    assert example_module().main(make[2:]) == 0
    assert (tmp_path / make[2] / "zoo.toml").read_text() == toml

    capsys.readouterr()
    assert main([*sweep[1:], "--metrics", "leep,nce,h_score", "--no-progress"]) == 0
    assert "6 pairs done, 0 skipped, 0 failed" in capsys.readouterr().out

    assert main(report[1:]) == 0
    out = capsys.readouterr().out
    targets = re.findall(r"^target (\S+) \(ranked by nce\)$", out, flags=re.M)
    assert targets == ["digits", "digits:0,2,4,6"]
    for model in MODELS:
        assert len(re.findall(rf"^\s*\d\s+{re.escape(model)}\s", out, flags=re.M)) == 2

    database, sql = query[1:]
    with sqlite3.connect(tmp_path / database) as db:
        rows = db.execute(sql).fetchall()
    assert sorted((m, t) for m, t, _ in rows) == sorted(
        (m, t) for m in MODELS for t in ("digits", "digits:0,2,4,6")
    )
    values = [v for *_, v in rows]
    assert values == sorted(values, reverse=True) and all(math.isfinite(v) for v in values)
