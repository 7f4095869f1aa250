"""sweep: `leep-jax sweep` of a zoo of checkpoints over 2 targets, against its floor.

A zoo file of M SmallCNN checkpoints (two widths, so two architectures; orbax
checkpoints written by ``leep_jax.models.save_model``, random initialisations: weights do
not change timings) is swept over two FashionMNIST class subsets (digits if FashionMNIST
is missing) through ``leep_jax.experiments.sweep.run_sweep``, each time into a fresh
SQLite file, with two score sets: ``every`` (all ten scores, what ``leep-jax sweep``
computes by default) and ``one_pass`` (LEEP, NCE, H-score: ``DEFAULT_SCORES``, the
scores the issue's target was set with).

* **first sweeps**: compilation included (one compiled step per architecture, target
  shape and score set, shared by every model of that architecture);
* **rounds**: then, ``R`` times, the floor and the two warm sweeps, alternating their
  order from round to round, so that a machine loaded by others slows them alike; a
  round's ratio is its warm sweep over its floor, and the figure reported is the median
  over rounds (each round is in the JSON); the same ratio by this process's CPU time
  (``time.process_time``: every thread, the loader's and XLA's included) is reported
  beside it (``warm_over_floor_cpu``), being less sensitive to other jobs;
* **floor**: the bare forward passes alone: the same jitted ``ModuleForward`` over the
  same batches for every (model, target), inputs already on the device, models already
  loaded, one ``block_until_ready`` per pair;
* ``compile_s`` = first sweep - median warm sweep;
* ``in_memory_scores_s``: SFDA, PARC and NLEEP (the scores that need every feature at
  once) timed alone on one model's features per architecture and target, times the
  models of that architecture: what the ``every`` sweep computes beyond the one-pass
  scores.

The checkpoint loads (a background thread overlapping the scoring of the previous
model), host-to-device transfers, the scores and the SQLite commits are part of the
sweep and not of the floor.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness

NAME = "sweep"
NUM_SOURCE_CLASSES = 10
WIDTHS = (8, 16)
BATCH_SIZE = 256


def _sizes(config: harness.Config) -> tuple[int, int, int]:
    """``(models M, examples per class, rounds)`` for this mode."""
    return config.pick(full=(20, 400, 3), quick=(20, 100, 3), tiny=(4, 10, 1))


def _score_sets():
    from leep_jax.scores.names import DEFAULT_SCORES, SCORE_NAMES

    return {"every": SCORE_NAMES, "one_pass": DEFAULT_SCORES}


def _targets(per_class: int):
    from leep_jax.experiments.sweep_targets import TargetOptions, load_target

    options = TargetOptions(train_per_class=per_class)
    try:
        names = ("fashion_mnist:0,2,4,6,8", "fashion_mnist:1,3,5,7,9")
        return [load_target(name, options) for name in names]
    except FileNotFoundError:
        names = ("digits:0,2,4,6,8", "digits:1,3,5,7,9")
        return [load_target(name, options) for name in names]


def _write_zoo(folder: Path, num_models: int) -> Path:
    from leep_jax.models import SmallCNN, save_model

    lines = []
    for index in range(num_models):
        width = WIDTHS[index % len(WIDTHS)]
        name = f"cnn{width}-s{index}"
        save_model(SmallCNN(NUM_SOURCE_CLASSES, width=width, rngs=nnx.Rngs(index)),
                   folder / name)  # fmt: skip
        lines += [
            "[[model]]",
            f'name = "{name}"',
            'kind = "nnx"',
            'factory = "leep_jax.models:SmallCNN"',
            f"kwargs = {{ num_classes = {NUM_SOURCE_CLASSES}, width = {width} }}",
            f'checkpoint = "{name}"',
            "",
        ]
    path = folder / "zoo.toml"
    path.write_text("\n".join(lines))
    return path


def _device_batches(target, preprocess) -> list[jax.Array]:
    from leep_jax.experiments.sweep_targets import preprocess_images

    images = preprocess_images(target.images, preprocess)
    n = images.shape[0]
    size = min(BATCH_SIZE, n)
    padded = np.pad(images, [(0, -n % size)] + [(0, 0)] * 3)
    return [jax.device_put(padded[s : s + size]) for s in range(0, padded.shape[0], size)]


def _floor_call(entries, targets):
    """``floor()``: one bare forward pass over every (model, target), its wall time."""
    loaded = [entry.load() for entry in entries]
    steps = {}
    for model in loaded:  # one jitted forward per architecture, as the sweep shares one
        steps.setdefault(model.forward, jax.jit(model.forward))
    batches = [_device_batches(target, entries[0].preprocess) for target in targets]

    def floor() -> dict[str, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for target_batches in batches:
            for model in loaded:
                step = steps[model.forward]
                jax.block_until_ready([step(model.params, b) for b in target_batches])
        return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}

    floor()  # compiles and warms up
    return floor


def _sweep_call(entries, targets, folder: Path, label: str, metrics):
    from leep_jax.experiments import sweep
    from leep_jax.experiments.sweep_store import Store

    count = 0

    def run_once() -> dict[str, float]:
        nonlocal count
        count += 1
        out = folder / f"{label}-{count}.sqlite"
        start, cpu = time.perf_counter(), time.process_time()
        summary = sweep.run_sweep(entries, targets, str(out), metrics=metrics,
                                  batch_size=BATCH_SIZE)  # fmt: skip
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert summary.done == len(entries) * len(targets) and summary.failed == 0, summary
        with Store(out) as store:
            pairs = store.rows("pairs")
        out.unlink()
        load_s = sum({row[0]: row[4] for row in pairs}.values())
        return {"wall_s": wall, "cpu_s": cpu, "load_s": load_s,
                "score_s": sum(row[5] for row in pairs)}  # fmt: skip

    return run_once


def _in_memory_scores_s(entries, targets) -> dict[str, float]:
    """Per in-memory score: its time summed over every (model, target) of the sweep.

    Timed on the features of the first model of each architecture (the time does not
    depend on the weights), median of 3 warm calls, times that architecture's models.
    """
    from leep_jax.streaming import engine

    per_score = dict.fromkeys(engine.IN_MEMORY_SCORES, 0.0)
    architectures: dict[Any, list] = {}
    for entry in entries:
        loaded = entry.load()
        architectures.setdefault(loaded.forward, []).append(loaded)
    for models in architectures.values():
        model = models[0]
        for target in targets:
            images = jnp.concatenate(_device_batches(target, entries[0].preprocess))
            n = target.labels.shape[0]
            features = jax.jit(model.forward)(model.params, images)[1][:n]
            labels = jnp.asarray(target.labels)
            for name, score in engine.IN_MEMORY_SCORES.items():

                def call(score=score, features=features, labels=labels, y=target.num_classes):
                    jax.block_until_ready(score(features, labels, y, validate_inputs=False))

                timing = harness.time_calls(call, min_repeats=3)
                per_score[name] += timing.median_s * len(models)
    return per_score


def run(config: harness.Config) -> dict[str, Any]:
    from leep_jax.experiments.zoo_file import load_zoo_file

    info = harness.machine()
    num_models, per_class, num_rounds = _sizes(config)
    targets = _targets(per_class)
    score_sets = _score_sets()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        entries = load_zoo_file(_write_zoo(folder, num_models))
        print(f"[sweep] M={num_models}, targets={[t.name for t in targets]}, "
              f"{targets[0].labels.shape[0]} examples each", flush=True)  # fmt: skip
        sweeps = {name: _sweep_call(entries, targets, folder, name, metrics)
                  for name, metrics in score_sets.items()}  # fmt: skip
        first = {}
        for name, call in sweeps.items():
            first[name] = call()
            print(f"[sweep] first {name}: {first[name]['wall_s']:.1f} s", flush=True)
        floor = _floor_call(entries, targets)
        calls = {"floor": floor, **sweeps}
        rounds = []
        for index in range(num_rounds):
            order = list(calls) if index % 2 == 0 else list(reversed(calls))
            measured: dict[str, Any] = {"order": order, "load_average": os.getloadavg()[0]}
            for name in order:
                result = calls[name]()
                measured[name] = result
            for name in sweeps:
                for clock in ("wall", "cpu"):
                    ratio = measured[name][f"{clock}_s"] / measured["floor"][f"{clock}_s"]
                    measured[f"{name}_over_floor{'_cpu' if clock == 'cpu' else ''}"] = ratio
            rounds.append(measured)
            print(f"[sweep] round {index + 1}: floor {measured['floor']['wall_s']:.1f} s, "
                  + ", ".join(f"{n} {measured[n]['wall_s']:.1f} s "
                              f"({measured[n + '_over_floor']:.2f}x)" for n in sweeps),
                  flush=True)  # fmt: skip
        in_memory = _in_memory_scores_s(entries, targets)
    summary = _summary(num_models, targets, first, rounds, in_memory, sweeps)
    payload = {"machine": info, "first": first, "rounds": rounds, "summary": summary}
    harness.write_result(config, NAME, payload, _markdown(summary, info, config))
    harness.update_summary(config, NAME, {**summary, "machine": info})
    return summary


def _summary(num_models, targets, first, rounds, in_memory, sweeps) -> dict[str, Any]:
    def median(key, sub="wall_s"):
        return statistics.median(r[key][sub] if sub else r[key] for r in rounds)

    floor = median("floor")
    summary: dict[str, Any] = {
        "models": num_models,
        "targets": [t.name for t in targets],
        "examples_per_target": int(targets[0].labels.shape[0]),
        "pairs": num_models * len(targets),
        "rounds": len(rounds),
        "floor_s": floor,
        "load_average_per_round": [r["load_average"] for r in rounds],
    }
    for name in sweeps:
        suffix = "" if name == "every" else f"_{name}"
        warm = median(name)
        summary |= {
            f"first_wall_s{suffix}": first[name]["wall_s"],
            f"warm_wall_s{suffix}": warm,
            f"compile_s{suffix}": max(first[name]["wall_s"] - warm, 0.0),
            f"warm_over_floor{suffix}": median(f"{name}_over_floor", None),
            f"warm_over_floor_per_round{suffix}": [r[f"{name}_over_floor"] for r in rounds],
            f"warm_over_floor_cpu{suffix}": median(f"{name}_over_floor_cpu", None),
            f"load_s{suffix}": median(name, "load_s"),
            f"models_per_minute_warm{suffix}": num_models * 60 / warm,
            f"models_per_minute_first{suffix}": num_models * 60 / first[name]["wall_s"],
        }
    summary["in_memory_scores_s"] = in_memory
    return summary


def _markdown(s: dict[str, Any], info: dict[str, Any], config: harness.Config) -> str:
    rows = []
    for suffix, label in (("", "every score (10)"), ("_one_pass", "LEEP, NCE, H-score")):
        rows += [
            [f"{label}: first sweep (compile included)", s[f"first_wall_s{suffix}"], None,
             s[f"models_per_minute_first{suffix}"]],
            [f"{label}: warm sweep", s[f"warm_wall_s{suffix}"], s[f"warm_over_floor{suffix}"],
             s[f"models_per_minute_warm{suffix}"]],
        ]  # fmt: skip
    rows.append(["floor: bare forward passes", s["floor_s"], 1.0, None])
    for name, seconds in s["in_memory_scores_s"].items():
        rows.append([f"{name} alone (in the every-score sweep)", seconds, None, None])
    rounds = ", ".join(
        f"{a:.2f} / {b:.2f} (load {c:.1f})"
        for a, b, c in zip(
            s["warm_over_floor_per_round"],
            s["warm_over_floor_per_round_one_pass"],
            s["load_average_per_round"],
            strict=True,
        )
    )
    return "\n".join(
        [
            f"# sweep ({config.mode})",
            "",
            f"Machine: {harness.machine_line(info)}.",
            "",
            f"{s['models']} SmallCNN checkpoints (widths {WIDTHS}) x targets "
            f"{', '.join(s['targets'])} ({s['examples_per_target']} examples each), "
            f"batch {BATCH_SIZE}, into SQLite. Medians over {s['rounds']} rounds in which "
            "the floor and the two warm sweeps alternate.",
            "",
            harness.markdown_table(["what", "wall s", "over floor", "models / min"], rows),
            "",
            f"warm sweep / floor = **{s['warm_over_floor']:.2f}** (every score), "
            f"**{s['warm_over_floor_one_pass']:.2f}** (LEEP, NCE, H-score); per round "
            f"(every / one-pass): {rounds}. Compile (first - warm): {s['compile_s']:.1f} s "
            f"and {s['compile_s_one_pass']:.1f} s. By this process's CPU time (all its "
            "threads; less sensitive to other jobs than wall time): "
            f"{s['warm_over_floor_cpu']:.2f} and {s['warm_over_floor_cpu_one_pass']:.2f}.",
        ]
    )
