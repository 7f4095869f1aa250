"""core: LEEP, NCE and H-score throughput against a NumPy peer and a memory-read floor.

For every ``(N, Z, Y, dtype)`` of the grid, each score is jitted for the device-resident
inputs and timed (compile apart, warm-up, median of at least five runs), next to

* the NumPy peer implementation (:mod:`benchmarks.peers`) on the same float32 values,
  run in the same process; bfloat16 rows have no peer of their own (NumPy has no
  bfloat16 arithmetic) and compare their value with the float32 peer's;
* a memory floor: two jitted ``jnp.sum`` passes over the same input array, the least
  any exact two-pass LEEP can cost.

At the headline size (the largest size in quick and tiny modes) each score is also
timed as users call it, eagerly with its value checks on (``validate_inputs=True``, the
default), and LEEP from logits next to LEEP from probabilities: these calls alternate,
best of five each, so that the ratios (validated / unvalidated, logits / probabilities)
hold on a machine shared with other work.

H-score takes features, not predictions: an ``[N, D]`` array with
``D = clip(Z, 64, 512)`` (from ResNet20's 64 to ResNet18's 512 features), because its
``O(N D^2 + D^3)`` cost at ``D = 1000`` would take most of the suite's time on a CPU.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import leep_jax
from benchmarks import harness, peers

NAME = "core"
SCORES = ("leep", "nce", "h_score")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
HEADLINE = {"n": 200_000, "z": 1000, "y": 1000}
HEADLINE_REPEATS = 3
_CHUNK_ROWS = 1 << 15


def _grid(config: harness.Config):
    """``(ns, zs, ys, dtypes, headline)`` for this mode; headline is an extra LEEP size."""
    return config.pick(
        full=([10_000, 100_000, 1_000_000], [10, 1000], [2, 100, 1000], list(DTYPES), HEADLINE),
        quick=([10_000, 100_000], [10, 1000], [1000], list(DTYPES), None),
        tiny=([2_000], [10, 64], [2, 20], list(DTYPES), None),
    )


def _flop_limit(config: harness.Config) -> float:
    """Work above which a baseline (or CPU H-score) is skipped to bound the suite's time.

    N * Y * Z multiply-adds for the peer's dense matmul, N * D^2 for the covariances.
    On an accelerator the NumPy peers still run on the host CPU, where they would take
    most of the suite's few minutes: they get a tenth of the budget there (the
    headline size always runs).
    """
    limit = config.pick(full=2.5e11, quick=2e10, tiny=1e12)
    return limit if jax.default_backend() == "cpu" else limit / 10


def prediction_chunks(n: int, z: int, seed: int):
    """Yields ``f32[rows, z]`` probability rows, ``n`` rows in all.

    Rows are ``u**4`` normalised, ``u`` uniform: a spread of peaked and flat rows, and
    cheap to draw (timings do not depend on the values).
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n, _CHUNK_ROWS):
        rows = rng.random((min(_CHUNK_ROWS, n - start), z), dtype=np.float32)
        rows *= rows
        rows *= rows
        rows /= rows.sum(axis=1, keepdims=True)
        yield rows


def make_predictions(n: int, z: int, seed: int) -> np.ndarray:
    """``f32[n, z]`` predictions from :func:`prediction_chunks`."""
    out = np.empty((n, z), np.float32)
    start = 0
    for chunk in prediction_chunks(n, z, seed):
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def feature_dim(z: int) -> int:
    """The H-score feature width benchmarked next to ``Z`` source classes."""
    return min(max(z, 64), 512)


def _h_score_limit(config: harness.Config) -> float:
    """N * D^2 above which H-score (jax and NumPy) is skipped on a CPU."""
    return config.pick(full=1e10, quick=3e9, tiny=1e12)


