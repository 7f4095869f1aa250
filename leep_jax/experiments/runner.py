"""The experiment's runner: `run_experiment` computes (or resumes) every row.

What a run does (protocol version 2, `leep_jax.experiments.config`):

* **Source models**: per source -> target pair (`leep_jax.experiments.pairs`), a model
  trained on the source dataset or class set (`leep_jax.transfer.zoo`, cached), its
  test accuracy after every epoch recorded.
* **Target pools** (`leep_jax.experiments.pools`): at most ``large_per_class``
  training examples per class of the target, and its test split. The source model's
  logits and penultimate features over the whole pool are computed ONCE and every
  task reuses them, since tasks are index subsets of the pool. No two tasks of one
  pair and regime share a class set.
* **Phase 1, learning rates** (`leep_jax.experiments.learning_rates`): fine-tuning
  and training from scratch try every rate of ``lr_grid`` on validation tasks built
  from the pools' training split; the best mean validation accuracy chooses the rate
  each method uses on every task of the pair (and RQ4's fine-tuning rate).
* **Phase 2, RQ1 / RQ3** (paper Sec. 5.1-5.3): target tasks in four regimes
  (``large_balanced``, ``small_balanced``, ``small_imbalanced``, ``small_noisy``); per
  task one `TaskRow` (`leep_jax.experiments.measure.task_row`): every score, and the
  test accuracy of head re-training, and of fine-tuning and training from scratch for
  a fixed number of SGD steps, with their curves and at-chance flags.
* **RQ2** (convergence) and the summaries: `leep_jax.experiments.statistics`.
* **RQ4** (source selection): a zoo of source models scored on tasks of each RQ4
  target and fine-tuned on every one (`leep_jax.experiments.measure.rq4_row`), with
  the baselines (source accuracy, parameter count, k-nearest-neighbour accuracy);
  its statistics: `leep_jax.experiments.selection`.

Everything is seeded (tasks by `numpy.random.SeedSequence`, training by the seeds the
transfer recipes carry), so the same configuration gives the same numbers.

Results go to ``OUT/results.json`` (`leep_jax.experiments.results`), rewritten
atomically after every validation run and row, so an interrupted run loses nothing;
running again with the same ``OUT`` skips what is done (keyed by deterministic ids)
and refuses to continue if the configuration differs. ``OUT/report.md`` and PNG
figures come from `leep_jax.experiments.report`.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from tqdm.auto import tqdm

from leep_jax.data.tasks import TargetTask
from leep_jax.experiments import learning_rates, report
from leep_jax.experiments.config import METHODS_WITH_LR, ExperimentConfig, source_spec
from leep_jax.experiments.measure import rq4_row, task_row, validation_run
from leep_jax.experiments.pairs import Pair, parse_slice
from leep_jax.experiments.pools import (
    Pool,
    load_pool,
    lr_run_id,
    pair_tasks,
    pool_outputs,
    rq4_row_id,
    rq4_task_count,
    rq4_tasks,
    task_count,
    task_id,
    validation_tasks,
)
from leep_jax.experiments.results import (
    RESULTS_FILE,
    Results,
    Session,
    load_results,
    write_json_atomic,
)
from leep_jax.experiments.rows import Rq4Row, TaskRow
from leep_jax.experiments.selection import selection
from leep_jax.experiments.statistics import convergence, summarize
from leep_jax.models.common import count_params
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
    # Models by spec name: phase 1 and phase 2 use the same sources, loaded once.
    models: dict[str, nnx.Module] = dataclasses.field(default_factory=dict)

    def _model(self, spec: SourceSpec, what: str) -> nnx.Module:
        if spec.name not in self.models:
            self.bar.set_postfix_str(f"{what} {spec.name}")
            self.models[spec.name] = train_source_model(spec, progress=self.progress)
        return self.models[spec.name]

    @staticmethod
    def model_info(spec: SourceSpec, model: nnx.Module) -> dict[str, Any]:
        metadata = source_metadata(spec) or {}
        # Models cached by older versions lack the parameter count: count it here.
        return {
            "spec": spec.to_dict(),
            **{k: v for k, v in metadata.items() if k != "spec"},
            "num_params": count_params(model),
        }

    def source(self, pair: Pair) -> nnx.Module:
        """The pair's source model (trained or loaded), its metadata recorded."""
        spec = source_spec(self.config, pair.source)
        model = self._model(spec, "source")
        self.results.sources.setdefault(str(pair), {}).update(self.model_info(spec, model))
        return model

    def zoo_model(self, spec: SourceSpec) -> nnx.Module:
        model = self._model(spec, "zoo")
        self.results.zoo[spec.name] = self.model_info(spec, model)
        return model

    def learning_rates(self, scope: str) -> dict[str, float]:
        """The chosen rate of each method of ``scope`` (the search must be complete)."""
        entries = self.results.lr_selection[scope]
        return {method: entry["chosen"] for method, entry in entries.items()}


