"""The learning-rate search: each transfer method's peak learning rate, chosen once.

Fine-tuning and training from scratch are run with every learning rate of
``config.lr_grid`` on validation tasks (`leep_jax.experiments.pools.validation_tasks`:
built from the pools' training split, evaluated on held-out training examples, never
on a test split). Per scope (a pair, or ``"rq4"``) and method, the rate with the
highest mean validation accuracy is chosen (ties: the smaller rate), and every
evaluated task of that scope uses it.

In ``results.json`` the search is ``lr_selection[scope][method]``: the rates tried,
the validation accuracy of each (rate, validation run), their means and the chosen
rate (None until every run of the scope and method is done).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["RQ4_SCOPE", "chosen_rate", "new_entry", "record_run"]

RQ4_SCOPE = "rq4"


def new_entry(grid: Sequence[float], num_runs: int) -> dict[str, Any]:
    """An empty search of ``grid`` with ``num_runs`` validation runs per rate."""
    return {
        "learning_rates": [float(lr) for lr in grid],
        "validation_accuracy": [[None] * num_runs for _ in grid],
        "mean_validation_accuracy": [None] * len(grid),
        "chosen": None,
    }


def record_run(entry: dict[str, Any], rate_index: int, run_index: int, accuracy: float) -> None:
    """Stores one run's validation accuracy, and the means and choice once complete."""
    entry["validation_accuracy"][rate_index][run_index] = float(accuracy)
    entry["mean_validation_accuracy"] = [
        None if None in runs else float(np.mean(runs)) for runs in entry["validation_accuracy"]
    ]
    entry["chosen"] = chosen_rate(entry)


def chosen_rate(entry: Mapping[str, Any]) -> float | None:
    """The rate with the highest mean validation accuracy (the first, i.e. smallest in
    an ascending grid, on ties), or None while runs are missing."""
    means = entry["mean_validation_accuracy"]
    if not means or None in means:
        return None
    return float(entry["learning_rates"][int(np.argmax(means))])