def make_noise(n: int, d: int, seed: int) -> np.ndarray:
    """``f32[n, d]`` centred uniform noise, drawn in chunks."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        rows = out[start : start + _CHUNK_ROWS]
        rows[...] = rng.random(rows.shape, dtype=np.float32)
        rows -= 0.5
    return out


def make_features(labels: np.ndarray, d: int, num_classes: int, seed: int) -> np.ndarray:
    """``f32[n, d]`` noise plus a class-dependent mean: a full-rank covariance."""
    class_means = 0.3 * np.random.default_rng(seed + 1).standard_normal((num_classes, d))
    features = make_noise(len(labels), d, seed)
    for start in range(0, len(labels), _CHUNK_ROWS):
        rows = labels[start : start + _CHUNK_ROWS]
        features[start : start + len(rows)] += class_means[rows].astype(np.float32)
    return features


@functools.partial(jax.jit, static_argnames=("dtype",))
def _add_class_means(noise, labels, class_means, dtype):
    """Device-side :func:`make_features` from shared noise (one draw serves every Y)."""
    return (noise + class_means[labels]).astype(dtype)


def _floor(values: jax.Array) -> harness.Timing:
    """Two reads of ``values``: two calls of one jitted sum (two calls, so XLA can't CSE)."""
    total = jax.jit(lambda v: jnp.sum(v, dtype=jnp.float32)).lower(values).compile()
    return harness.time_calls(lambda: jax.block_until_ready((total(values), total(values))))


def _score_fn(score: str, num_classes: int):
    fn = {"leep": leep_jax.leep, "nce": leep_jax.nce, "h_score": leep_jax.h_score}[score]
    return lambda values, labels: fn(values, labels, num_classes, validate_inputs=False)


_PEERS = {"leep": peers.leep, "nce": peers.nce, "h_score": peers.h_score}


def _measure(
    score: str,
    values: jax.Array,
    labels: jax.Array,
    num_classes: int,
    floor: harness.Timing,
    peer_values: np.ndarray | None,
    peer_skip: str | None,
    config: harness.Config,
) -> dict[str, Any]:
    n, width = values.shape
    jax_timing = harness.time_jitted(_score_fn(score, num_classes), (values, labels))
    input_bytes = values.size * values.dtype.itemsize + labels.size * labels.dtype.itemsize
    row: dict[str, Any] = {
        "jax": jax_timing.as_dict(),
        "value": float(jax_timing.result),
        "examples_per_s": n / jax_timing.median_s,
        "gb_per_s": input_bytes / jax_timing.median_s / 1e9,
        "input_bytes": input_bytes,
        "floor": floor.as_dict(),
        "time_over_floor": jax_timing.median_s / floor.median_s,
    }
    if peer_skip is not None:
        row["peer_skipped"] = peer_skip
        return row
    host_labels = np.asarray(labels)
    peer = harness.time_calls(
        lambda: _PEERS[score](peer_values, host_labels, num_classes),
        warmup=False,
        max_seconds=config.pick(full=10.0, quick=5.0, tiny=5.0),
    )
    row["peer"] = {**peer.as_dict(), "n_runs": len(peer.runs_s), "value": peer.result}
    row["speedup_vs_peer"] = peer.median_s / jax_timing.median_s
    row["abs_diff_vs_peer"] = abs(row["value"] - peer.result)
    row["rel_diff_vs_peer"] = row["abs_diff_vs_peer"] / max(abs(peer.result), 1e-30)
    return row


RATIO_REPEATS = 5


def paired_best(calls: dict[str, Any], repeats: int = RATIO_REPEATS) -> dict[str, Any]:
    """Times blocking ``calls`` in turn (one warm-up each), ``repeats`` rounds.

    Alternating the calls exposes them to the same load, so their ratios are fair on a
    shared machine; the best of the rounds is the least disturbed run of each. Also
    records the process's CPU time per call (all of XLA's threads): on a CPU shared
    with other work it is far steadier than wall time, which includes waiting for a core.
    """
    for call in calls.values():
        jax.block_until_ready(call())
    runs: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(call())
            runs[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "best_s": min(times),
            "median_s": float(np.median(times)),
            "runs_s": times,
            "best_cpu_s": min(cpu[name]),
            "cpu_s": cpu[name],
        }
        for name, times in runs.items()
    }


@jax.jit
def _logits_of(probabilities):
    """Logits whose softmax is ``probabilities`` (floored at 1e-30), in their dtype."""
    widened = probabilities.astype(jnp.float32)
    return jnp.log(jnp.maximum(widened, 1e-30)).astype(probabilities.dtype)


# Whole-array passes over the logits that bound from below what the logits path adds to
# the probability path: one row max, and for each sweep one exponential per element.
@jax.jit
def _row_max(logits):
    return jnp.max(logits, axis=1).astype(jnp.float32)


@jax.jit
def _row_sum(logits, shift):
    return jnp.sum(logits.astype(jnp.float32) - shift[:, None], axis=1)


