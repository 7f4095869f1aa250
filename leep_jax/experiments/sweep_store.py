"""The results store of a sweep: one SQLite file (stdlib ``sqlite3``, WAL mode).

Tables (query them with any SQLite client)::

    scores(model, target, metric, value)          key (model, target, metric)
    pairs(model, target, n, forward_passes, load_s, score_s, process, finished)
                                                  one row per scored (model, target)
    failures(model, target, stage, reason, process, finished)
    models(name, kind, description)               description: JSON
    targets(name, num_classes, num_examples, description)
    versions(package, version)                    the libraries that computed the rows
    runs(id, started, finished, argv, processes, done, skipped, failed, wall_s)

Each finished (model, target) pair is written in ONE transaction (its scores and its
``pairs`` row, or its ``failures`` row), so a process killed at any moment leaves whole
pairs only, and a rerun skips exactly the pairs whose every requested score is stored.
WAL with ``synchronous=NORMAL`` keeps committed pairs across a killed process.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import math
import platform
import sqlite3
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PairRecord", "Store", "StoreError", "library_versions"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores(
  model TEXT NOT NULL, target TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
  PRIMARY KEY (model, target, metric));
CREATE TABLE IF NOT EXISTS pairs(
  model TEXT NOT NULL, target TEXT NOT NULL, n INTEGER, forward_passes INTEGER,
  load_s REAL, score_s REAL, process INTEGER, finished TEXT,
  PRIMARY KEY (model, target));
CREATE TABLE IF NOT EXISTS failures(
  model TEXT NOT NULL, target TEXT NOT NULL, stage TEXT NOT NULL, reason TEXT NOT NULL,
  process INTEGER, finished TEXT, PRIMARY KEY (model, target));
CREATE TABLE IF NOT EXISTS models(name TEXT PRIMARY KEY, kind TEXT, description TEXT);
CREATE TABLE IF NOT EXISTS targets(
  name TEXT PRIMARY KEY, num_classes INTEGER, num_examples INTEGER, description TEXT);
CREATE TABLE IF NOT EXISTS versions(package TEXT PRIMARY KEY, version TEXT);
CREATE TABLE IF NOT EXISTS runs(
  id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT, finished TEXT, argv TEXT,
  processes INTEGER, done INTEGER, skipped INTEGER, failed INTEGER, wall_s REAL);
"""
_PACKAGES = ("leep-jax", "jax", "jaxlib", "flax", "numpy", "orbax-checkpoint")


class StoreError(ValueError):
    """A results file that cannot be used (not SQLite, or holds other targets/models)."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """The versions of Python and the libraries that compute the scores."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> tuple[tuple[str, str], ...]:
    # Read once per process: the metadata lookups take ~0.2 s.
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return tuple(versions.items())


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """The outcome of one (model, target) pair: scores, or a failure with its reason.

    ``to_json`` / ``from_json`` are the one wire format (the distributed sweep sends
    records to process 0 as JSON; floats round-trip exactly).
    """

    model: str
    target: str
    scores: dict[str, float] | None = None  # None for a failure
    n: int = 0
    forward_passes: int = 0
    load_s: float = 0.0
    score_s: float = 0.0
    stage: str = ""  # failures: "load", "preprocess" or "score"
    reason: str = ""
    process: int = 0

    @property
    def failed(self) -> bool:
        return self.scores is None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PairRecord:
        return cls(**json.loads(text))


