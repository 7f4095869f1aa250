"""memory: peak resident memory of streaming vs in-memory LEEP on a 4 GB predictions file.

An ``[N, Z]`` float32 predictions array (N = 1e6, Z = 1000: 4 GB) and its labels are
written to ``.npy`` files in a temporary folder, chunk by chunk through
``np.lib.format.open_memmap`` (the writer never holds more than one chunk). Then, each
in a fresh subprocess whose peak RSS comes from ``os.wait4`` (``ru_maxrss``):

* **streaming**: ``leep-jax score --batch-size B`` (run as ``python -m leep_jax.cli``),
  which memory-maps the files and reads one batch at a time;
* **in-memory**: ``np.load`` of the whole array, then :func:`leep_jax.leep`;
* **baseline**: a Python process that imports leep_jax and jax and runs one op.

While a child runs, its ``/proc/<pid>/status`` is sampled to split the peak into
anonymous memory and file-backed pages (a memory map's resident pages count in RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.core import prediction_chunks

NAME = "memory"
_ROOT = Path(__file__).resolve().parents[1]

_IN_MEMORY = """
import sys, json, time
import numpy as np
import leep_jax
predictions = np.load(sys.argv[1])
labels = np.load(sys.argv[2])
start = time.perf_counter()
value = float(leep_jax.leep(predictions, labels, int(sys.argv[3])))
print(json.dumps({"leep": value, "seconds": time.perf_counter() - start}))
"""

_BASELINE = """
import json, jax.numpy as jnp, leep_jax
print(json.dumps({"value": float(jnp.zeros(1).sum())}))
"""


def _sizes(config: harness.Config) -> dict[str, Any]:
    import jax

    if jax.default_backend() != "cpu" and config.mode == "full":
        return {"n": 1_000_000, "z": 1000, "y": 100, "batch_sizes": [16_384]}
    return config.pick(
        full={"n": 1_000_000, "z": 1000, "y": 100, "batch_sizes": [16_384, 65_536]},
        quick={"n": 100_000, "z": 1000, "y": 100, "batch_sizes": [16_384]},
        tiny={"n": 10_000, "z": 100, "y": 10, "batch_sizes": [1_024]},
    )


def write_inputs(folder: Path, n: int, z: int, y: int) -> tuple[Path, Path]:
    """Writes ``predictions.npy`` ``f32[n, z]`` and ``labels.npy`` ``int32[n]`` in chunks."""
    predictions_path, labels_path = folder / "predictions.npy", folder / "labels.npy"
    # open_memmap writes the header and sizes the file; each chunk then goes through a
    # fresh map that is flushed and closed, so written pages leave this process's RSS.
    header = np.lib.format.open_memmap(predictions_path, mode="w+", dtype=np.float32, shape=(n, z))
    del header
    start = 0
    for chunk in prediction_chunks(n, z, seed=0):
        out = np.load(predictions_path, mmap_mode="r+")
        out[start : start + len(chunk)] = chunk
        out.flush()
        del out
        start += len(chunk)
    np.save(labels_path, np.random.default_rng(1).integers(0, y, n).astype(np.int32))
    return predictions_path, labels_path


# Runs in a small stdlib-only Python process that starts the measured command. Linux
# seeds a child's ru_maxrss with its parent's RSS at fork/exec, so the suite's own
# (large) process must not be the direct parent of what is measured.
_LAUNCHER = r"""
import json, os, subprocess, sys, tempfile, threading, time