@jax.jit
def _row_sum_of_exp(logits, shift):
    return jnp.sum(jnp.exp(logits.astype(jnp.float32) - shift[:, None]), axis=1)


def logits_floor(best: dict[str, float]) -> float:
    """The least LEEP from logits can cost over LEEP from probabilities, as a ratio.

    Both paths sum the joint and form the per-example term; logits add a row max and,
    in each of the two sweeps, one exponential per element (sweep 2 needs the finished
    joint, so keeping the softmax between the sweeps would mean writing an ``[n, Z]``
    array). Each exponential pass costs ``row sum of exp(l - m)`` minus ``row sum of
    (l - m)``, both fused whole-array reductions.
    """
    exp_pass = max(best["row sum of exp"] - best["row sum"], 0.0)
    return (best["unvalidated"] + best["row max"] + 2 * exp_pass) / best["unvalidated"]


def call_ratios(score: str, values: jax.Array, labels: jax.Array, num_classes: int):
    """Validated / unvalidated eager calls, and for LEEP logits / probabilities.

    Every call is the public function called eagerly, as the README shows it. For LEEP
    also :func:`leep_jax.sharding.sharded_scores` (LEEP only, on the default mesh) from
    logits and from probabilities, and the passes of :func:`logits_floor`.
    """
    fn = {"leep": leep_jax.leep, "nce": leep_jax.nce, "h_score": leep_jax.h_score}[score]
    calls = {
        "unvalidated": lambda: fn(values, labels, num_classes, validate_inputs=False),
        "validated": lambda: fn(values, labels, num_classes),
    }
    logits = None
    if score == "leep":
        from leep_jax.sharding import sharded_scores

        logits = _logits_of(values)
        shift = _row_max(logits)
        sharded = functools.partial(
            sharded_scores, labels=labels, num_target_classes=num_classes, metrics=("leep",)
        )
        calls["logits"] = lambda: fn(
            logits, labels, num_classes, from_logits=True, validate_inputs=False
        )
        calls["logits validated"] = lambda: fn(logits, labels, num_classes, from_logits=True)
        calls["sharded"] = lambda: sharded(values, validate_inputs=False)
        calls["sharded logits"] = lambda: sharded(logits, from_logits=True, validate_inputs=False)
        calls["row max"] = lambda: _row_max(logits)
        calls["row sum"] = lambda: _row_sum(logits, shift)
        calls["row sum of exp"] = lambda: _row_sum_of_exp(logits, shift)
    times = paired_best(calls)
    out: dict[str, Any] = {"calls": times}
    for suffix, key in (("", "best_s"), ("_cpu_time", "best_cpu_s")):
        best = {name: t[key] for name, t in times.items()}
        out["validated_over_unvalidated" + suffix] = best["validated"] / best["unvalidated"]
        if logits is not None:
            out["logits_over_probabilities" + suffix] = best["logits"] / best["unvalidated"]
            out["logits_validated_over_unvalidated" + suffix] = (
                best["logits validated"] / best["logits"]
            )
            out["logits_over_probabilities_validated" + suffix] = (
                best["logits validated"] / best["validated"]
            )
            out["sharded_logits_over_probabilities" + suffix] = (
                best["sharded logits"] / best["sharded"]
            )
            out["logits_floor_over_probabilities" + suffix] = logits_floor(best)
    return out


def breakdown(predictions: jax.Array, labels: jax.Array, num_classes: int) -> dict[str, Any]:
    """Where LEEP's time goes: its two sweeps and the alternatives, timed apart.

    Uses the scores' internal building blocks (``leep_jax.scores``), so it tracks the
    implementation being benchmarked: the joint's segment sum (a scatter-add, block by
    block for bfloat16), the per-example term as the CPU block loop and as one gather, a
    plain cast to float32 (what the loops avoid), and the two-read floor.
    """
    from leep_jax.scores import ops
    from leep_jax.scores.joint import conditional, joint_sum
    from leep_jax.scores.leep import _log_dot

    accumulate = jnp.promote_types(predictions.dtype, jnp.float32)
    table = jax.jit(lambda p, y: conditional(joint_sum(p, y, num_classes)[0]))(predictions, labels)
    parts = {
        "leep": _score_fn("leep", num_classes),
        "joint (scatter-add)": lambda p, y, t: joint_sum(p, y, num_classes)[0],
        # Both take the predictions as they are: the block loop widens block by block.
        "per-example term, block loop (CPU path)": lambda p, y, t: ops.per_row_loop(
            _log_dot, t, p, y
        ),
        "per-example term, one gather": lambda p, y, t: ops._per_row_gather(_log_dot, t, p, y),
    }
    if predictions.dtype != accumulate:
        parts[f"cast to {jnp.dtype(accumulate).name}"] = lambda p, y, t: p.astype(accumulate)
    out: dict[str, Any] = {}
    for name, fn in parts.items():
        args = (predictions, labels) if name == "leep" else (predictions, labels, table)
        out[name] = harness.time_jitted(fn, args).as_dict()
    out["two-read floor"] = _floor(predictions).as_dict()
    return out


