"""scores: the feature scores (LogME, H-score variants, TransRate, GBC, SFDA, PARC, NLEEP).

Each leep-jax score is timed as users call it (``leep_jax.<name>(features, labels,
num_target_classes)`` with default arguments, validation included; NLEEP with a key)
on features already on the device, against:

* its peer-style NumPy / scikit-learn implementation (``peers_features.py``), in the
  same process on the host CPU;
* the unavoidable floor shared by these scores: ``F^T F`` plus one ``D x D``
  symmetric eigendecomposition (jitted);
* for SFDA, PARC and NLEEP, their own dominant step: a ``D x D`` generalised
  eigendecomposition (Cholesky, two triangular solves, ``eigh``: what the peer's
  ``scipy.linalg.eigh(S_b, S_w)`` does), the ``N x N`` correlation matrix, and the EM
  iterations (``fit_gaussian_mixture`` on the kept principal components).

Scores missing from the installed leep_jax are skipped with a note. Synthetic features:
100 classes (NLEEP: 10) with Gaussian class means, per-dimension variances decaying as
``j^-1.2`` (so that 80 % of the variance needs tens of components, as for real
penultimate features), float32.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness, peers_features

NAME = "scores"
SCORES = (
    "logme",
    "logme_regression",
    "regularized_h_score",
    "transrate",
    "gbc",
    "sfda",
    "parc",
    "nleep",
)
# Targets: these four at most 2x the floor; every score faster than its peer.
FLOOR_BOUND = {"logme": 2.0, "regularized_h_score": 2.0, "transrate": 2.0, "gbc": 2.0}
_HIGHEST = jax.lax.Precision.HIGHEST


def _sizes(config: harness.Config) -> dict[str, int]:
    n, dims, classes, nleep_classes = config.pick(
        full=(20_000, 1_024, 100, 10), quick=(4_000, 256, 20, 5), tiny=(400, 32, 5, 3)
    )
    return {"n": n, "dims": dims, "classes": classes, "nleep_classes": nleep_classes}


def _data(n, dims, classes, nleep_classes, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dims + 1) ** -0.6  # standard deviations: variances j^-1.2
    labels = rng.integers(0, classes, n).astype(np.int32)
    means = rng.normal(size=(classes, dims)) * scale * 0.1  # overlapping classes
    noise = rng.standard_normal((n, dims), dtype=np.float32) * scale.astype(np.float32)
    features = (noise + means[labels]).astype(np.float32)
    targets = np.eye(classes, dtype=np.float32)[labels]  # logme_regression: one-hot columns
    return features, labels, (labels % nleep_classes).astype(np.int32), targets


# ----------------------------------------------------------------------- the calls


def _ours(name, device, sizes):
    """A blocking call of ``leep_jax.<name>`` as users make it, or None if missing."""
    import leep_jax

    fn = getattr(leep_jax, name, None)
    if fn is None:
        return None
    features, labels, nleep_labels, targets = device
    if name == "logme_regression":
        return lambda: jax.block_until_ready(fn(features, targets))
    if name == "nleep":
        key = jax.random.key(0)
        return lambda: jax.block_until_ready(
            fn(features, nleep_labels, sizes["nleep_classes"], key=key)
        )
    return lambda: jax.block_until_ready(fn(features, labels, sizes["classes"]))


def _peer(name, host, sizes):
    features, labels, nleep_labels, targets = host
    classes = sizes["classes"]
    if name == "logme_regression":
        return lambda: peers_features.logme_regression(features, targets)
    if name == "nleep":
        return lambda: peers_features.nleep(features, nleep_labels, sizes["nleep_classes"])
    return lambda: getattr(peers_features, name)(features, labels, classes)


def _floor(features):
    gram = jnp.matmul(features.T, features, precision=_HIGHEST)
    return jnp.linalg.eigh(gram)


def _generalized_eigh(a, b):
    lower = jnp.linalg.cholesky(b)
    left = jax.scipy.linalg.solve_triangular(lower, a, lower=True)
    reduced = jax.scipy.linalg.solve_triangular(lower, left.T, lower=True)
    values, vectors = jnp.linalg.eigh((reduced + reduced.T) / 2)
    return values, jax.scipy.linalg.solve_triangular(lower.T, vectors, lower=False)


def _correlation(unit_rows):
    return jnp.matmul(unit_rows, unit_rows.T, precision=_HIGHEST)


def _dominant_steps(host, device, sizes, names) -> dict[str, dict[str, Any]]:
    """Timings of SFDA's, PARC's and NLEEP's dominant steps on this data (those in names)."""
    import importlib

    nleep_module = importlib.import_module("leep_jax.scores.nleep")
    features, labels, nleep_labels, _ = host
    steps: dict[str, dict[str, Any]] = {}
    if "sfda" in names:
        steps["sfda"] = _sfda_step(features, labels, sizes)
    if "parc" in names:
        steps["parc"] = _parc_step(features)
    if "nleep" in names:
        steps["nleep"] = _nleep_step(nleep_module, device, sizes)
    return steps