class Store:
    """An open results file. Use as a context manager, or call :meth:`close`.

    Raises:
      StoreError: the file is not an SQLite database.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise StoreError(f"{self.path} is not a leep-jax results file: {error}") from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, values in statements:
                self._db.execute(sql, values)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ descriptions

    def _check_or_insert(self, table: str, key: str, name: str, row: dict[str, Any]) -> None:
        stored = self._db.execute(
            f"SELECT description FROM {table} WHERE {key} = ?", (name,)
        ).fetchone()
        description = row["description"]
        if stored is not None and json.loads(stored[0]) != json.loads(description):
            raise StoreError(
                f"{self.path} already holds {table[:-1]} {name!r} with another description "
                f"(stored {stored[0]}, now {description}); use another --out file"
            )
        if stored is None:
            columns = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            self._transaction(
                [(f"INSERT INTO {table}({columns}) VALUES ({marks})", tuple(row.values()))]
            )

    def describe_target(self, name: str, description: dict[str, Any]) -> None:
        """Records a target, or StoreError if the file holds one of that name drawn otherwise."""
        self._check_or_insert(
            "targets",
            "name",
            name,
            {
                "name": name,
                "num_classes": len(description["classes"]),
                "num_examples": description["num_examples"],
                "description": json.dumps(description, sort_keys=True),
            },
        )

    def describe_model(self, name: str, description: dict[str, Any]) -> None:
        """Records a model, or StoreError if the file holds another model of that name."""
        self._check_or_insert(
            "models",
            "name",
            name,
            {
                "name": name,
                "kind": description.get("kind"),
                "description": json.dumps(description, sort_keys=True),
            },
        )

    def record_versions(self) -> None:
        self._transaction(
            ("INSERT OR REPLACE INTO versions VALUES (?, ?)", item)
            for item in library_versions().items()
        )

    # ------------------------------------------------------------------------- pairs

    def finished(
        self, metrics: Sequence[str], *, retry_failed: bool = False
    ) -> set[tuple[str, str]]:
        """The (model, target) pairs with every score in ``metrics`` (and failed pairs)."""
        marks = ", ".join("?" for _ in metrics)
        done = self._db.execute(
            f"SELECT model, target FROM scores WHERE metric IN ({marks}) "
            "GROUP BY model, target HAVING COUNT(*) = ?",
            (*metrics, len(metrics)),
        ).fetchall()
        pairs = {tuple(row) for row in done}
        if not retry_failed:
            pairs |= {tuple(row) for row in self._db.execute("SELECT model, target FROM failures")}
        return pairs

    def write(self, record: PairRecord) -> None:
        """Commits one pair's rows in one transaction (replacing older rows of the pair)."""
        key = (record.model, record.target)
        when = _now()
        if record.failed:
            statements = [
                (
                    "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, record.stage, record.reason, record.process, when),
                )
            ]
        else:
            statements = [("DELETE FROM failures WHERE model = ? AND target = ?", key)]
            statements += [
                ("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", (*key, metric, value))
                for metric, value in record.scores.items()
            ]
            statements.append(
                (
                    "INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *key,
                        record.n,
                        record.forward_passes,
                        record.load_s,
                        record.score_s,
                        record.process,
                        when,
                    ),
                )  # fmt: skip
            )
        self._transaction(statements)

    def start_run(self, argv: Sequence[str], processes: int) -> int:
        cursor = self._db.execute(
            "INSERT INTO runs(started, argv, processes) VALUES (?, ?, ?)",
            (_now(), json.dumps(list(argv)), processes),
        )
        return int(cursor.lastrowid)

    def finish_run(self, run: int, done: int, skipped: int, failed: int, wall_s: float) -> None:
        self._db.execute(
            "UPDATE runs SET finished = ?, done = ?, skipped = ?, failed = ?, wall_s = ? "
            "WHERE id = ?",
            (_now(), done, skipped, failed, wall_s, run),
        )

    # ------------------------------------------------------------------------ report

    def rows(self, table: str) -> list[tuple]:
        """Every row of ``table``, sorted (for tests and exports)."""
        if table not in ("scores", "pairs", "failures", "models", "targets", "versions", "runs"):
            raise ValueError(f"unknown table {table!r}")
        return sorted(self._db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)

    def metrics(self) -> list[str]:
        """The score names stored, in the library's order where known."""
        from leep_jax.scores.names import SCORE_NAMES

        stored = {row[0] for row in self._db.execute("SELECT DISTINCT metric FROM scores")}
        known = [m for m in SCORE_NAMES if m in stored]
        return known + sorted(stored - set(known))

    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{target: {model: {metric: value, "seconds": score_s}}}``."""
        result: dict[str, dict[str, dict[str, float]]] = {}
        for model, target, metric, value in self._db.execute(
            "SELECT model, target, metric, value FROM scores ORDER BY target, model"
        ):
            result.setdefault(target, {}).setdefault(model, {})[metric] = value
        for model, target, seconds in self._db.execute("SELECT model, target, score_s FROM pairs"):
            if target in result and model in result[target]:
                result[target][model]["seconds"] = seconds
        return result

    def failures(self) -> list[dict[str, Any]]:
        return [
            {"model": m, "target": t, "stage": s, "reason": r}
            for m, t, s, r in self._db.execute(
                "SELECT model, target, stage, reason FROM failures ORDER BY target, model"
            )
        ]

    def export_csv(self, path: str | Path) -> int:
        """Writes one row per (model, target) with a column per score; returns the row count."""
        metrics = self.metrics()
        table = self.table()
        count = 0
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["target", "model", *metrics, "score_s"])
            for target, models in sorted(table.items()):
                for model, values in sorted(models.items()):
                    cells = [values.get(m) for m in metrics]
                    writer.writerow([target, model, *("" if v is None else repr(v) for v in cells),
                                     values.get("seconds", "")])  # fmt: skip
                    count += 1
        return count


def ranking(
    models: dict[str, dict[str, float]], metric: str
) -> list[tuple[int, str, dict[str, float]]]:
    """``(rank, model, values)`` best first by ``metric`` (ties share the best rank)."""
    scored = sorted(
        models.items(),
        key=lambda item: (-item[1].get(metric, -math.inf), item[0]),
    )
    ranked, previous, rank = [], None, 0
    for position, (model, values) in enumerate(scored, start=1):
        value = values.get(metric, -math.inf)
        if value != previous:
            rank, previous = position, value
        ranked.append((rank, model, values))
    return ranked
