"""The leep-jax benchmark suite: ``python -m benchmarks [--quick] [--only NAME]``.

Each benchmark is a module with ``NAME`` and ``run(config) -> summary``; it writes
``<name>.json`` and ``<name>.md`` under ``benchmarks/results/<device>/`` and updates its
own section of ``summary.json`` there. See benchmarks/README.md.
"""

BENCHMARKS = ("core", "score_vs_finetune", "zoo", "devices", "memory", "scores", "sweep")