def _sfda_step(features, labels, sizes) -> dict[str, Any]:
    x = features.astype(np.float64)
    within = np.cov(
        (x - np.stack([x[labels == c].mean(0) for c in range(sizes["classes"])])[labels]).T
    )
    within += 1e-6 * np.trace(within) / len(within) * np.eye(len(within))
    a = jax.device_put(np.cov(x.T).astype(np.float32))
    b = jax.device_put(within.astype(np.float32))
    return {
        **harness.time_jitted(_generalized_eigh, (a, b)).as_dict(),
        "step": "D x D generalised eigendecomposition",
    }


def _parc_step(features) -> dict[str, Any]:
    x = features.astype(np.float64)
    reduced = x[:, :32] - x[:, :32].mean(0)
    reduced = reduced - reduced.mean(1, keepdims=True)
    unit = jax.device_put(
        (reduced / np.linalg.norm(reduced, axis=1, keepdims=True)).astype(np.float32)
    )
    return {
        **harness.time_jitted(_correlation, (unit,)).as_dict(),
        "step": "N x N correlation (Z Z^T, Z [N, 32])",
    }


def _nleep_step(nleep_module, device, sizes) -> dict[str, Any]:
    device_features, _, device_nleep_labels, _ = device
    mean, axes, num_kept = nleep_module._principal_axes(
        device_features, device_nleep_labels, None, sizes["nleep_classes"], 0.8
    )
    width = nleep_module._width(int(num_kept), axes.shape[1])
    scores = jnp.matmul(device_features - mean, axes[:, :width], precision=_HIGHEST)
    weights = jnp.ones(scores.shape[0], scores.dtype)
    num_components = 5 * sizes["nleep_classes"]
    initial = jax.jit(nleep_module.kmeans_init, static_argnums=3)(
        jax.random.key(0), scores, weights, num_components
    )
    # Three runs: a full-size EM takes tens of seconds on a loaded 2-core CPU.
    em = harness.time_jitted(
        nleep_module.fit_gaussian_mixture, (scores, weights, initial, num_kept), min_repeats=3
    )
    mixture = em.result
    return {
        **em.as_dict(),
        "step": f"EM ({int(mixture.num_iterations)} iterations, {num_components} components, "
        f"{int(num_kept)} principal components kept, width {width})",
        "num_kept": int(num_kept),
        "em_iterations": int(mixture.num_iterations),
    }


# ----------------------------------------------------------------------- the run


def _selected(config: harness.Config) -> tuple[str, ...]:
    if config.scores is None:
        return SCORES
    unknown = sorted(set(config.scores) - set(SCORES))
    if unknown:
        raise ValueError(f"--scores: unknown {unknown}; choose from {', '.join(SCORES)}")
    return tuple(name for name in SCORES if name in config.scores)


