"""Experiments: ranking a model zoo for a target task, and the LEEP paper's protocol.

* :mod:`.rank`: `rank_models`, what ``leep-jax rank`` runs.
* Sweeps of a model zoo over target sets (``leep-jax sweep``): :mod:`.sweep`,
  :mod:`.sweep_store` (the SQLite results), :mod:`.sweep_targets`, :mod:`.zoo_file`.
* The paper's experiments (``leep-jax experiment``), one concept per module:
  :mod:`.pairs` (``SOURCE->TARGET``), :mod:`.config` (`ExperimentConfig`, seeds,
  recipes), :mod:`.pools` (target pools and their tasks), :mod:`.learning_rates` (the
  search, once per pair), :mod:`.measure` (one task's
  scores and transfer accuracies as a typed row of :mod:`.rows`), :mod:`.results`
  (``results.json``: load, atomic write, resume), :mod:`.runner` (`run_experiment`),
  :mod:`.statistics` (RQ1-RQ3: correlations, convergence), :mod:`.selection` (RQ4:
  rank agreement, source selection), :mod:`.figures`, :mod:`.tables`, :mod:`.labels`
  (display names) and :mod:`.report` (``report.md``).

Nothing is imported here, so loading one experiment never pulls in the others.
"""