def _skip_reason(
    config: harness.Config, *, work: float, memory: float, what: str, always: bool = False
) -> str | None:
    if memory > config.memory_budget_gb * 1e9:
        return (
            f"{what} skipped: working set ~{harness.fmt_bytes(memory)} over the "
            f"{config.memory_budget_gb:g} GB budget"
        )
    if work > _flop_limit(config) and not always:
        return f"{what} skipped: {work:.2g} multiply-adds over the time budget"
    return None


def _peer_memory(score: str, n: int, width: int, num_classes: int) -> float:
    """Bytes the peer allocates beyond its input (dense [n, Y], masked copies, float64)."""
    if score == "leep":
        return n * num_classes * 4 + n * width * 4 / num_classes
    if score == "nce":
        return n * 8 + n * 4
    return n * width * (8 + 4 + 8)  # float64 copies in np.cov, class means


def _peer_work(score: str, n: int, width: int, num_classes: int) -> float:
    return {"leep": n * width * num_classes, "nce": n * width, "h_score": 2 * n * width**2}[score]


def run(config: harness.Config) -> dict[str, Any]:
    ns, zs, ys, dtypes, headline = _grid(config)
    info = harness.machine()
    on_cpu = jax.default_backend() == "cpu"
    sizes = [(n, z, ys) for z in zs for n in ns]
    if headline is not None:
        sizes.append((headline["n"], headline["z"], [headline["y"]]))
    if config.headline_only:
        # Three complete repeats; the summary takes the median of each figure.
        only = [(headline["n"], headline["z"], [headline["y"]])] if headline else sizes[-1:]
        sizes = only * HEADLINE_REPEATS
    rows: list[dict[str, Any]] = []
    breakdowns: dict[str, Any] = {}
    started = time.perf_counter()
    for n, z, y_values in sizes:
        input_bytes = n * z * 4
        if input_bytes > config.memory_budget_gb * 1e9:
            reason = f"input {harness.fmt_bytes(input_bytes)} over the budget"
            for dtype in dtypes:
                for y in y_values:
                    for score in SCORES:
                        rows.append(dict(score=score, n=n, z=z, y=y, dtype=dtype, skipped=reason))
            continue
        print(f"[core] N={n:,} Z={z}: generating inputs", flush=True)
        host = make_predictions(n, z, seed=n + z)
        predictions32 = jax.device_put(host)
        del host
        peer_predictions = np.asarray(predictions32)  # zero-copy view on CPU
        d = feature_dim(z)
        h_score_skip = None
        if on_cpu and n * d * d > _h_score_limit(config):
            h_score_skip = f"H-score skipped: N*D^2 = {n * d * d:.2g} over the time budget"
        noise = None if h_score_skip else jax.device_put(make_noise(n, d, seed=n + z + 1))
        peer_values_by_key: dict[tuple, float] = {}
        for dtype in dtypes:
            predictions = (
                predictions32
                if dtype == "float32"
                else jax.jit(lambda p, dt=DTYPES[dtype]: p.astype(dt))(predictions32)
            )
            harness.peak_rss_reset()
            floor = _floor(predictions)
            for y in y_values:
                labels_host = np.random.default_rng(n + y).integers(0, y, n).astype(np.int32)
                labels = jax.device_put(labels_host)
                for score in SCORES:
                    base = dict(score=score, n=n, z=z, y=y, dtype=dtype)
                    values, score_floor, peer_values = predictions, floor, peer_predictions
                    width = z
                    if score == "h_score":
                        base["d"] = width = d
                        if h_score_skip:
                            rows.append({**base, "skipped": h_score_skip})
                            continue
                        class_means = 0.3 * np.random.default_rng(y).standard_normal((y, d))
                        class_means = jax.device_put(class_means.astype(np.float32))
                        features32 = _add_class_means(noise, labels, class_means, jnp.float32)
                        values = features32.astype(DTYPES[dtype])
                        peer_values = np.asarray(features32) if dtype == "float32" else None
                        del features32
                        score_floor = _floor(values)
                    peer_skip = (
                        f"vs the float32 NumPy peer (NumPy has no {dtype})"
                        if dtype != "float32"
                        else _skip_reason(
                            config,
                            work=_peer_work(score, n, width, y),
                            memory=n * width * 4 + _peer_memory(score, n, width, y),
                            what="NumPy peer",
                            always=_is_headline(headline, n, z, y),
                        )
                    )
                    print(
                        f"[core] {score} N={n:,} {'D' if score == 'h_score' else 'Z'}={width} "
                        f"Y={y} {dtype} ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    row = {
                        **base,
                        **_measure(
                            score, values, labels, y, score_floor, peer_values, peer_skip, config
                        ),
                    }
                    key = (score, n, z, y)
                    if "peer" in row:
                        peer_values_by_key[key] = row["peer"]["value"]
                    elif key in peer_values_by_key:
                        row["abs_diff_vs_float32_peer"] = abs(
                            row["value"] - peer_values_by_key[key]
                        )
                    if _is_headline(headline, n, z, y) or (
                        headline is None and (n, z, y) == (ns[-1], zs[-1], ys[-1])
                    ):
                        print(f"[core] {score} {dtype}: validated and logits calls", flush=True)
                        row["ratios"] = call_ratios(score, values, labels, y)
                    row["peak_rss_mb"] = harness.peak_rss_mb()
                    row["load_average"] = os.getloadavg()[0]
                    if (
                        score == "leep"
                        and (
                            _is_headline(headline, n, z, y)
                            or (headline is None and (n, z, y) == (ns[-1], zs[-1], ys[-1]))
                        )
                        and (config.mode != "quick" or dtype == "float32")
                    ):
                        print(f"[core] breakdown N={n:,} Z={z} Y={y} {dtype}", flush=True)
                        key = f"N={n} Z={z} Y={y} {dtype}"
                        if key in breakdowns:
                            key += f" (repeat {sum(k.startswith(key) for k in breakdowns) + 1})"
                        breakdowns[key] = breakdown(values, labels, y)
                    rows.append(row)
                    del values, peer_values
                    gc.collect()
            del predictions
            gc.collect()
        del predictions32, peer_predictions, noise
        gc.collect()

        _write(
            config, info, rows, breakdowns, headline, final=False
        )  # partial results survive a kill

    return _write(config, info, rows, breakdowns, headline, final=True)


