"""The results file, ``OUT/results.json``: `Results`, loading, atomic writes, resume.

`Results` is the whole file: the configuration it was computed with, the run sessions,
the source and zoo models' metadata, the typed rows (`TaskRow`, `Rq4Row`) and the
summaries computed from them (`leep_jax.experiments.statistics` and
`leep_jax.experiments.selection`; stored for readers of the file, recomputed from the
rows on every write). The schema's version is the
configuration's ``protocol_version`` (`leep_jax.experiments.config.PROTOCOL_VERSION`):
results of another version are another configuration, and resume refuses them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leep_jax.experiments.rows import Rq4Row, TaskRow, jsonable

__all__ = [
    "RESULTS_FILE",
    "ConfigMismatchError",
    "Results",
    "Session",
    "load_results",
    "read_results",
    "write_json_atomic",
]

RESULTS_FILE = "results.json"


class ConfigMismatchError(ValueError):
    """``OUT/results.json`` was written by a run with another configuration."""


@dataclasses.dataclass
class Session:
    """One call of `run_experiment` on an output folder.

    Attributes:
      started: ISO time (UTC) it started.
      duration_s: its wall-clock seconds so far.
      new_tasks: rows it computed.
      environment: Python, JAX, platform, CPU count and devices.
    """

    started: str
    duration_s: float
    new_tasks: int
    environment: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Session:
        return cls(**record)


@dataclasses.dataclass
class Results:
    """Everything in results.json (see the module docstring).

    Attributes:
      config: `ExperimentConfig.to_dict` of the configuration.
      duration_s: wall-clock seconds over all sessions.
      complete: every row of the configuration is present.
      sessions: one `Session` per run.
      sources: per pair, its source model's metadata and pool forward-pass timing.
      zoo: per zoo model, its metadata (``source_test_accuracy``, ``num_params``, ...).
      lr_selection: per pair (and ``"rq4"``), the learning rates tried on validation
        tasks, their mean validation accuracy and the chosen one
        (`leep_jax.experiments.learning_rates`).
      tasks: the RQ1-RQ3 rows.
      summary: RQ1/RQ3 correlations (`statistics.summarize`).
      rq2: RQ2 convergence (`statistics.convergence`).
      rq4_rows: the RQ4 rows.
      rq4_summary: RQ4 rank agreement (`selection.selection`).
    """

    config: dict[str, Any]
    duration_s: float = 0.0
    complete: bool = False
    sessions: list[Session] = dataclasses.field(default_factory=list)
    sources: dict[str, Any] = dataclasses.field(default_factory=dict)
    zoo: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr_selection: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: list[TaskRow] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    rq2: dict[str, Any] = dataclasses.field(default_factory=dict)
    rq4_rows: list[Rq4Row] = dataclasses.field(default_factory=list)
    rq4_summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (keys in the file's order; NaN becomes null)."""
        return {
            "config": jsonable(self.config),
            "duration_s": self.duration_s,
            "complete": self.complete,
            "sessions": [s.to_json() for s in self.sessions],
            "sources": jsonable(self.sources),
            "zoo": jsonable(self.zoo),
            "lr_selection": jsonable(self.lr_selection),
            "tasks": [row.to_json() for row in self.tasks],
            "summary": jsonable(self.summary),
            "rq2": jsonable(self.rq2),
            "rq4": {
                "rows": [row.to_json() for row in self.rq4_rows],
                "summary": jsonable(self.rq4_summary),
            },
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Results:
        """Parses the file's JSON object (as `to_json` writes it)."""
        return cls(
            config=record["config"],
            duration_s=float(record.get("duration_s") or 0.0),
            complete=bool(record.get("complete")),
            sessions=[Session.from_json(s) for s in record.get("sessions", [])],
            sources=record.get("sources", {}),
            zoo=record.get("zoo", {}),
            lr_selection=record.get("lr_selection", {}),
            tasks=[TaskRow.from_json(row) for row in record["tasks"]],
            summary=record.get("summary", {}),
            rq2=record.get("rq2", {}),
            rq4_rows=[Rq4Row.from_json(row) for row in record["rq4"]["rows"]],
            rq4_summary=record["rq4"].get("summary", {}),
        )


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Writes JSON to ``path`` atomically: a temporary file in the same folder, fsync,
    then ``os.replace`` (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(jsonable(data), f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_results(out_dir: str | os.PathLike[str]) -> Results:
    """The results in ``out_dir/results.json``.

    Raises:
      FileNotFoundError: there is no results file.
      ValueError: the file is not valid JSON or not a results file of this program.
    """
    path = Path(out_dir) / RESULTS_FILE
    try:
        with open(path) as f:
            stored = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); move it away to start over"
        ) from None
    if not isinstance(stored, dict) or "tasks" not in stored:
        raise ValueError(f"{path} is not a leep-jax experiment results file")
    try:
        return Results.from_json(stored)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a leep-jax experiment results file ({error!r})") from None


def _config_differences(stored: Any, wanted: Mapping[str, Any]) -> list[str]:
    if not isinstance(stored, dict):
        return ["(no config stored)"]
    return [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def load_results(out_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Results:
    """The results so far in ``out_dir`` for a configuration (empty if none).

    Args:
      out_dir: the output folder.
      config: the configuration's `ExperimentConfig.to_dict`.

    Raises:
      ConfigMismatchError: ``out_dir/results.json`` belongs to another configuration.
      ValueError: the file is not a results file of this program.
    """
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return Results(config=dict(config))
    results = read_results(out_dir)
    differences = _config_differences(results.config, config)
    if differences:
        raise ConfigMismatchError(
            f"{path} was written with another configuration (differs in: "
            f"{', '.join(differences)}); use another --out directory, or delete it to start over"
        )
    return results
