"""The experiment's runner: `run_experiment` computes (or resumes) every row.

What a run does, for each source -> target pair (`leep_jax.experiments.pairs`):

* **Source model**: a ResNet20 (by default) trained on the source dataset or class set
  (`leep_jax.transfer.zoo.train_source_model`, cached under the cache dir).
* **Target pool** (`leep_jax.experiments.pools`): at most ``large_per_class``
  training and ``test_per_class`` test examples per class of the target. The source
  model's logits and penultimate features over the whole pool are computed ONCE and
  every task reuses them, since tasks are index subsets of the pool.
* **RQ1 / RQ3** (paper Sec. 5.1-5.3): random target tasks in four regimes
  (``large_balanced``, ``small_balanced``, ``small_imbalanced``, ``small_noisy``); per
  task one `TaskRow` (`leep_jax.experiments.measure.task_row`): LEEP, NCE and H-score,
  and the test accuracy of head re-training, fine-tuning and training from scratch,
  with per-epoch curves.
* **RQ2** (convergence) and the summaries: `leep_jax.experiments.statistics`.
* **RQ4** (source selection): a zoo of source models scored on tasks of each pair's
  target pool and transferred to every one (`leep_jax.experiments.measure.rq4_row`).

Everything is seeded (tasks by `numpy.random.SeedSequence`, training by the seeds the
transfer recipes carry), so the same configuration gives the same numbers.

Results go to ``OUT/results.json`` (`leep_jax.experiments.results`), rewritten
atomically after every row, so an interrupted run loses nothing; running again with
the same ``OUT`` skips the rows already done (keyed by deterministic ids) and refuses
to continue if the configuration differs. ``OUT/report.md`` and PNG figures come from
`leep_jax.experiments.report`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from leep_jax.experiments import report
from leep_jax.experiments.config import ExperimentConfig, source_spec
from leep_jax.experiments.measure import rq4_row, task_row
from leep_jax.experiments.pairs import Pair
from leep_jax.experiments.pools import (
    Pool,
    load_pool,
    pair_tasks,
    pool_outputs,
    rq4_row_id,
    rq4_tasks,
    task_id,
)
from leep_jax.experiments.results import (
    RESULTS_FILE,
    Results,
    Session,
    load_results,
    write_json_atomic,
)
from leep_jax.experiments.rows import Rq4Row, TaskRow
from leep_jax.experiments.statistics import convergence, selection, summarize
from leep_jax.transfer.zoo import SourceSpec, source_metadata, train_source_model

__all__ = ["run_experiment"]


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
    }


def _refresh(results: Results, config: ExperimentConfig) -> None:
    """Recomputes the summaries from the rows (cheap), so every write is consistent.

    The summaries are stored as JSON (`Results.to_json` turns their records into
    dicts); the report recomputes them from the rows.
    """
    results.summary = summarize(results.tasks, config.pairs, config.tasks_per_regime)
    results.rq2 = convergence(results.tasks, config.pairs, config.tasks_per_regime)
    results.rq4_summary = selection(results.rq4_rows, results.zoo)


# -------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Run:
    """What the work generators share: the config, pools, results so far, progress."""

    config: ExperimentConfig
    pools: dict[str, Pool]
    results: Results
    done: set[str]
    session: int
    bar: tqdm
    progress: bool

    def model_info(self, spec: SourceSpec) -> dict[str, Any]:
        metadata = source_metadata(spec) or {}
        return {"spec": spec.to_dict(), **{k: v for k, v in metadata.items() if k != "spec"}}


Row = TaskRow | Rq4Row
Work = Iterator[tuple[list[Any], Callable[[], Row]]]


def _pair_work(run: _Run, pair: Pair) -> Work:
    """RQ1-RQ3 rows of one pair, as ``(rows, compute)``: the source model is trained (or
    loaded) when the first row is asked for, and ``compute()`` makes one row."""
    config, name = run.config, str(pair)
    ids = [task_id(name, r, i) for r, n in config.tasks_per_regime.items() for i in range(n)]
    if all(i in run.done for i in ids):
        return
    spec = source_spec(config, pair.source)
    run.bar.set_postfix_str(f"source {spec.name}")
    model = train_source_model(spec, progress=run.progress)
    pool = run.pools[str(pair.target)].with_channels(model.in_channels)
    outputs = pool_outputs(model, pool, config.eval_batch_size)
    run.results.sources[name] = run.model_info(spec) | {
        "pool_forward": {
            "seconds": outputs.forward_s,
            "num_images": outputs.num_images,
            "num_train": int(pool.train[1].size),
            "num_test": int(pool.test[1].size),
        }
    }
    for regime in config.tasks_per_regime:
        for i, task in enumerate(pair_tasks(pool, name, regime, config)):
            ident = task_id(name, regime, i)
            if ident not in run.done:
                run.bar.set_postfix_str(f"{name} {regime} {i}")
                yield (
                    run.results.tasks,
                    functools.partial(
                        task_row, task, ident, name, regime, i, outputs, model, config, run.session
                    ),
                )


def _rq4_work(run: _Run, targets: Sequence[str]) -> Work:
    """RQ4 rows: every zoo model scored and fine-tuned on every RQ4 task of each target."""
    config = run.config
    for spec in config.zoo:
        ids = [rq4_row_id(t, i, spec.name) for t in targets for i in range(config.rq4_tasks)]
        if all(i in run.done for i in ids):
            continue
        run.bar.set_postfix_str(f"zoo {spec.name}")
        model = train_source_model(spec, progress=run.progress)
        run.results.zoo[spec.name] = run.model_info(spec)
        for target in targets:
            if all(rq4_row_id(target, i, spec.name) in run.done for i in range(config.rq4_tasks)):
                continue
            pool = run.pools[target].with_channels(model.in_channels)
            outputs = pool_outputs(model, pool, config.eval_batch_size)
            for i, task in enumerate(rq4_tasks(pool, config)):
                ident = rq4_row_id(target, i, spec.name)
                if ident not in run.done:
                    run.bar.set_postfix_str(f"rq4 {spec.name} {target} {i}")
                    yield (
                        run.results.rq4_rows,
                        functools.partial(
                            rq4_row,
                            task,
                            ident,
                            target,
                            i,
                            spec.name,
                            model,
                            outputs,
                            config,
                            run.session,
                        ),
                    )


def _round_robin(*streams: Iterator) -> Iterator:
    """One item from each stream in turn, dropping streams as they end."""
    active = collections.deque(iter(s) for s in streams)
    while active:
        stream = active.popleft()
        try:
            item = next(stream)
        except StopIteration:
            continue
        active.append(stream)
        yield item


def _computed(work: Work, workers: int) -> Iterator[tuple[list[Any], Row]]:
    """``(rows, row)`` for every item of ``work``, computing up to ``workers`` rows at once.

    Rows come in the order they finish. Each row trains its own models from its own
    seed, so running rows side by side (threads: JAX releases the GIL while it computes)
    changes their timings, not their values. ``work`` itself advances in this thread.
    """
    if workers == 1:
        for rows, compute in work:
            yield rows, compute()
        return
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="experiment")
    running: dict[concurrent.futures.Future, list[Any]] = {}
    try:
        for rows, compute in work:
            running[executor.submit(compute)] = rows
            if len(running) == workers:
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    yield running.pop(future), future.result()
        for future in concurrent.futures.as_completed(list(running)):
            yield running.pop(future), future.result()
    finally:
        # Interrupted: rows not started are dropped; rows running finish in the background
        # (the process waits for them at exit) but are not saved.
        executor.shutdown(wait=False, cancel_futures=True)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    max_new_tasks: int | None = None,
    on_task: Callable[[Row], None] | None = None,
    write_report: bool = True,
    workers: int = 1,
) -> Results:
    """Runs (or resumes) the experiment and writes results.json, report.md and figures.

    Rows are taken in turn from each pair and from RQ4 (round robin), so a run stopped
    part way has rows for every research question, not only for the first pair. Each
    source model is trained (or loaded) when its first row is reached.

    Args:
      config: what to run.
      out_dir: output folder (created). Results already there for the same config are
        kept and their tasks skipped.
      progress: progress bars on stderr.
      max_new_tasks: stop after computing this many new tasks (RQ4 rows count as
        tasks); the results so far are written, and a later call resumes.
      on_task: called with each new row after it has been written.
      write_report: write report.md and the figures at the end (results.json is
        always written).
      workers: rows computed side by side (threads). Training a small network keeps
        about one CPU core busy, so ``workers=2`` nearly halves a run on two cores; the
        values do not depend on it, the timings do.

    Returns:
      The `Results` (as written to results.json).

    Raises:
      ConfigMismatchError: ``out_dir`` holds results of another configuration.
      ValueError, FileNotFoundError, ImportError: bad pairs, missing datasets, TFDS
        datasets without the ``tfds`` extra.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    out = Path(out_dir)
    results = load_results(out, config.to_dict())  # refuses another config before any work
    previous_duration = results.duration_s
    # Tasks are index subsets of the pools, cheap to re-create: only their ids are
    # stored, and a resumed run re-creates them from the seed.
    pools: dict[str, Pool] = {}
    for pair in config.parsed_pairs:
        pools.setdefault(str(pair.target), load_pool(pair.target, config))
    rq4_targets = list(pools) if config.zoo else []
    ids = [
        task_id(str(pair), regime, i)
        for pair in config.parsed_pairs
        for regime, count in config.tasks_per_regime.items()
        for i in range(count)
    ] + [
        rq4_row_id(target, i, spec.name)
        for target in rq4_targets
        for spec in config.zoo
        for i in range(config.rq4_tasks)
    ]
    done = {row.id for row in results.tasks} | {row.id for row in results.rq4_rows}

    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    session = Session(
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        duration_s=0.0,
        new_tasks=0,
        environment=_environment(),
    )
    results.sessions.append(session)

    def save() -> None:
        session.duration_s = time.perf_counter() - start
        results.duration_s = previous_duration + session.duration_s
        results.complete = all(i in done for i in ids)
        _refresh(results, config)
        write_json_atomic(path, results.to_json())

    bar = tqdm(
        total=len(ids),
        initial=sum(i in done for i in ids),
        desc="experiment",
        unit="task",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    run = _Run(config, pools, results, done, len(results.sessions) - 1, bar, progress)
    # Generators: a source model is trained or loaded only when its rows are reached.
    work = _round_robin(
        *(_pair_work(run, pair) for pair in config.parsed_pairs), _rq4_work(run, rq4_targets)
    )
    if max_new_tasks is not None:
        work = itertools.islice(work, max_new_tasks)
    try:
        save()
        for rows, row in _computed(work, workers):
            rows.append(row)
            done.add(row.id)
            session.new_tasks += 1
            save()
            bar.update(1)
            if on_task is not None:
                on_task(row)
    finally:
        bar.close()
        save()
        # Also on Ctrl-C: a report of the rows so far, marked incomplete.
        interrupted = sys.exc_info()[1]
        if write_report and (interrupted is None or isinstance(interrupted, KeyboardInterrupt)):
            report.write_report(results, out)
    return results