def _write(config, info, rows, breakdowns, headline, *, final: bool) -> dict[str, Any]:
    summary = _summary(rows, headline)
    payload = {
        "machine": info,
        "complete": final,
        "rows": rows,
        "breakdown": breakdowns,
        "summary": summary,
        "flop_limit": _flop_limit(config),
        "memory_budget_gb": config.memory_budget_gb,
    }
    markdown = _markdown(rows, info, summary, config) + _breakdown_markdown(breakdowns)
    if not final:
        markdown = markdown.replace("\n", "\n\n(partial: the run has not finished)\n", 1)
    name = f"{NAME}_headline" if config.headline_only else NAME
    harness.write_result(config, name, payload, markdown)
    if final or "leep_speedup_vs_numpy" in summary:
        harness.update_summary(config, NAME, {**summary, "file": f"{name}.json", "machine": info})
    return summary


def _is_headline(headline, n, z, y) -> bool:
    return headline is not None and (n, z, y) == (headline["n"], headline["z"], headline["y"])


def _headline_rows(rows, headline):
    """The float32 LEEP rows with a peer at the headline size (several when repeated)."""
    leep_rows = [
        r for r in rows if r["score"] == "leep" and r["dtype"] == "float32" and "peer" in r
    ]
    if headline is not None:
        return [r for r in leep_rows if _is_headline(headline, r["n"], r["z"], r["y"])]
    # Otherwise (quick, tiny): the largest size with a peer.
    largest = max(leep_rows, key=lambda r: (r["n"] * r["z"] * r["y"], r["n"]), default=None)
    return [] if largest is None else [largest]