Row = TaskRow | Rq4Row
# A unit of work: where its value goes (called in the main thread) and what computes it.
Work = Iterator[tuple[Callable[[Any], None], Callable[[], Any]]]


def _lr_entry(run: _Run, scope: str, method: str, num_runs: int) -> dict[str, Any]:
    entries = run.results.lr_selection.setdefault(scope, {})
    if method not in entries:
        entries[method] = learning_rates.new_entry(run.config.lr_grid, num_runs)
    return entries[method]


def _lr_trials(
    run: _Run,
    scope: str,
    method: str,
    trials: Sequence[tuple[TargetTask, nnx.Module | None]],
    steps: int,
) -> Work:
    """The validation runs of one (scope, method): every rate of the grid on every trial
    (a validation task, with the source model to fine-tune)."""
    entry = _lr_entry(run, scope, method, len(trials))
    for r, lr in enumerate(run.config.lr_grid):
        for t, (task, model) in enumerate(trials):
            ident = lr_run_id(scope, method, lr, t)
            if entry["validation_accuracy"][r][t] is not None:
                continue
            run.bar.set_postfix_str(f"{scope} {method} lr={lr:g} {t}")
            yield (
                functools.partial(learning_rates.record_run, entry, r, t),
                functools.partial(
                    validation_run,
                    method,
                    task,
                    ident,
                    lr,
                    steps,
                    run.config,
                    source_model=model,
                ),
            )


def _lr_work(run: _Run, pair: Pair) -> Work:
    """The learning-rate search of one pair (fine-tuning its source, training from
    scratch), on the pair's validation tasks."""
    config, name = run.config, str(pair)
    tasks = None
    for method in METHODS_WITH_LR:
        entry = run.results.lr_selection.get(name, {}).get(method)
        if entry is not None and entry["chosen"] is not None:
            continue
        if tasks is None:
            pool = run.pools[str(pair.target)]
            model = run.source(pair)
            pool = pool.with_channels(model.in_channels)
            tasks = validation_tasks(pool, name, config)
        trials = [(task, model if method == "fine_tune" else None) for task in tasks]
        yield from _lr_trials(run, name, method, trials, config.train_steps)


def _rq4_lr_work(run: _Run) -> Work:
    """RQ4's fine-tuning rate, searched with ``config.lr_models`` on validation tasks of
    every RQ4 target."""
    config = run.config
    scope = learning_rates.RQ4_SCOPE
    entry = run.results.lr_selection.get(scope, {}).get("fine_tune")
    if not config.zoo or (entry is not None and entry["chosen"] is not None):
        return
    trials = []
    for spec in config.lr_models:
        model = run.zoo_model(spec)
        for target in config.rq4_targets:
            pool = run.pools[target].with_channels(model.in_channels)
            trials += [(task, model) for task in validation_tasks(pool, f"rq4|{target}", config)]
    yield from _lr_trials(run, scope, "fine_tune", trials, config.rq4_train_steps)


