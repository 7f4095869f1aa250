"""Sweeps as separate processes: Ctrl-C, SIGKILL, resume; 2 processes over jax.distributed.

Every sweep here runs `python -m leep_jax.cli sweep` in subprocesses (fresh JAX, no
conftest), on 127.0.0.1 with gloo CPU collectives for the 2-process runs. A clean
1-process run is the reference that the others must equal row for row.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import reference
from sweep_zoo import make_zoo, score_rows, sweep_argv

from leep_jax.scores.names import SCORE_NAMES

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
PAIRS = 8


def _env() -> dict[str, str]:
    # No simulated devices from conftest: each process has its own one CPU device.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# `python -m leep_jax.cli`, with Python's Ctrl-C handler installed even where SIGINT is
# ignored on entry (a suite started in the background by a non-interactive shell: the
# children inherit SIG_IGN, and Python then installs no KeyboardInterrupt handler).
_CLI = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('leep_jax.cli', run_name='__main__', alter_sys=True)"
)


def _start(argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, *map(str, argv)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pairs_done(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def clean(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.sqlite"
    stdout = _finish(_start(sweep_argv(zoo["zoo"], out)))
    assert f"{PAIRS} pairs done, 0 skipped, 0 failed" in stdout
    return score_rows(out)


def _wait_for_pairs(out: Path, process: subprocess.Popen, more_than: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while _pairs_done(out) <= more_than and process.poll() is None:
        assert time.monotonic() < deadline, "no pair was committed in time"
        time.sleep(0.01)


def test_ctrl_c_then_sigkill_then_rerun_gives_exactly_the_rows_of_a_clean_run(zoo, clean, tmp_path):
    out = tmp_path / "killed.sqlite"
    process = _start(sweep_argv(zoo["zoo"], out))
    _wait_for_pairs(out, process, 0)
    process.send_signal(signal.SIGINT)  # Ctrl-C: stops cleanly, exit 130, no traceback
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == "leep-jax: interrupted"
    interrupted = _pairs_done(out)
    assert 1 <= interrupted < PAIRS, "the interrupt must land mid-sweep"

    process = _start(sweep_argv(zoo["zoo"], out))
    _wait_for_pairs(out, process, interrupted)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    committed = _pairs_done(out)
    assert interrupted < committed < PAIRS, "the kill must land mid-sweep"
    assert len(score_rows(out)) == len(SCORE_NAMES) * committed  # whole pairs only

    stdout = _finish(_start(sweep_argv(zoo["zoo"], out)))
    assert f"{PAIRS - committed} pairs done, {committed} skipped, 0 failed" in stdout
    assert score_rows(out) == clean


def test_two_processes_over_jax_distributed_equal_one_process(zoo, clean, tmp_path):
    port = _free_port()
    outs = [tmp_path / f"process{i}.sqlite" for i in range(2)]
    processes = [
        _start(sweep_argv(zoo["zoo"], outs[i], "--coordinator", f"127.0.0.1:{port}",
                          "--num-processes", "2", "--process-id", str(i), "--json"))
        for i in range(2)
    ]  # fmt: skip
    stdout = [_finish(p) for p in processes]
    summary = json.loads(stdout[0])
    assert (summary["done"], summary["skipped"], summary["processes"]) == (PAIRS, 0, 2)
    assert stdout[1] == ""
    assert not outs[1].exists(), "only process 0 writes; rows travel through the runtime"
    assert score_rows(outs[0]) == clean
    with sqlite3.connect(outs[0]) as db:
        by_process = dict(db.execute("SELECT process, COUNT(*) FROM pairs GROUP BY process"))
    assert by_process == {0: PAIRS // 2, 1: PAIRS // 2}


SHARDED = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
from jax.sharding import NamedSharding
from leep_jax import sharded_scores

data = np.load(sys.argv[3])
assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
mesh = jax.make_mesh((4,), ("data",), devices=jax.devices())
sharding = NamedSharding(mesh, jax.P("data"))
half = data["labels"].shape[0] // 2
rows = slice(jax.process_index() * half, (jax.process_index() + 1) * half)
arrays = {
    name: jax.make_array_from_process_local_data(sharding, data[name][rows])
    for name in ("logits", "labels", "features", "mask")
}
assert not arrays["logits"].is_fully_addressable
scores = sharded_scores(arrays["logits"], arrays["labels"], 4, features=arrays["features"],
                        mask=arrays["mask"], from_logits=True, mesh=mesh)
result = {k: float(v) for k, v in scores.items()}
# The value checks run on global arrays too: a NaN in process 1's rows.
local = data["logits"][rows].copy()
if jax.process_index() == 1:
    local[5, 2] = np.nan
bad = jax.make_array_from_process_local_data(sharding, local)
try:
    sharded_scores(bad, arrays["labels"], 4, from_logits=True, mesh=mesh, metrics="nce")
except ValueError as error:
    result["error"] = str(error)
print(json.dumps(result))
"""


def test_sharded_scores_over_two_processes_equal_the_float64_reference(tmp_path):
    rng = np.random.default_rng(0)
    n, y = 96, 4
    logits = rng.normal(size=(n, 7)).astype(np.float32)
    features = (rng.normal(size=(n, 5)) + 3).astype(np.float32)
    labels = rng.integers(0, y, n).astype(np.int32)
    mask = rng.random(n) < 0.9
    np.savez(tmp_path / "data.npz", logits=logits, labels=labels, features=features, mask=mask)
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    port = _free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), f"127.0.0.1:{port}", str(i), str(tmp_path / "data.npz")],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    results = [json.loads(_finish(p).strip().splitlines()[-1]) for p in processes]
    assert results[0] == results[1]
    # Every process raises, naming the global row (process 1's rows start at n / 2).
    assert results[0].pop("error") == f"predictions contain NaN or Inf (first in row {n // 2 + 5})"
    kept = labels[mask]
    expected = {
        "leep": reference.leep_from_logits(logits[mask].astype(np.float64), kept, y),
        "nce": reference.nce(reference.softmax(logits[mask].astype(np.float64)), kept, y),
        "h_score": reference.h_score(features[mask].astype(np.float64), kept, y),
    }
    for metric, value in expected.items():
        np.testing.assert_allclose(results[0][metric], value, rtol=1e-5, err_msg=metric)