def status_kb(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    fields[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return fields

command = json.loads(sys.argv[1])
start = time.perf_counter()
with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    process = subprocess.Popen(command, stdout=out, stderr=err)
    peaks, done = {}, threading.Event()

    def sample():
        while not done.is_set():
            for key, value in status_kb(process.pid).items():
                peaks[key] = max(peaks.get(key, 0), value)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    out.seek(0)
    err.seek(0)
    print(json.dumps({
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": time.perf_counter() - start,
        "maxrss_kb": usage.ru_maxrss,
        "sampled_peak_kb": peaks,
        "stdout": out.read()[-4000:],
        "stderr": err.read()[-4000:],
    }))
"""


def measure(command: list[str]) -> dict[str, Any]:
    """Runs ``command`` from a small launcher; its peak RSS, sampled breakdown, output.

    Peak RSS is ``ru_maxrss`` from ``os.wait4`` on the command (which counts its own
    children too); the breakdown samples ``/proc/<pid>/status`` every 50 ms.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    launched = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, json.dumps(command)],
        env=env,
        cwd=_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(launched.stdout)
    result = {
        "command": command,
        "returncode": report["returncode"],
        "wall_s": report["wall_s"],
        "peak_rss_mb": report["maxrss_kb"] / 1024,  # Linux reports KiB
        "sampled_peak_mb": {k: v / 1024 for k, v in report["sampled_peak_kb"].items()},
    }
    stdout = report["stdout"].strip()
    if report["returncode"] != 0:
        result["error"] = report["stderr"].strip().splitlines()[-5:]
    elif stdout:
        result["output"] = json.loads(stdout.splitlines()[-1])
    return result


def _available_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return float("inf")


def run(config: harness.Config) -> dict[str, Any]:
    info = harness.machine()
    sizes = _sizes(config)
    n, z, y = sizes["n"], sizes["z"], sizes["y"]
    python = sys.executable
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="leep-jax-bench-") as tmp:
        print(
            f"[memory] writing {harness.fmt_bytes(n * z * 4)} of predictions to {tmp}", flush=True
        )
        writer = measure(
            [
                python,
                "-c",
                (
                    "from pathlib import Path; from benchmarks.memory import write_inputs; "
                    f"write_inputs(Path({tmp!r}), {n}, {z}, {y})"
                ),
            ]
        )
        runs["writer"] = writer
        predictions, labels = Path(tmp) / "predictions.npy", Path(tmp) / "labels.npy"
        runs["baseline"] = measure([python, "-c", _BASELINE])
        for batch_size in sizes["batch_sizes"]:
            print(f"[memory] streaming, --batch-size {batch_size}", flush=True)
            runs[f"streaming_{batch_size}"] = measure(
                [
                    python,
                    "-m",
                    "leep_jax.cli",
                    "score",
                    "--predictions",
                    str(predictions),
                    "--labels",
                    str(labels),
                    "--num-target-classes",
                    str(y),
                    "--batch-size",
                    str(batch_size),
                    "--json",
                ]
            )
        # In memory: the loaded array, its device copy and the score's temporaries.
        needed = 3 * n * z * 4
        if needed > min(_available_bytes(), config.memory_budget_gb * 1e9):
            runs["in_memory"] = {
                "skipped": f"needs ~{harness.fmt_bytes(needed)}, more than "
                "available memory or the budget"
            }
        else:
            print("[memory] in-memory leep_jax.leep", flush=True)
            runs["in_memory"] = measure(
                [python, "-c", _IN_MEMORY, str(predictions), str(labels), str(y)]
            )

    headline = runs[f"streaming_{sizes['batch_sizes'][0]}"]
    in_memory = runs["in_memory"]
    summary: dict[str, Any] = {
        "streaming_peak_rss_mb": headline["peak_rss_mb"] if "error" not in headline else None,
        "streaming_batch_size": sizes["batch_sizes"][0],
        "in_memory_peak_rss_mb": in_memory.get("peak_rss_mb") if "error" not in in_memory else None,
        "baseline_peak_rss_mb": runs["baseline"]["peak_rss_mb"],
        "at": {"n": n, "z": z, "y": y},
        "targets": {"streaming_peak_rss_mb": "<= 1024"},
    }
    if "output" in headline and "output" in in_memory:
        summary["leep_abs_diff_streaming_vs_in_memory"] = abs(
            headline["output"]["leep"] - in_memory["output"]["leep"]
        )
    errors = [f"{k}: {v['error']}" for k, v in runs.items() if "error" in v]
    if errors:
        summary["errors"] = errors
    payload = {"machine": info, "sizes": sizes, "runs": runs, "summary": summary}
    harness.write_result(config, NAME, payload, _markdown(runs, sizes, summary, info, config))
    harness.update_summary(config, NAME, {**summary, "machine": info})
    return summary


def _markdown(runs, sizes, summary, info, config) -> str:
    table = []
    for name, r in runs.items():
        if "skipped" in r:
            table.append([name, None, None, None, None, None, r["skipped"]])
            continue
        sampled = r["sampled_peak_mb"]
        value = r.get("output", {}).get("leep")
        note = " / ".join(r["error"]) if "error" in r else ""
        table.append(
            [
                name,
                r["peak_rss_mb"],
                sampled.get("RssAnon"),
                sampled.get("RssFile"),
                r["wall_s"],
                value,
                note,
            ]
        )
    headers = [
        "process",
        "peak RSS MB (wait4)",
        "sampled peak anon MB",
        "sampled peak file-backed MB",
        "wall s",
        "LEEP",
        "note",
    ]
    return (
        "\n".join(
            [
                f"# memory ({config.mode})",
                "",
                f"Machine: {harness.machine_line(info)}.",
                "",
                f"LEEP of N = {sizes['n']:,} x Z = {sizes['z']} float32 predictions "
                f"({harness.fmt_bytes(sizes['n'] * sizes['z'] * 4)} .npy), Y = {sizes['y']}. Each "
                "row is a fresh process; peak RSS from `os.wait4` (ru_maxrss), the anon/file split "
                "from sampling `/proc/<pid>/status` every 50 ms (a lower bound). `streaming_B` is "
                "`leep-jax score --batch-size B --json`; `in_memory` is `np.load` + "
                "`leep_jax.leep`; `baseline` imports leep_jax and runs one jax op; `writer` wrote "
                "the file through `open_memmap`.",
                "",
                harness.markdown_table(headers, table),
                "",
                f"Streaming peak RSS: **{summary['streaming_peak_rss_mb']} MB** at --batch-size "
                f"{summary['streaming_batch_size']} (target <= 1024 MB).",
            ]
        )
        + "\n"
    )