def _pair_work(run: _Run, pair: Pair) -> Work:
    """RQ1-RQ3 rows of one pair: the source model is loaded when the first row is asked
    for, and each item's ``compute()`` makes one row."""
    config, name = run.config, str(pair)
    regimes = {
        regime: task_count(pair.target, count, config.max_classes)
        for regime, count in config.tasks_per_regime.items()
    }
    ids = [task_id(name, r, i) for r, n in regimes.items() for i in range(n)]
    if all(i in run.done for i in ids):
        return
    model = run.source(pair)
    rates = run.learning_rates(name)
    pool = run.pools[str(pair.target)].with_channels(model.in_channels)
    outputs = pool_outputs(model, pool, config.eval_batch_size)
    run.results.sources[name]["pool_forward"] = {
        "seconds": outputs.forward_s,
        "num_images": outputs.num_images,
        "num_train": int(pool.train[1].size),
        "num_test": int(pool.test[1].size),
    }
    for regime in regimes:
        for i, task in enumerate(pair_tasks(pool, name, regime, config)):
            ident = task_id(name, regime, i)
            if ident not in run.done:
                run.bar.set_postfix_str(f"{name} {regime} {i}")
                yield (
                    run.results.tasks.append,
                    functools.partial(
                        task_row,
                        task,
                        ident,
                        name,
                        regime,
                        i,
                        outputs,
                        model,
                        rates,
                        config,
                        run.session,
                    ),
                )


def _rq4_work(run: _Run) -> Work:
    """RQ4 rows: every zoo model scored and fine-tuned on every RQ4 task of each target."""
    config = run.config
    if not config.zoo:
        return
    counts = {t: rq4_task_count(run.pools[t].target, config) for t in config.rq4_targets}
    for spec in config.zoo:
        ids = [rq4_row_id(t, i, spec.name) for t, n in counts.items() for i in range(n)]
        if all(i in run.done for i in ids):
            if "num_params" not in run.results.zoo.get(spec.name, {}):
                run.zoo_model(spec)  # rows of an older version: record the model's size
            continue
        model = run.zoo_model(spec)
        rate = run.learning_rates(learning_rates.RQ4_SCOPE)["fine_tune"]
        for target, count in counts.items():
            if all(rq4_row_id(target, i, spec.name) in run.done for i in range(count)):
                continue
            pool = run.pools[target].with_channels(model.in_channels)
            outputs = pool_outputs(model, pool, config.eval_batch_size)
            for i, task in enumerate(rq4_tasks(pool, config)):
                ident = rq4_row_id(target, i, spec.name)
                if ident not in run.done:
                    run.bar.set_postfix_str(f"rq4 {spec.name} {target} {i}")
                    yield (
                        run.results.rq4_rows.append,
                        functools.partial(
                            rq4_row,
                            task,
                            ident,
                            target,
                            i,
                            spec.name,
                            model,
                            outputs,
                            rate,
                            config,
                            run.session,
                        ),
                    )


def _lr_ids(config: ExperimentConfig, pools: Mapping[str, Pool]) -> list[str]:
    """The ids of every learning-rate validation run of the configuration."""
    ids = []
    for pair in config.parsed_pairs:
        n = task_count(pools[str(pair.target)].target, config.validation_tasks, config.max_classes)
        ids += [
            lr_run_id(str(pair), method, lr, t)
            for method in METHODS_WITH_LR
            for lr in config.lr_grid
            for t in range(n)
        ]
    if config.zoo:
        n = sum(
            task_count(pools[t].target, config.validation_tasks, config.max_classes)
            for t in config.rq4_targets
        ) * len(config.lr_models)
        scope = learning_rates.RQ4_SCOPE
        ids += [lr_run_id(scope, "fine_tune", lr, t) for lr in config.lr_grid for t in range(n)]
    return ids


