"""Model-zoo sweeps: every score of every (model, target) pair into a resumable SQLite file.

:func:`run_sweep` loads each model once, then scores it on every target still missing
from the results store through the one scoring engine
(:func:`leep_jax.streaming.engine.run`): one forward pass per pair feeds every score
(predictions kept on the device for LEEP's second sum), and models of one architecture
share one compiled step. Each finished pair is committed as soon as it is done
(:mod:`leep_jax.experiments.sweep_store`), so a killed sweep, rerun, scores only the
pairs it had not finished. A model that fails to load, returns outputs of the wrong
shape or produces NaN gets a row in the failures table with the reason, and the sweep
goes on.

Across processes (:class:`DistributedExchange`, over ``jax.distributed``) process ``i``
of ``N`` scores the models ``i, i + N, ...`` with its local devices and sends each
finished pair through the coordination service's key-value store to process 0, the
only one that opens the results file: no shared file system is needed. Process 0
first publishes the pairs already finished, so every process skips them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from leep_jax.experiments.sweep_store import PairRecord, Store
from leep_jax.experiments.sweep_targets import Target, preprocess_images
from leep_jax.models.adapters import Loaded, ModelEntry, PrecomputedOutputs, SharedModules
from leep_jax.scores.names import SCORE_NAMES, check_score_names
from leep_jax.streaming import engine, sources

__all__ = [
    "DistributedExchange",
    "LocalExchange",
    "SweepSummary",
    "init_distributed",
    "run_sweep",
    "score_pair",
]

_MAX_REASON = 500


@dataclasses.dataclass
class SweepSummary:
    """What one sweep did (over all processes, on process 0)."""

    done: int = 0  # pairs scored by this run
    skipped: int = 0  # pairs already in the results file
    failed: int = 0  # pairs recorded as failures by this run
    wall_s: float = 0.0
    processes: int = 1

    def line(self) -> str:
        processes = f" on {self.processes} processes" if self.processes > 1 else ""
        return (
            f"sweep: {self.done} pairs done, {self.skipped} skipped, {self.failed} failed "
            f"in {self.wall_s:.1f} s{processes}"
        )

    def add(self, other: SweepSummary) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed


def _reason(error: BaseException) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text[:_MAX_REASON]


def score_pair(
    entry: ModelEntry,
    loaded: Loaded,
    target: Target,
    metrics: Sequence[str],
    batch_size: int,
    images: Callable[[], np.ndarray],
) -> PairRecord:
    """Scores one loaded model on one target; a failure becomes a failure record.

    ``images()`` gives the target's images preprocessed for the model (cached by the
    caller per target and preprocessing).
    """
    y = target.num_classes
    size = min(batch_size, target.labels.shape[0])
    stage = "preprocess"
    try:
        if isinstance(entry, PrecomputedOutputs):
            predictions, features = entry.arrays(target.dataset, target.rows)
            arrays = {"predictions": predictions, "features": features}

            def source(second_pass=False):
                return sources.array_batches(arrays, target.labels, y, size)
        else:
            x = images()
            batches = [
                (x[start : start + size], target.labels[start : start + size])
                for start in range(0, x.shape[0], size)
            ]

            def source(second_pass=False):
                return sources.fixed_size(batches, y, size)

        stage = "score"
        result = engine.run(
            source,
            y,
            tuple(metrics),
            forward=loaded.forward,
            params=loaded.params,
            from_logits=loaded.from_logits,
        )
    except Exception as error:  # recorded, and the sweep goes on
        return PairRecord(entry.name, target.name, stage=stage, reason=_reason(error))
    bad = [m for m, v in result.scores.items() if not math.isfinite(v)]
    if bad:
        reason = f"score {bad[0]} is {result.scores[bad[0]]} (non-finite outputs or features)"
        return PairRecord(entry.name, target.name, stage="score", reason=reason)
    return PairRecord(
        entry.name,
        target.name,
        scores=dict(result.scores),
        n=result.n,
        forward_passes=result.forward_passes,
        score_s=result.seconds,
    )


class LocalExchange:
    """The exchange of a one-process sweep: nothing to send or receive."""

    process_index = 0
    process_count = 1

    def share(self, finished: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return finished

    def send(self, record: PairRecord) -> None:  # pragma: no cover - process 0 writes
        raise AssertionError("process 0 writes its own records")

    def drain(self) -> list[PairRecord]:
        return []

    def finish(self, summary: SweepSummary, write: Callable[[PairRecord], None]) -> SweepSummary:
        del write
        return summary


class DistributedExchange:
    """Records sent to process 0 through the ``jax.distributed`` key-value store.

    Keys live under ``leep_jax_sweep/``: ``finished`` (the pairs process 0 found in the
    results file, JSON), ``rows/<process>/<seq>`` (one :class:`PairRecord` each, deleted
    once process 0 has committed it) and ``done/<process>`` (how many rows a process
    sent, and its counts). A barrier ends the sweep, so no process shuts the runtime
    down before process 0 has everything.
    """

    _PREFIX = "leep_jax_sweep"

    def __init__(self, client, process_index: int, process_count: int, timeout_s: int = 24 * 3600):
        self._client = client
        self.process_index, self.process_count = process_index, process_count
        self._timeout_ms = timeout_s * 1000
        self._sent = 0
        self._received: dict[int, int] = {}

    def share(self, finished: set[tuple[str, str]]) -> set[tuple[str, str]]:
        import json

        key = f"{self._PREFIX}/finished"
        if self.process_index == 0:
            self._client.key_value_set(key, json.dumps(sorted(finished)))
        text = self._client.blocking_key_value_get(key, self._timeout_ms)
        return {tuple(pair) for pair in json.loads(text)}

    def send(self, record: PairRecord) -> None:
        key = f"{self._PREFIX}/rows/{self.process_index}/{self._sent:09d}"
        self._client.key_value_set(key, record.to_json())
        self._sent += 1

    def drain(self) -> list[PairRecord]:
        """Process 0: the records that arrived since the last call, removed from the store."""
        records = []
        for key, value in sorted(self._client.key_value_dir_get(f"{self._PREFIX}/rows/")):
            records.append(PairRecord.from_json(value))
            process = int(key.split("/")[-2])
            self._received[process] = self._received.get(process, 0) + 1
            self._client.key_value_delete(key)
        return records

    def finish(self, summary: SweepSummary, write: Callable[[PairRecord], None]) -> SweepSummary:
        """Waits for every process; on process 0 writes the last records and sums counts."""
        import json

        if self.process_index != 0:
            report = {"sent": self._sent, **dataclasses.asdict(summary)}
            self._client.key_value_set(
                f"{self._PREFIX}/done/{self.process_index}", json.dumps(report)
            )
        else:
            total = dataclasses.replace(summary, processes=self.process_count)
            reports: dict[int, dict] = {}
            while True:
                for record in self.drain():
                    write(record)
                for key, value in self._client.key_value_dir_get(f"{self._PREFIX}/done/"):
                    reports[int(key.rsplit("/", 1)[-1])] = json.loads(value)
                if len(reports) == self.process_count - 1 and all(
                    self._received.get(p, 0) == r["sent"] for p, r in reports.items()
                ):
                    break
                time.sleep(0.05)
            for report in reports.values():
                total.add(SweepSummary(report["done"], report["skipped"], report["failed"]))
            summary = total
        self._client.wait_at_barrier(f"{self._PREFIX}/end", self._timeout_ms)
        return summary


def init_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> DistributedExchange:
    """Starts ``jax.distributed`` (CPU collectives over gloo) and returns the exchange.

    With no arguments, ``jax.distributed.initialize()`` detects the cluster (SLURM,
    Open MPI, TPU VMs). Must run before any other JAX computation in the process.
    """
    import jax
    from jax._src import distributed

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return DistributedExchange(
        distributed.global_state.client, jax.process_index(), jax.process_count()
    )


def _describe(store: Store, entries: Sequence[ModelEntry], targets: Sequence[Target]) -> None:
    for target in targets:
        store.describe_target(target.name, target.describe())
    for entry in entries:
        store.describe_model(entry.name, entry.describe())


def run_sweep(
    entries: Sequence[ModelEntry],
    targets: Sequence[Target],
    out: str | None,
    *,
    metrics: Sequence[str] = SCORE_NAMES,
    batch_size: int = 256,
    retry_failed: bool = False,
    progress: bool = False,
    exchange: LocalExchange | DistributedExchange | None = None,
    argv: Sequence[str] = (),
) -> SweepSummary:
    """Scores every model on every target into the results file ``out``.

    Args:
      entries: the models (:mod:`leep_jax.models.adapters`), names unique.
      targets: the loaded target sets (:func:`~leep_jax.experiments.sweep_targets.load_target`).
      out: the SQLite results file (created if missing); read only on process 0.
      metrics: score names (default: every score the library has).
      batch_size: examples per forward pass.
      retry_failed: score again the pairs recorded as failures (else they are skipped).
      progress: a tqdm bar with ETA over this process's (model, target) pairs.
      exchange: how records reach process 0 (default: one process).
      argv: the command line, recorded in the ``runs`` table.

    Returns:
      The :class:`SweepSummary` (on process 0, summed over all processes).

    Raises:
      ValueError: unknown metrics, repeated names, a bad batch size, or a results file
        that holds other models or targets under the same names (``StoreError``).
    """
    started = time.perf_counter()
    metrics = check_score_names(metrics)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for what, names in (
        ("model", [e.name for e in entries]),
        ("target", [t.name for t in targets]),
    ):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{what} {repeated[0]!r} is given twice")
    exchange = exchange or LocalExchange()
    leader = exchange.process_index == 0
    store = Store(out) if leader else None
    summary = SweepSummary(processes=exchange.process_count)
    bar = None
    try:
        finished: set[tuple[str, str]] = set()
        if store is not None:
            finished = store.finished(metrics, retry_failed=retry_failed)
        finished = exchange.share(finished)

        def emit(record: PairRecord) -> None:
            if store is None:
                exchange.send(record)
            else:
                store.write(record)
            if record.failed:
                summary.failed += 1
            else:
                summary.done += 1

        mine = list(entries)[exchange.process_index :: exchange.process_count]
        bar = tqdm(total=len(mine) * len(targets), unit="pair", desc="sweep", disable=not progress)
        shared = SharedModules()
        cache: dict[tuple, np.ndarray] = {}
        work = []
        for entry in mine:
            pending = [t for t in targets if (entry.name, t.name) not in finished]
            summary.skipped += len(targets) - len(pending)
            bar.update(len(targets) - len(pending))
            if pending:
                work.append((entry, pending))

        def timed_load(entry: ModelEntry) -> tuple[Loaded, float]:
            start = time.perf_counter()
            return entry.load(shared), time.perf_counter() - start

        # The next model loads (orbax reads, deserialisation) while this one is scored.
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leep-jax-load")
        loads = [loader.submit(timed_load, work[0][0])] if work else []
        try:
            if store is not None:  # while the first model loads
                _describe(store, entries, targets)
                store.record_versions()
                run_id = store.start_run(argv, exchange.process_count)
            for index, (entry, pending) in enumerate(work):
                if index + 1 < len(work):
                    loads.append(loader.submit(timed_load, work[index + 1][0]))
                bar.set_postfix_str(entry.name, refresh=False)
                try:
                    loaded, load_s = loads[index].result()
                except Exception as error:  # recorded, and the sweep goes on
                    reason = _reason(error)
                    for target in pending:
                        emit(PairRecord(entry.name, target.name, stage="load", reason=reason,
                                        process=exchange.process_index))  # fmt: skip
                        bar.update(1)
                    continue
                loads[index] = None  # the model's weights are freed after its pairs
                for target in pending:
                    key = (target.name, entry.preprocess)

                    def images(key=key, target=target, preprocess=entry.preprocess):
                        if key not in cache:
                            cache[key] = preprocess_images(target.images, preprocess)
                        return cache[key]

                    record = score_pair(entry, loaded, target, metrics, batch_size, images)
                    emit(dataclasses.replace(record, load_s=load_s, process=exchange.process_index))
                    bar.update(1)
                if store is not None:
                    for record in exchange.drain():
                        store.write(record)
        finally:
            loader.shutdown(wait=True, cancel_futures=True)
        bar.close()
        summary = exchange.finish(summary, store.write if store is not None else lambda r: None)
        summary.wall_s = time.perf_counter() - started
        if store is not None:
            store.finish_run(run_id, summary.done, summary.skipped, summary.failed, summary.wall_s)
        return summary
    finally:
        if bar is not None:
            bar.close()
        if store is not None:
            store.close()
