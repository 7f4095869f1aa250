"""zoo: scoring M same-architecture source models, vmapped over stacked parameters or looped.

Each of M ResNet20 source models (different initialisations) runs one forward pass over
the same N target images and yields LEEP, NCE and H-score. Two ways:

* **loop**: one jitted ``score_one(state, images, labels)`` called M times (compiled
  once, since every model has the same shapes);
* **vmap**: the M states stacked leaf by leaf (``nnx.split`` then
  ``jax.tree.map(jnp.stack, ...)``) and one jitted ``jax.vmap(score_one)`` call.

Both are compiled apart (compile time reported) and timed warm; the results must agree.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import leep_jax
from benchmarks import harness

NAME = "zoo"
NUM_SOURCE_CLASSES = 10
NUM_TARGET_CLASSES = 5


def _sizes(config: harness.Config) -> tuple[list[int], int]:
    """``(model counts M, target images N)`` for this mode and backend."""
    if jax.default_backend() != "cpu":
        return config.pick(full=([1, 4, 16], 1024), quick=([1, 4, 16], 256), tiny=([1, 2], 32))
    return config.pick(full=([1, 4, 16], 128), quick=([1, 16], 16), tiny=([1, 2], 16))


def _images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """FashionMNIST test images (or random ones where it is missing) and 5-class labels."""
    from leep_jax.data import load_fashion_mnist, to_float

    try:
        images, labels = load_fashion_mnist("test")
        return (
            to_float(images[:n]),
            (labels[:n] % NUM_TARGET_CLASSES).astype(np.int32),
            ("fashion_mnist"),
        )
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        images = rng.random((n, 28, 28, 1), dtype=np.float32)
        return images, rng.integers(0, NUM_TARGET_CLASSES, n).astype(np.int32), "random"


def _score_fn(graphdef):
    from leep_jax.models import forward

    def score_one(state, images, labels):
        logits, features = forward(nnx.merge(graphdef, state), images)
        kwargs = dict(validate_inputs=False)
        return jnp.stack(
            [
                leep_jax.leep(logits, labels, NUM_TARGET_CLASSES, from_logits=True, **kwargs),
                leep_jax.nce(logits, labels, NUM_TARGET_CLASSES, from_logits=True, **kwargs),
                leep_jax.h_score(features, labels, NUM_TARGET_CLASSES, **kwargs),
            ]
        )

    return score_one


def _measure(num_models: int, images: jax.Array, labels: jax.Array) -> dict[str, Any]:
    from leep_jax.models import ResNet20

    models = []
    for seed in range(num_models):
        model = ResNet20(NUM_SOURCE_CLASSES, in_channels=images.shape[-1], rngs=nnx.Rngs(seed))
        model.eval()
        models.append(model)
    graphdef = nnx.split(models[0])[0]
    states = [jax.device_put(nnx.split(m)[1]) for m in models]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    score_one = _score_fn(graphdef)

    start = time.perf_counter()
    compiled_one = jax.jit(score_one).lower(states[0], images, labels).compile()
    loop_compile_s = time.perf_counter() - start

    def loop():
        return jax.block_until_ready(jnp.stack([compiled_one(s, images, labels) for s in states]))

    loop_total = harness.time_calls(loop)
    vmap_timing = harness.time_jitted(
        jax.vmap(score_one, in_axes=(0, None, None)), (stacked, images, labels)
    )
    loop_values = np.asarray(loop_total.result)
    vmap_values = np.asarray(vmap_timing.result)
    return {
        "m": num_models,
        "loop": {**loop_total.as_dict(), "compile_s": loop_compile_s},
        "vmap": vmap_timing.as_dict(),
        "vmap_over_loop_speedup": loop_total.median_s / vmap_timing.median_s,
        "max_abs_diff": float(np.max(np.abs(loop_values - vmap_values))),
        "max_rel_diff": float(
            np.max(np.abs(loop_values - vmap_values) / np.maximum(np.abs(loop_values), 1e-30))
        ),
        "scores_first_model": dict(
            zip(("leep", "nce", "h_score"), loop_values[0].tolist(), strict=True)
        ),
    }


def run(config: harness.Config) -> dict[str, Any]:
    info = harness.machine()
    counts, n = _sizes(config)
    images_host, labels_host, source = _images(n)
    images, labels = jax.device_put(images_host), jax.device_put(labels_host)
    rows = []
    for m in counts:
        print(f"[zoo] M={m}, N={n}", flush=True)
        rows.append(_measure(m, images, labels))
    largest = rows[-1]
    summary = {
        "vmap_over_loop_speedup": largest["vmap_over_loop_speedup"],
        "at": {"m": largest["m"], "n": n, "architecture": "resnet20"},
        "faster": "vmap" if largest["vmap_over_loop_speedup"] > 1 else "loop",
        "backend": info["backend"],
        "by_m": {r["m"]: r["vmap_over_loop_speedup"] for r in rows},
    }
    payload = {"machine": info, "n": n, "images": source, "rows": rows, "summary": summary}
    harness.write_result(config, NAME, payload, _markdown(rows, n, source, info, config))
    harness.update_summary(config, NAME, {**summary, "machine": info})
    return summary


def _markdown(rows, n, source, info, config) -> str:
    table = [
        [
            r["m"],
            r["loop"]["compile_s"],
            r["loop"]["median_s"] * 1e3,
            r["vmap"]["compile_s"],
            r["vmap"]["median_s"] * 1e3,
            r["vmap_over_loop_speedup"],
            r["loop"]["median_s"] * 1e3 / r["m"],
            f"{r['max_rel_diff']:.1e}",
        ]
        for r in rows
    ]
    headers = [
        "M",
        "loop compile s",
        "loop ms",
        "vmap compile s",
        "vmap ms",
        "vmap speedup",
        "loop ms / model",
        "max rel. diff vmap vs loop",
    ]
    return (
        "\n".join(
            [
                f"# zoo ({config.mode})",
                "",
                f"Machine: {harness.machine_line(info)}.",
                "",
                f"M ResNet20 source models ({NUM_SOURCE_CLASSES} classes, different seeds), "
                "each scored (one forward pass + LEEP, NCE, H-score; "
                f"Y = {NUM_TARGET_CLASSES}) on the same N = {n} {source} images. "
                "Median of at least 5 warm runs; compile apart.",
                "",
                harness.markdown_table(headers, table),
            ]
        )
        + "\n"
    )