def _summary(rows, headline) -> dict[str, Any]:
    """Headline figures; with repeated headline runs, the median of each over the runs."""
    chosen = _headline_rows(rows, headline)
    if not chosen:
        return {"note": "no float32 LEEP row with a NumPy peer was measured"}

    def median(get):
        return float(np.median([get(r) for r in chosen]))

    row = chosen[0]
    summary = {
        "leep_speedup_vs_numpy": median(lambda r: r["speedup_vs_peer"]),
        "leep_time_over_two_read_floor": median(lambda r: r["time_over_floor"]),
        "leep_seconds": median(lambda r: r["jax"]["median_s"]),
        "numpy_peer_seconds": median(lambda r: r["peer"]["median_s"]),
        "two_read_floor_seconds": median(lambda r: r["floor"]["median_s"]),
        "leep_abs_diff_vs_numpy": max(r["abs_diff_vs_peer"] for r in chosen),
        "at": {"n": row["n"], "z": row["z"], "y": row["y"], "dtype": row["dtype"]},
        "targets": {"leep_speedup_vs_numpy": ">= 20", "leep_time_over_two_read_floor": "<= 4"},
    }
    summary.update(_ratio_summary(rows, row))
    if len(chosen) > 1:
        summary["repeats"] = [
            {
                "leep_speedup_vs_numpy": r["speedup_vs_peer"],
                "leep_time_over_two_read_floor": r["time_over_floor"],
                "load_average": r.get("load_average"),
            }
            for r in chosen
        ]
    return summary


RATIO_KEYS = {
    # summary key: (score, dtype, ratio key)
    "leep_validated_over_unvalidated": ("leep", "float32", "validated_over_unvalidated"),
    "leep_logits_over_probabilities": ("leep", "float32", "logits_over_probabilities"),
    "leep_logits_over_probabilities_bfloat16": ("leep", "bfloat16", "logits_over_probabilities"),
    "leep_logits_validated_over_unvalidated": (
        "leep",
        "float32",
        "logits_validated_over_unvalidated",
    ),
    "leep_logits_over_probabilities_validated": (
        "leep",
        "float32",
        "logits_over_probabilities_validated",
    ),
    "leep_logits_over_probabilities_validated_bfloat16": (
        "leep",
        "bfloat16",
        "logits_over_probabilities_validated",
    ),
    "sharded_leep_logits_over_probabilities": (
        "leep",
        "float32",
        "sharded_logits_over_probabilities",
    ),
    "sharded_leep_logits_over_probabilities_bfloat16": (
        "leep",
        "bfloat16",
        "sharded_logits_over_probabilities",
    ),
    "leep_logits_floor_over_probabilities": ("leep", "float32", "logits_floor_over_probabilities"),
    "leep_logits_floor_over_probabilities_bfloat16": (
        "leep",
        "bfloat16",
        "logits_floor_over_probabilities",
    ),
    "nce_validated_over_unvalidated": ("nce", "float32", "validated_over_unvalidated"),
    "h_score_validated_over_unvalidated": ("h_score", "float32", "validated_over_unvalidated"),
}
RATIO_TARGETS = {
    "leep_validated_over_unvalidated": "<= 1.25",
    "leep_logits_over_probabilities": "<= 1.4",
    "leep_logits_over_probabilities_bfloat16": "<= 1.4",
    "leep_logits_over_probabilities_validated": "<= 1.4",
    "leep_logits_over_probabilities_validated_bfloat16": "<= 1.4",
    "sharded_leep_logits_over_probabilities": "<= 1.4",
    "sharded_leep_logits_over_probabilities_bfloat16": "<= 1.4",
}


def _ratio_summary(rows, at) -> dict[str, Any]:
    """Medians over repeats of the call ratios measured at the headline row's size."""
    out: dict[str, Any] = {}
    for key, (score, dtype, ratio) in RATIO_KEYS.items():
        values = [
            r["ratios"][ratio]
            for r in rows
            if "ratios" in r
            and ratio in r["ratios"]
            and (r["score"], r["dtype"], r["n"], r["z"], r["y"])
            == (score, dtype, at["n"], at["z"], at["y"])
        ]
        if values:
            out[key] = float(np.median(values))
        values = [
            r["ratios"][ratio + "_cpu_time"]
            for r in rows
            if "ratios" in r
            and ratio + "_cpu_time" in r["ratios"]
            and (r["score"], r["dtype"], r["n"], r["z"], r["y"])
            == (score, dtype, at["n"], at["z"], at["y"])
        ]
        if values:
            out[key + "_cpu_time"] = float(np.median(values))
    if out:
        out["ratio_targets"] = {k: v for k, v in RATIO_TARGETS.items() if k in out}
        out["ratio_note"] = (
            "best of 5 alternating eager calls each, same process; median over repeats; "
            "_cpu_time: the same from process CPU time (steadier on a shared CPU)"
        )
    return out