def run(config: harness.Config) -> dict[str, Any]:
    info = harness.machine()
    sizes = _sizes(config)
    names = _selected(config)
    host = _data(**sizes)
    device = tuple(jax.device_put(a) for a in host)
    max_peer_s = config.pick(full=10.0, quick=3.0, tiny=1.0)
    print(f"[scores] {sizes}, scores {', '.join(names)}", flush=True)

    floor = harness.time_jitted(_floor, (device[0],))
    steps = _dominant_steps(host, device, sizes, names)
    measured = harness.now()
    for step in steps.values():
        step["measured"] = measured
    rows = []
    for name in names:
        row: dict[str, Any] = {
            "score": name,
            "measured": measured,
            "floor_s": floor.median_s,
            "load_average": list(os.getloadavg()),
        }
        call = _ours(name, device, sizes)
        if call is None:
            print(f"[scores] {name}: not in the installed leep_jax, skipped", flush=True)
            rows.append({**row, "skipped": "not in the installed leep_jax"})
            continue
        start = time.perf_counter()
        call()
        first_s = time.perf_counter() - start
        # A call slower than a minute (PARC at full size on a CPU) is timed once more.
        ours = harness.time_calls(call, warmup=False, max_seconds=60.0)
        row["jax"] = {**ours.as_dict(), "compile_s": max(first_s - ours.median_s, 0.0)}
        row["jax_value"] = float(ours.result)
        row["over_floor"] = ours.median_s / floor.median_s
        if name in steps:
            row["dominant_step"] = steps[name]["step"]
            row["over_dominant_step"] = ours.median_s / steps[name]["median_s"]
        if name == "parc" and peers_features.parc_bytes(sizes["n"]) > config.memory_budget_gb * 1e9:
            row["peer_skipped"] = (
                f"needs ~{harness.fmt_bytes(peers_features.parc_bytes(sizes['n']))} "
                f"> --memory-budget-gb {config.memory_budget_gb}"
            )
            row["peer_at_fitting_n"] = _parc_at_fitting_n(host, sizes, config, max_peer_s)
            row["speedup_vs_peer"] = row["peer_at_fitting_n"]["speedup_vs_peer"]
        else:
            peer = _peer(name, host, sizes)
            peer_timing = harness.time_calls(peer, warmup=False, max_seconds=max_peer_s)
            row["peer"] = peer_timing.as_dict()
            row["peer_value"] = float(peer_timing.result)
            row["speedup_vs_peer"] = peer_timing.median_s / ours.median_s
        if name in FLOOR_BOUND:
            row["floor_target_met"] = row["over_floor"] <= FLOOR_BOUND[name]
        if "speedup_vs_peer" in row:
            row["peer_target_met"] = row["speedup_vs_peer"] > 1
        print(f"[scores] {name}: {_brief(row)}", flush=True)
        rows.append(row)

    this_run = {
        "finished": harness.now(),
        "machine": info,
        "floor_s": floor.median_s,
        "scores": list(names),
    }
    rows, steps, runs = _merge_previous(config, sizes, rows, steps, this_run)
    summary = {
        "sizes": sizes,
        "floor_s": floor.median_s,
        "speedup_vs_peer": {r["score"]: r.get("speedup_vs_peer") for r in rows if "jax" in r},
        "over_floor": {r["score"]: r["over_floor"] for r in rows if "jax" in r},
        "over_dominant_step": {
            r["score"]: r["over_dominant_step"] for r in rows if "over_dominant_step" in r
        },
        "measured": {r["score"]: r["measured"] for r in rows},
        "skipped": [r["score"] for r in rows if "skipped" in r],
        "targets_met": all(
            r.get("floor_target_met", True) and r.get("peer_target_met", True)
            for r in rows
            if "jax" in r
        ),
    }
    payload = {
        "machine": info,
        "sizes": sizes,
        "floor": {**floor.as_dict(), "step": "F^T F + eigh(D x D)"},
        "dominant_steps": steps,
        "runs": runs,
        "rows": rows,
        "summary": summary,
    }
    harness.write_result(config, NAME, payload, _markdown(rows, sizes, steps, runs, config))
    harness.update_summary(config, NAME, {**summary, "machine": info})
    return summary


