"""zoo: scoring M same-architecture source models, vmapped over stacked parameters or looped.

Each of M ResNet20 source models (different initialisations) runs one forward pass over
the same N target images and yields LEEP, NCE and H-score, through the library's
``leep_jax.models.score_zoo`` in its two ways:

* **loop**: one jitted forward (graph static, weights an argument) called M times,
  compiled once since every model has the same shapes, then the scores;
* **vmap**: the M weight trees stacked leaf by leaf (``nnx.split`` then
  ``jax.tree.map(jnp.stack, ...)``) and one jitted vmapped forward, then vmapped scores.

The first call of each (compilation included) is timed apart from the warm median; the
results must agree. ``summary.library_default`` is the path ``strategy="auto"`` takes
on this backend (``leep_jax.models.zoo_scores.FASTER_ZOO_PATH``).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from benchmarks import harness
from leep_jax.models.zoo_scores import zoo_strategy

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


def _measure(num_models: int, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from leep_jax.models import ResNet20, score_zoo, zoo_scores

    models = {
        f"resnet20-s{seed}": ResNet20(
            NUM_SOURCE_CLASSES, in_channels=images.shape[-1], rngs=nnx.Rngs(seed)
        )
        for seed in range(num_models)
    }
    n = labels.shape[0]
    row: dict[str, Any] = {"m": num_models}
    values = {}
    for strategy in ("loop", "vmap"):

        def call(strategy=strategy):
            return score_zoo(models, images, labels, NUM_TARGET_CLASSES, batch_size=n,
                             strategy=strategy)  # fmt: skip

        # The first call compiles (once per architecture and batch shape).
        for compiled in ("_forward", "_forward_stacked", "_scores", "_scores_stacked"):
            getattr(zoo_scores, compiled).clear_cache()
        start = time.perf_counter()
        result = call()
        first_s = time.perf_counter() - start
        timing = harness.time_calls(call, warmup=False)
        row[strategy] = {**timing.as_dict(), "compile_s": max(first_s - timing.median_s, 0.0)}
        values[strategy] = np.array([[r[k] for k in ("leep", "nce", "h_score")]
                                     for r in result.values()])  # fmt: skip
    loop_values, vmap_values = values["loop"], values["vmap"]
    row["vmap_over_loop_speedup"] = row["loop"]["median_s"] / row["vmap"]["median_s"]
    row["max_abs_diff"] = float(np.max(np.abs(loop_values - vmap_values)))
    row["max_rel_diff"] = float(
        np.max(np.abs(loop_values - vmap_values) / np.maximum(np.abs(loop_values), 1e-30))
    )
    row["scores_first_model"] = dict(
        zip(("leep", "nce", "h_score"), loop_values[0].tolist(), strict=True)
    )
    return row


def run(config: harness.Config) -> dict[str, Any]:
    info = harness.machine()
    counts, n = _sizes(config)
    images, labels, source = _images(n)
    rows = []
    for m in counts:
        print(f"[zoo] M={m}, N={n}", flush=True)
        rows.append(_measure(m, images, labels))
    largest = rows[-1]
    summary = {
        "vmap_over_loop_speedup": largest["vmap_over_loop_speedup"],
        "at": {"m": largest["m"], "n": n, "architecture": "resnet20"},
        "faster": "vmap" if largest["vmap_over_loop_speedup"] > 1 else "loop",
        # What `leep_jax.models.score_zoo(strategy="auto")` takes on this backend.
        "library_default": zoo_strategy(info["backend"]),
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
