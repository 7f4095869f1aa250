"""What every benchmark shares: run configuration, the machine, timing, result files.

Timing follows JAX's benchmarking guide: inputs are placed on the device first, the
compile is timed on its own (``jax.jit(f).lower(...).compile()``), one warm-up call
runs before the timed ones, every call ends in ``block_until_ready``, and the figure
reported is the median of at least five runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

MODES = ("full", "quick", "tiny")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIN_REPEATS = 5
# Fast calls are repeated until this much time is spent (up to MAX_REPEATS), so that
# millisecond timings are not a median of five scheduler accidents.
MIN_TIMED_SECONDS = 0.5
MAX_REPEATS = 25


@dataclasses.dataclass(frozen=True)
class Config:
    """How one invocation of the suite runs.

    Attributes:
      mode: ``"full"`` (the committed numbers), ``"quick"`` (a smaller grid, about two
        minutes on a 2-core CPU) or ``"tiny"`` (smoke sizes: checks the code runs).
      out_dir: where this run writes: ``results/<device>`` for full runs,
        ``results/<device>-<mode>`` otherwise.
      memory_budget_gb: combinations whose working set would exceed this are skipped
        and the tables say so.
      headline_only: core measures only its headline size (written to
        ``core_headline.*``; the summary's core keys are updated), to repeat the
        headline figures on a quieter machine without the whole grid.
      scores: the ``scores`` benchmark measures only these scores and merges them into
        its existing results (the others keep their numbers and dates); None: all.
    """

    mode: str
    out_dir: Path
    memory_budget_gb: float
    headline_only: bool = False
    scores: tuple[str, ...] | None = None

    def pick(self, full, quick, tiny):
        """The value for this run's mode."""
        return {"full": full, "quick": quick, "tiny": tiny}[self.mode]


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm64"):
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def machine() -> dict[str, Any]:
    """The machine and software a result was measured on, to sit beside every number."""
    device = jax.devices()[0]
    return {
        "processor": _cpu_model(),
        "platform_processor": platform.processor(),
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "load_average": list(os.getloadavg()),
    }


def device_label() -> str:
    """``cpu-<n>core`` on CPU, else a short name of the accelerator (``h100``, ``h200``)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{os.cpu_count()}core"
    kind = device.device_kind.lower()
    match = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", kind)
    if match:
        return match.group(1)
    return re.sub(r"[^a-z0-9]+", "-", kind).strip("-") or device.platform


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for the top of every table."""
    return (
        f"{info['processor']} ({info['nproc']} CPUs), device {info['device_kind']} "
        f"x{info['device_count']} ({info['backend']}), jax {info['jax']}, numpy "
        f"{info['numpy']}, load average at start {info['load_average'][0]:.2f}"
    )


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """A timed call: the median and every run, in seconds; compile time apart."""

    median_s: float
    runs_s: list[float]
    compile_s: float | None = None
    result: Any = None

    def as_dict(self) -> dict[str, Any]:
        out = {"median_s": self.median_s, "runs_s": self.runs_s}
        if self.compile_s is not None:
            out["compile_s"] = self.compile_s
        return out


def _repeat(call: Callable[[], Any], min_repeats: int, max_seconds: float | None) -> Timing:
    runs: list[float] = []
    result = None
    while True:
        start = time.perf_counter()
        result = call()
        runs.append(time.perf_counter() - start)
        if max_seconds is not None and runs[0] > max_seconds:
            break  # one slow run is all the budget allows; callers report n_runs = 1
        if len(runs) >= min_repeats and (
            sum(runs) >= MIN_TIMED_SECONDS or len(runs) >= MAX_REPEATS
        ):
            break
    return Timing(statistics.median(runs), runs, result=result)


def time_jitted(
    fn: Callable, args: Sequence[Any], *, min_repeats: int = MIN_REPEATS, **jit_kwargs
) -> Timing:
    """Compiles ``jax.jit(fn)`` for ``args`` (timed apart), warms up, then times calls.

    ``args`` should already be on the device (``jax.device_put``).
    """
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    timing = _repeat(lambda: jax.block_until_ready(compiled(*args)), min_repeats, None)
    timing.compile_s = compile_s
    return timing


def time_calls(
    call: Callable[[], Any],
    *,
    min_repeats: int = MIN_REPEATS,
    warmup: bool = True,
    max_seconds: float | None = None,
) -> Timing:
    """Times ``call()`` (which must block until its work is done) like :func:`time_jitted`.

    With ``max_seconds``, a first run slower than that is the only run (its result
    carries ``len(runs_s) == 1``), to keep slow baselines inside the suite's time.
    """
    if warmup:
        call()
    return _repeat(call, min_repeats, max_seconds)


def peak_rss_reset() -> bool:
    """Resets this process's peak RSS (VmHWM) so :func:`peak_rss_mb` measures from now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process since start or the last reset, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- results


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_result(config: Config, name: str, payload: dict[str, Any], markdown: str) -> None:
    """Writes ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``."""
    payload = {"benchmark": name, "mode": config.mode, "finished": now(), **payload}
    _write_atomic(
        config.out_dir / f"{name}.json",
        json.dumps(payload, indent=2, default=_json_default) + "\n",
    )
    _write_atomic(config.out_dir / f"{name}.md", markdown.rstrip() + "\n")


def update_summary(config: Config, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Read-modify-write of ``summary.json``: replaces only ``section``'s entry."""
    path = config.out_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary[section] = {**values, "mode": config.mode, "updated": now()}
    _write_atomic(path, json.dumps(summary, indent=2, sort_keys=True, default=_json_default) + "\n")
    return summary


def fmt_bytes(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(num_bytes) < 1000 or unit == "GB":
            return f"{num_bytes:.3g} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1000
    return f"{num_bytes:.3g} GB"
