"""devices: the scores with the examples split over 1, 2, 4 and 8 devices.

Each device count K runs in a fresh subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (and ``JAX_PLATFORMS=cpu``) in its
environment before jax is imported, and times two paths on the same data:

* **shard_map**: :func:`leep_jax.sharding.sharded_scores` (per-shard sums merged by
  ``lax.psum``);
* **jit + NamedSharding**: the plain :func:`leep_jax.leep`, :func:`leep_jax.nce` and
  :func:`leep_jax.h_score` jitted on inputs placed with ``NamedSharding(mesh,
  P("data"))`` (XLA's automatic partitioning).

Every run is checked against the single-device values. Simulated CPU devices share the
machine's cores, so more devices cannot be faster here: the numbers measure the
overhead of the sharded path. On a machine with accelerators the same child runs once
more on the real devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness

NAME = "devices"
DEVICE_COUNTS = (1, 2, 4, 8)
_ROOT = Path(__file__).resolve().parents[1]


def _sizes(config: harness.Config) -> dict[str, int]:
    import jax

    if jax.default_backend() != "cpu" and config.mode == "full":
        # The simulated-CPU children share the suite's few minutes on an accelerator host.
        return {"n": 50_000, "z": 1000, "y": 100, "d": 64}
    return config.pick(
        full={"n": 200_000, "z": 1000, "y": 100, "d": 64},
        quick={"n": 20_000, "z": 1000, "y": 100, "d": 64},
        tiny={"n": 1_024, "z": 10, "y": 5, "d": 8},
    )


# --------------------------------------------------------------------------- child


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding

    import leep_jax
    from benchmarks.core import make_features, make_predictions

    devices = jax.devices()
    if args.devices and len(devices) != args.devices:
        raise SystemExit(f"expected {args.devices} devices, jax sees {len(devices)}: {devices}")
    n, z, y, d = args.n, args.z, args.y, args.d
    labels = np.random.default_rng(1).integers(0, y, n).astype(np.int32)
    predictions = make_predictions(n, z, seed=0)
    features = make_features(labels, d, y, seed=2)

    mesh = jax.make_mesh((len(devices),), ("data",))
    rows = jax.sharding.NamedSharding(mesh, jax.P("data"))
    placed = [jax.device_put(a, rows) for a in (predictions, labels, features)]
    del predictions, features

    results: dict[str, Any] = {"machine": harness.machine(), "devices": len(devices)}
    try:
        from leep_jax.sharding import sharded_scores
    except ImportError:  # the sharding layer not there yet: only the jit path
        sharded_scores = None

    if sharded_scores is not None:

        def shard_map_path(p, labels, f):
            scores = sharded_scores(p, labels, y, features=f, mesh=mesh, validate_inputs=False)
            return jnp.stack([scores["leep"], scores["nce"], scores["h_score"]])

        timing = harness.time_jitted(shard_map_path, placed)
        results["shard_map"] = {**timing.as_dict(), "values": np.asarray(timing.result).tolist()}

    def jit_path(p, labels, f):
        kwargs = dict(validate_inputs=False)
        return jnp.stack(
            [
                leep_jax.leep(p, labels, y, **kwargs),
                leep_jax.nce(p, labels, y, **kwargs),
                leep_jax.h_score(f, labels, y, **kwargs),
            ]
        )

    out_sharding = NamedSharding(mesh, jax.P())
    timing = harness.time_jitted(jit_path, placed, out_shardings=out_sharding)
    results["jit_named_sharding"] = {
        **timing.as_dict(),
        "values": np.asarray(timing.result).tolist(),
    }
    return results


# --------------------------------------------------------------------------- parent


def _run_child(sizes: dict[str, int], devices: int | None, cpu: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if cpu:
        flags = env.get("XLA_FLAGS", "")
        flags = " ".join(f for f in flags.split() if "device_count" not in f)
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.devices", "--child"]
    command += [f"--{k}={v}" for k, v in sizes.items()]
    command += [f"--devices={devices or 0}"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=_ROOT)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-5:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(config: harness.Config) -> dict[str, Any]:
    import jax
    import numpy as np

    info = harness.machine()
    sizes = _sizes(config)
    runs = []
    for k in DEVICE_COUNTS:
        print(f"[devices] {k} simulated CPU devices", flush=True)
        runs.append({"platform": "cpu", "devices": k, **_run_child(sizes, k, cpu=True)})
    if jax.default_backend() != "cpu":
        print(f"[devices] {jax.device_count()} {jax.default_backend()} device(s)", flush=True)
        runs.append(
            {
                "platform": jax.default_backend(),
                "devices": jax.device_count(),
                **_run_child(sizes, None, cpu=False),
            }
        )

    reference = next((r for r in runs if r.get("devices") == 1 and "error" not in r), None)
    paths = ("shard_map", "jit_named_sharding")
    for r in runs:
        for path in paths:
            if path not in r or reference is None or path not in reference:
                continue
            ref_values = np.asarray(reference["jit_named_sharding"]["values"])
            values = np.asarray(r[path]["values"])
            r[path]["max_abs_diff_vs_1_device"] = float(np.max(np.abs(values - ref_values)))
            r[path]["max_rel_diff_vs_1_device"] = float(
                np.max(np.abs(values - ref_values) / np.abs(ref_values))
            )
            if r["platform"] == "cpu":
                r[path]["time_over_1_device"] = r[path]["median_s"] / reference[path]["median_s"]
                # Against the plain jitted scores on one device (no sharding at all).
                r[path]["time_over_unsharded"] = (
                    r[path]["median_s"] / reference["jit_named_sharding"]["median_s"]
                )
    summary = {
        "sizes": sizes,
        "max_rel_diff_vs_1_device": max(
            (
                r[p]["max_rel_diff_vs_1_device"]
                for r in runs
                for p in paths
                if p in r and "max_rel_diff_vs_1_device" in r[p]
            ),
            default=None,
        ),
        "shard_map_time_over_1_device": {
            r["devices"]: r["shard_map"].get("time_over_1_device")
            for r in runs
            if r["platform"] == "cpu" and "shard_map" in r
        },
        "errors": [f"{r['platform']} x{r['devices']}: {r['error']}" for r in runs if "error" in r],
    }
    payload = {"machine": info, "sizes": sizes, "runs": runs, "summary": summary}
    harness.write_result(config, NAME, payload, _markdown(runs, sizes, info, config))
    harness.update_summary(config, NAME, {**summary, "machine": info})
    return summary


def _markdown(runs, sizes, info, config) -> str:
    table = []
    for r in runs:
        if "error" in r:
            table.append(
                [
                    r["platform"],
                    r["devices"],
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    " / ".join(r["error"]),
                ]
            )
            continue
        for path, label in (
            ("shard_map", "shard_map (sharded_scores)"),
            ("jit_named_sharding", "jit + NamedSharding"),
        ):
            if path not in r:
                continue
            p = r[path]
            diff = p.get("max_rel_diff_vs_1_device")
            table.append(
                [
                    r["platform"],
                    r["devices"],
                    label,
                    p["compile_s"],
                    p["median_s"] * 1e3,
                    p.get("time_over_1_device"),
                    p.get("time_over_unsharded"),
                    None if diff is None else f"{diff:.1e}",
                    "",
                ]
            )
    headers = [
        "platform",
        "devices",
        "path",
        "compile s",
        "ms (LEEP+NCE+H)",
        "time / same path on 1 device",
        "time / unsharded jit",
        "max rel. diff vs 1 device",
        "note",
    ]
    return (
        "\n".join(
            [
                f"# devices ({config.mode})",
                "",
                f"Machine: {harness.machine_line(info)}.",
                "",
                f"N = {sizes['n']:,} examples, Z = {sizes['z']} source classes, Y = {sizes['y']} "
                f"target classes, D = {sizes['d']} features, float32, split along N. One jitted "
                "call computes all three scores. Simulated CPU devices share the machine's "
                f"{info['nproc']} cores, so this measures overhead, not scaling.",
                "",
                harness.markdown_table(headers, table),
            ]
        )
        + "\n"
    )


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true", required=True)
    for name in ("n", "z", "y", "d", "devices"):
        parser.add_argument(f"--{name}", type=int, required=True)
    result = _child(parser.parse_args(argv))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