def _lr_done(results: Results) -> set[str]:
    return {
        lr_run_id(scope, method, lr, t)
        for scope, entries in results.lr_selection.items()
        for method, entry in entries.items()
        for lr, runs in zip(entry["learning_rates"], entry["validation_accuracy"], strict=True)
        for t, accuracy in enumerate(runs)
        if accuracy is not None
    }


def _row_ids(config: ExperimentConfig, pools: Mapping[str, Pool]) -> list[str]:
    """The ids of every RQ1-RQ3 and RQ4 row of the configuration."""
    ids = [
        task_id(str(pair), regime, i)
        for pair in config.parsed_pairs
        for regime, count in config.tasks_per_regime.items()
        for i in range(task_count(pair.target, count, config.max_classes))
    ]
    for target in config.rq4_targets if config.zoo else ():
        count = rq4_task_count(pools[target].target, config)
        ids += [rq4_row_id(target, i, spec.name) for spec in config.zoo for i in range(count)]
    return ids


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


def _computed(work: Work, workers: int) -> Iterator[tuple[Callable[[Any], None], Any]]:
    """``(store, value)`` for every item of ``work``, computing up to ``workers`` at once.

    Values come in the order they finish. Each row trains its own models from its own
    seed, so running rows side by side (threads: JAX releases the GIL while it computes)
    changes their timings, not their values. ``work`` itself advances in this thread.
    """
    if workers == 1:
        for store, compute in work:
            yield store, compute()
        return
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="experiment")
    running: dict[concurrent.futures.Future, Callable[[Any], None]] = {}
    try:
        for store, compute in work:
            running[executor.submit(compute)] = store
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

    First the learning-rate search (phase 1), then the rows (phase 2). In each phase,
    work is taken in turn from each pair and from RQ4 (round robin), so a run stopped
    part way has rows for every research question, not only for the first pair. Each
    source model is trained (or loaded) when its first work item is reached.

    Args:
      config: what to run.
      out_dir: output folder (created). Results already there for the same config are
        kept and their tasks skipped.
      progress: progress bars on stderr.
      max_new_tasks: stop after computing this many new work items (validation runs
        of the learning-rate search and RQ4 rows count too); the results so far are
        written, and a later call resumes.
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
    if config.zoo:
        for target in config.rq4_targets:
            pools.setdefault(target, load_pool(parse_slice(target), config))
    ids = _lr_ids(config, pools) + _row_ids(config, pools)
    done = (
        _lr_done(results) | {row.id for row in results.tasks} | {row.id for row in results.rq4_rows}
    )

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
    # Generators: a source model is trained or loaded only when its work is reached.
    # Phase 1 chooses the learning rates; phase 2, which uses them, starts after it.
    phases = [
        lambda: _round_robin(
            *(_lr_work(run, pair) for pair in config.parsed_pairs), _rq4_lr_work(run)
        ),
        lambda: _round_robin(
            *(_pair_work(run, pair) for pair in config.parsed_pairs), _rq4_work(run)
        ),
    ]
    budget = max_new_tasks  # work items left to compute (None: no limit)
    try:
        save()
        for phase in phases:
            work = phase()
            if budget is not None:
                work = itertools.islice(work, budget)
            for store, value in _computed(work, workers):
                store(value)
                is_row = isinstance(value, TaskRow | Rq4Row)
                done.update([value.id] if is_row else _lr_done(results))
                session.new_tasks += 1
                if budget is not None:
                    budget -= 1
                save()
                bar.update(1)
                if is_row and on_task is not None:
                    on_task(value)
            if budget == 0 or any(
                entry["chosen"] is None
                for entries in results.lr_selection.values()
                for entry in entries.values()
            ):
                break  # out of budget, or the search is incomplete: rows must wait
    finally:
        bar.close()
        save()
        # Also on Ctrl-C: a report of the rows so far, marked incomplete.
        interrupted = sys.exc_info()[1]
        if write_report and (interrupted is None or isinstance(interrupted, KeyboardInterrupt)):
            report.write_report(results, out)
    return results
