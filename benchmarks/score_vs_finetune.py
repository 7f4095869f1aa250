"""score_vs_finetune: what a transferability score costs next to the transfer it predicts.

For the default source model (a ResNet20 from :mod:`leep_jax.models`) and a real target
task (FashionMNIST classes 5-9 through :func:`leep_jax.data.make_task`; scikit-learn's
digits 5-9 where FashionMNIST is missing), wall time of

* the forward pass alone over the target training images (jitted, batches of 512),
* the same forward pass + LEEP, NCE and H-score from its logits and features,
* :func:`leep_jax.streaming.score_model` end to end (one call, compilation included),
* :func:`leep_jax.transfer.retrain_head` and :func:`leep_jax.transfer.fine_tune` with
  their default hyper-parameters (one run each, compilation reported apart),

and their ratios. The source model's weights are a random initialisation: timings do
not depend on the values of the weights, and training a source first would only add
minutes to the suite.
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

NAME = "score_vs_finetune"
TARGET_CLASSES = (5, 6, 7, 8, 9)
FORWARD_BATCH = 512


def _load_task(config: harness.Config):
    from leep_jax import data

    per_class, test_per_class = config.pick(full=(100, 50), quick=(20, 20), tiny=(10, 10))
    if jax.default_backend() != "cpu" and config.mode == "full":
        per_class, test_per_class = 500, 100  # an accelerator affords a larger task
    try:
        splits = data.load_fashion_mnist("train"), data.load_fashion_mnist("test")
        dataset = "fashion_mnist"
    except FileNotFoundError:
        splits = data.load_digits("train"), data.load_digits("test")
        dataset = "digits"
    task = data.make_task(
        *splits,
        TARGET_CLASSES,
        seed=0,
        regime="small",
        max_per_class=per_class,
        max_test_per_class=test_per_class,
        dataset=dataset,
    )
    return task, dataset


def _epochs(config: harness.Config) -> dict[str, int]:
    """The transfer defaults in full mode (fine_tune 10, retrain_head 30); fewer otherwise."""
    return config.pick(
        full={"fine_tune": None, "retrain_head": None},
        quick={"fine_tune": 1, "retrain_head": 3},
        tiny={"fine_tune": 1, "retrain_head": 1},
    )


def _batches(images: np.ndarray) -> list[jax.Array]:
    """Device-resident batches of ``FORWARD_BATCH``, the last zero-padded (one compile)."""
    out = []
    for start in range(0, len(images), FORWARD_BATCH):
        batch = images[start : start + FORWARD_BATCH]
        if len(batch) < FORWARD_BATCH:
            pad = np.zeros((FORWARD_BATCH - len(batch), *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        out.append(jax.device_put(batch))
    return out


def run(config: harness.Config) -> dict[str, Any]:
    from leep_jax.data import to_float
    from leep_jax.models import ResNet20, forward
    from leep_jax.streaming.score_model import score_model
    from leep_jax.transfer import methods

    info = harness.machine()
    task, dataset = _load_task(config)
    train_images = to_float(task.train_images)
    labels = task.train_labels
    n, num_classes = len(labels), task.num_classes
    print(f"[score_vs_finetune] {dataset}: {n} train, {len(task.test_labels)} test", flush=True)

    model = ResNet20(len(TARGET_CLASSES), in_channels=train_images.shape[-1], rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    batches = _batches(train_images)
    device_labels = jax.device_put(labels)

    @jax.jit
    def forward_batch(state, images):
        return forward(nnx.merge(graphdef, state), images)

    @jax.jit
    def scores(outputs, labels):
        logits = jnp.concatenate([o[0] for o in outputs])[:n]
        features = jnp.concatenate([o[1] for o in outputs])[:n]
        kwargs = dict(validate_inputs=False)
        return (
            leep_jax.leep(logits, labels, num_classes, from_logits=True, **kwargs),
            leep_jax.nce(logits, labels, num_classes, from_logits=True, **kwargs),
            leep_jax.h_score(features, labels, num_classes, **kwargs),
        )

    def forward_only():
        return jax.block_until_ready([forward_batch(state, b) for b in batches])

    def forward_and_scores():
        return jax.block_until_ready(
            scores([forward_batch(state, b) for b in batches], device_labels)
        )

    start = time.perf_counter()
    forward_and_scores()  # compiles both
    first_call_s = time.perf_counter() - start
    outputs = forward_only()
    # Alternate the two measurements so that load drifting on a shared machine hits
    # both alike; the scores alone on kept outputs give the added cost directly.
    forward_runs, scored_runs, scores_runs = [], [], []
    for _ in range(config.pick(full=9, quick=5, tiny=5)):
        for runs, call in (
            (forward_runs, forward_only),
            (scored_runs, forward_and_scores),
            (scores_runs, lambda: jax.block_until_ready(scores(outputs, device_labels))),
        ):
            start = time.perf_counter()
            result = call()
            runs.append(time.perf_counter() - start)
            if call is forward_and_scores:
                values = [float(v) for v in result]
    forward_timing = harness.Timing(float(np.median(forward_runs)), forward_runs)
    scored_timing = harness.Timing(float(np.median(scored_runs)), scored_runs)
    scores_timing = harness.Timing(float(np.median(scores_runs)), scores_runs)
    forward_s, scored_s = forward_timing.median_s, scored_timing.median_s

    print("[score_vs_finetune] score_model", flush=True)
    start = time.perf_counter()
    library = score_model(
        lambda images: forward(model, images),
        [
            (train_images[i : i + FORWARD_BATCH], labels[i : i + FORWARD_BATCH])
            for i in range(0, n, FORWARD_BATCH)
        ],
        num_classes,
    )
    library_s = time.perf_counter() - start

    epochs = _epochs(config)
    transfer = {}
    for method in ("retrain_head", "fine_tune"):
        print(f"[score_vs_finetune] {method}", flush=True)
        kwargs = {} if epochs[method] is None else {"epochs": epochs[method]}
        start = time.perf_counter()
        result = getattr(methods, method)(model, task, **kwargs)
        wall = time.perf_counter() - start
        transfer[method] = {
            "wall_s": wall,
            "compile_s": result.compile_time_s,
            "wall_without_compile_s": wall - result.compile_time_s,
            "epochs": len(result.test_accuracy_curve),
            "steps": result.num_steps,
            "test_accuracy": result.test_accuracy,
        }

    fine = transfer["fine_tune"]
    summary = {
        "finetune_over_score": fine["wall_without_compile_s"] / scored_s,
        "finetune_over_score_with_compile": fine["wall_s"] / first_call_s,
        "score_overhead_over_forward": scored_s / forward_s - 1,
        "scores_alone_over_forward": scores_timing.median_s / forward_s,
        "retrain_head_over_score": transfer["retrain_head"]["wall_without_compile_s"] / scored_s,
        "forward_s": forward_s,
        "forward_plus_scores_s": scored_s,
        "fine_tune_s": fine["wall_s"],
        "fine_tune_epochs": fine["epochs"],
        "dataset": dataset,
        "n_train": n,
        "targets": {"finetune_over_score": ">= 50", "score_overhead_over_forward": "<= 0.05"},
    }
    payload = {
        "machine": info,
        "dataset": dataset,
        "task": {"classes": TARGET_CLASSES, "n_train": n, "n_test": len(task.test_labels)},
        "source_model": "ResNet20(num_classes=5, random init), eval mode",
        "forward": forward_timing.as_dict(),
        "forward_plus_scores": scored_timing.as_dict(),
        "scores_alone": scores_timing.as_dict(),
        "first_call_with_compile_s": first_call_s,
        "scores": dict(zip(("leep", "nce", "h_score"), values, strict=True)),
        "score_model_end_to_end_s": library_s,
        "score_model_result": library,
        "transfer": transfer,
        "summary": summary,
    }
    harness.write_result(config, NAME, payload, _markdown(payload, info, config))
    harness.update_summary(config, NAME, {**summary, "machine": info})
    return summary


def _markdown(payload, info, config) -> str:
    s, t = payload["summary"], payload["transfer"]
    rows = [
        [
            "forward pass alone",
            s["forward_s"],
            None,
            f"median of {len(payload['forward']['runs_s'])}, alternating with the next rows",
        ],
        [
            "forward + LEEP + NCE + H-score",
            s["forward_plus_scores_s"],
            None,
            f"overhead over forward {100 * s['score_overhead_over_forward']:.2f} %",
        ],
        [
            "  same, first call (compilation included)",
            payload["first_call_with_compile_s"],
            None,
            "",
        ],
        [
            "scores alone, on the kept logits and features",
            payload["scores_alone"]["median_s"],
            None,
            f"{100 * s['scores_alone_over_forward']:.2f} % of the forward pass",
        ],
        [
            "streaming.score_model end to end",
            payload["score_model_end_to_end_s"],
            None,
            "one call, compiles its steps each call",
        ],
        [
            "retrain_head (defaults)",
            t["retrain_head"]["wall_s"],
            t["retrain_head"]["compile_s"],
            f"{t['retrain_head']['epochs']} epochs, one run",
        ],
        [
            "fine_tune (defaults)",
            t["fine_tune"]["wall_s"],
            t["fine_tune"]["compile_s"],
            f"{t['fine_tune']['epochs']} epochs, {t['fine_tune']['steps']} steps, one run",
        ],
    ]
    task = payload["task"]
    return (
        "\n".join(
            [
                f"# score_vs_finetune ({config.mode})",
                "",
                f"Machine: {harness.machine_line(info)}.",
                "",
                f"Source: {payload['source_model']}. Target: {payload['dataset']} classes "
                f"{', '.join(map(str, task['classes']))}, {task['n_train']} training and "
                f"{task['n_test']} test images (28x28x1).",
                "",
                harness.markdown_table(["what", "wall s", "of which compile s", "note"], rows),
                "",
                f"fine-tuning / (forward + scores), compilation excluded from both: "
                f"**{s['finetune_over_score']:.0f}x** (target >= 50); with compilation in both: "
                f"{s['finetune_over_score_with_compile']:.0f}x.",
                f"(forward + scores) / forward - 1: **{s['score_overhead_over_forward']:.4f}** "
                "(target <= 0.05).",
                f"head re-training / (forward + scores), compilation excluded: "
                f"{s['retrain_head_over_score']:.0f}x.",
            ]
        )
        + "\n"
    )