def _markdown(rows, info, summary, config) -> str:
    headers = [
        "score",
        "N",
        "Z (H-score: D)",
        "Y",
        "dtype",
        "compile s",
        "jax ms",
        "M examples/s",
        "GB/s",
        "2-read floor ms",
        "jax / floor",
        "NumPy ms",
        "speedup",
        "abs diff",
        "peak RSS MB",
        "note",
    ]
    table = []
    for r in rows:
        width = f"D={r['d']}" if "d" in r else r["z"]
        common = [r["score"], f"{r['n']:,}", width, r["y"], r["dtype"]]
        if "skipped" in r:
            table.append(common + [None] * 10 + [r["skipped"]])
            continue
        peer = r.get("peer")
        note = r.get("peer_skipped", "")
        if peer and peer["n_runs"] < harness.MIN_REPEATS:
            note = f"NumPy: {peer['n_runs']} run (slow)"
        diff = r.get("abs_diff_vs_peer", r.get("abs_diff_vs_float32_peer"))
        table.append(
            common
            + [
                r["jax"]["compile_s"],
                r["jax"]["median_s"] * 1e3,
                r["examples_per_s"] / 1e6,
                r["gb_per_s"],
                r["floor"]["median_s"] * 1e3,
                r["time_over_floor"],
                peer["median_s"] * 1e3 if peer else None,
                r.get("speedup_vs_peer"),
                f"{diff:.2e}" if diff is not None else None,
                round(r["peak_rss_mb"]) if r.get("peak_rss_mb") else None,
                note,
            ]
        )
    lines = [
        f"# core ({config.mode})",
        "",
        f"Machine: {harness.machine_line(info)}.",
        "",
        "Median of at least 5 runs after a warm-up, inputs on the device, compile timed "
        "apart; `GB/s` is input bytes (values + labels) over the median time; the floor is "
        "two jitted `jnp.sum` passes over the same input; `speedup` is NumPy peer time over "
        "jax time (float32 peer, same process); `abs diff` is |jax - NumPy| of the score "
        "(bfloat16 rows: against the float32 peer, so it includes the bfloat16 rounding of "
        "the inputs). `peak RSS MB` is the process high-water mark since this (N, Z, dtype) "
        "started.",
        "",
    ]
    if "leep_speedup_vs_numpy" in summary:
        at = summary["at"]
        repeats = len(summary.get("repeats", [])) or 1
        lines += [
            f"Headline (LEEP, N={at['n']:,}, Z={at['z']}, Y={at['y']}, {at['dtype']}"
            + (f", median of {repeats} repeats" if repeats > 1 else "")
            + "): "
            f"{summary['leep_speedup_vs_numpy']:.1f}x faster than NumPy (target >= 20), "
            f"{summary['leep_time_over_two_read_floor']:.2f}x the two-read floor "
            f"(target <= 4).",
            "",
        ]
    return (
        "\n".join(lines)
        + harness.markdown_table(headers, table)
        + "\n"
        + _ratio_markdown(rows, summary)
    )