def _parc_at_fitting_n(host, sizes, config, max_peer_s) -> dict[str, Any]:
    """PARC, ours and the peer's, on the first ``n`` rows, ``n`` the largest multiple of
    100 whose peer working set fits the memory budget (the peer's ``[n, n]`` float64
    matrices do not fit at full size)."""
    import leep_jax

    n = 100 * int((config.memory_budget_gb * 1e9 / peers_features.parc_bytes(1)) ** 0.5 // 100)
    features, labels = host[0][:n], host[1][:n]
    on_device = jax.device_put(features), jax.device_put(labels)
    ours = harness.time_calls(
        lambda: jax.block_until_ready(leep_jax.parc(*on_device, sizes["classes"])),
        max_seconds=60.0,
    )
    peer = harness.time_calls(
        lambda: peers_features.parc(features, labels, sizes["classes"]),
        warmup=False,
        max_seconds=max_peer_s,
    )
    return {
        "n": n,
        "jax": ours.as_dict(),
        "jax_value": float(ours.result),
        "peer": peer.as_dict(),
        "peer_value": float(peer.result),
        "speedup_vs_peer": peer.median_s / ours.median_s,
    }


def _merge_previous(config, sizes, rows, steps, this_run):
    """With ``--scores``: the other scores' rows, steps and runs from the existing
    ``scores.json`` (same mode and sizes), each row keeping its own date and floor."""
    path = config.out_dir / f"{NAME}.json"
    if config.scores is None or not path.exists():
        return rows, steps, [this_run]
    previous = json.loads(path.read_text())
    if previous.get("mode") != config.mode or previous.get("sizes") != sizes:
        print(f"[scores] {path} has other sizes: not merged", flush=True)
        return rows, steps, [this_run]
    runs = previous.get("runs") or [
        {
            "finished": previous["finished"],
            "machine": previous["machine"],
            "floor_s": previous["floor"]["median_s"],
            "scores": [r["score"] for r in previous["rows"]],
        }
    ]
    old_rows = {}
    for row in previous["rows"]:
        row.setdefault("measured", previous["finished"])
        row.setdefault("floor_s", previous["floor"]["median_s"])
        old_rows[row["score"]] = row
    old_steps = previous.get("dominant_steps", {})
    for step in old_steps.values():
        step.setdefault("measured", previous["finished"])
    new_rows = {row["score"]: row for row in rows}
    merged = [new_rows.get(name) or old_rows.get(name) for name in SCORES]
    return [r for r in merged if r is not None], {**old_steps, **steps}, [*runs, this_run]


def _brief(row) -> str:
    parts = [f"{row['jax']['median_s'] * 1e3:.1f} ms"]
    if "peer" in row:
        parts.append(f"peer {row['peer']['median_s'] * 1e3:.1f} ms ({row['speedup_vs_peer']:.1f}x)")
    parts.append(f"{row['over_floor']:.2f}x floor")
    return ", ".join(parts)


def _met(value) -> str:
    return "" if value is None else ("met" if value else "missed")


def _markdown(rows, sizes, steps, runs, config) -> str:
    table = []
    for r in rows:
        if "skipped" in r:
            table.append([r["score"], r["skipped"]] + [None] * 10)
            continue
        table.append(
            [
                r["score"],
                r["jax"]["median_s"] * 1e3,
                r["jax"]["compile_s"],
                r["peer"]["median_s"] * 1e3 if "peer" in r else r.get("peer_skipped"),
                r.get("speedup_vs_peer"),
                r["over_floor"],
                r.get("over_dominant_step"),
                r["jax_value"],
                r.get("peer_value"),
                _met(r.get("floor_target_met")),
                _met(r.get("peer_target_met")),
                r["measured"][:16].replace("T", " "),
            ]
        )
    headers = [
        "score",
        "leep-jax ms",
        "compile s",
        "peer ms",
        "speedup",
        "x floor",
        "x dominant step",
        "leep-jax value",
        "peer value",
        "<= 2x floor",
        "faster than peer",
        "measured (UTC)",
    ]
    fitting = [
        f"- {r['score']}: the peer does not fit at N = {sizes['n']:,} ({r['peer_skipped']}); "
        f"on the first N = {f['n']:,} rows: leep-jax {f['jax']['median_s'] * 1e3:.1f} ms, "
        f"peer {f['peer']['median_s'] * 1e3:.1f} ms ({f['speedup_vs_peer']:.1f}x; values "
        f"{f['jax_value']:.4f} and {f['peer_value']:.4f})"
        for r in rows
        if (f := r.get("peer_at_fitting_n"))
    ]
    run_lines = [
        f"- {run['finished'][:16].replace('T', ' ')} UTC: {', '.join(run['scores'])}; "
        f"{harness.machine_line(run['machine'])}; floor (F^T F + eigh(D x D)) "
        f"{run['floor_s'] * 1e3:.1f} ms"
        for run in runs
    ]
    step_lines = [
        f"- {name}: {step['step']}, {step['median_s'] * 1e3:.1f} ms "
        f"(measured {step['measured'][:16].replace('T', ' ')})"
        for name, step in steps.items()
    ]
    return (
        "\n".join(
            [
                f"# scores ({config.mode})",
                "",
                f"N = {sizes['n']}, D = {sizes['dims']}, C = {sizes['classes']} (NLEEP: C = "
                f"{sizes['nleep_classes']}, 5 components per class), float32 features on the "
                "device; each leep-jax score called as users call it (defaults, validation "
                "included), median of at least 5 warm runs (one run where a call takes over "
                "a minute), compile apart; the peer-style NumPy / scikit-learn versions "
                "(`peers_features.py`) on the host CPU (one run where it takes over 10 s). "
                "Each row's peer, floor and dominant step come from the same run as the row "
                "(its date in the last column); `x floor` divides by that run's floor.",
                "",
                "Runs (`--scores` re-measures some scores and keeps the others):",
                "",
                *run_lines,
                "",
                "Dominant steps:",
                "",
                *step_lines,
                "",
                "Values follow each side's conventions (the peers' NLEEP has no log, their GBC "
                "no factor D, their PARC a randomized PCA), so they need not agree.",
                "",
                harness.markdown_table(headers, table),
                *(["", "Peers measured on fewer rows:", "", *fitting] if fitting else []),
            ]
        )
        + "\n"
    )