def _ratio_markdown(rows, summary) -> str:
    """The validated and logits calls: best of 5 alternating eager calls, and ratios."""
    table = []
    for r in rows:
        ratios = r.get("ratios")
        if not ratios:
            continue
        calls = ratios["calls"]
        table.append(
            [
                r["score"],
                f"{r['n']:,}",
                r.get("d", r["z"]),
                r["y"],
                r["dtype"],
                calls["unvalidated"]["best_s"] * 1e3,
                calls["validated"]["best_s"] * 1e3,
                ratios["validated_over_unvalidated"],
                calls["logits"]["best_s"] * 1e3 if "logits" in calls else None,
                ratios.get("logits_over_probabilities"),
                calls["logits validated"]["best_s"] * 1e3 if "logits" in calls else None,
                ratios.get("validated_over_unvalidated_cpu_time"),
                ratios.get("logits_over_probabilities_cpu_time"),
                ratios.get("sharded_logits_over_probabilities_cpu_time"),
                ratios.get("logits_floor_over_probabilities_cpu_time"),
                r.get("load_average"),
            ]
        )
    if not table:
        return ""
    lines = [
        "",
        "## Eager calls as documented: value checks on, and LEEP from logits",
        "",
        "Each public function called eagerly (no outer `jit`), the calls of one row "
        "alternating, best of 5 each; `validated` is the default `validate_inputs=True`. "
        "Measured on a machine that may be shared: the ratios within a row, not the "
        "absolute times, are the figures of merit (targets: validated / unvalidated "
        "<= 1.25, logits / probabilities <= 1.4). The floor column is the least LEEP "
        "from logits can cost over LEEP from probabilities (`logits_floor`: the "
        "probability call plus a row max and two passes of one exponential per element "
        "over the logits, each timed as a fused whole-array reduction).",
        "",
    ]
    if "leep_validated_over_unvalidated" in summary:
        lines += [
            "Summary (median over repeats): LEEP validated / unvalidated "
            f"{summary['leep_validated_over_unvalidated']:.2f}, logits / probabilities "
            f"{summary.get('leep_logits_over_probabilities', float('nan')):.2f} (float32), "
            f"{summary.get('leep_logits_over_probabilities_bfloat16', float('nan')):.2f} "
            "(bfloat16).",
            "",
        ]
    headers = [
        "score",
        "N",
        "Z (H-score: D)",
        "Y",
        "dtype",
        "unvalidated ms",
        "validated ms",
        "validated / unvalidated",
        "logits ms",
        "logits / probabilities",
        "logits validated ms",
        "validated / unvalidated (CPU time)",
        "logits / probabilities (CPU time)",
        "sharded_scores logits / probabilities (CPU time)",
        "floor of logits / probabilities (CPU time)",
        "load average",
    ]
    return "\n".join(lines) + harness.markdown_table(headers, table) + "\n"


def _breakdown_markdown(breakdowns) -> str:
    lines = []
    for key, parts in breakdowns.items():
        lines += ["", f"## Where LEEP's time goes ({key})", ""]
        table = [[name, t["median_s"] * 1e3, t.get("compile_s")] for name, t in parts.items()]
        lines.append(harness.markdown_table(["part", "ms (median)", "compile s"], table))
    return "\n".join(lines) + ("\n" if lines else "")


def ratios_only(config: harness.Config) -> dict[str, Any]:
    """Only the eager-call ratios, at the headline size: ``python -m benchmarks.core``.

    A few minutes instead of the headline run's quarter hour, for re-measuring the
    ratios on a quieter machine. Writes ``core_ratios.{json,md}`` and the
    ``core_ratios`` section of ``summary.json``.
    """
    info = harness.machine()
    n, z, y = HEADLINE["n"], HEADLINE["z"], HEADLINE["y"]
    if config.mode != "full":
        n, z, y = 2_000, 64, 20
    predictions32 = jax.device_put(make_predictions(n, z, seed=n + z))
    labels = jax.device_put(np.random.default_rng(n + y).integers(0, y, n).astype(np.int32))
    rows = []
    for dtype in DTYPES:
        values = predictions32.astype(DTYPES[dtype])
        for score in ("leep", "nce"):
            print(f"[core ratios] {score} {dtype}", flush=True)
            ratios = call_ratios(score, values, labels, y)
            rows.append(
                dict(score=score, n=n, z=z, y=y, dtype=dtype, ratios=ratios)
                | {"load_average": os.getloadavg()[0]}
            )
        del values
        gc.collect()
    summary = _ratio_summary(rows, {"n": n, "z": z, "y": y})
    markdown = "\n".join(
        [f"# core ratios ({config.mode})", "", f"Machine: {harness.machine_line(info)}.", ""]
    ) + _ratio_markdown(rows, summary)
    harness.write_result(
        config, "core_ratios", {"machine": info, "rows": rows, "summary": summary}, markdown
    )
    harness.update_summary(config, "core_ratios", {**summary, "machine": info})
    return summary


if __name__ == "__main__":
    import sys

    mode = "tiny" if "--tiny" in sys.argv else "full"
    label = harness.device_label() + ("" if mode == "full" else f"-{mode}")
    print(
        ratios_only(
            harness.Config(mode=mode, out_dir=harness.RESULTS_DIR / label, memory_budget_gb=12.0)
        )
    )
