"""Experiments: ranking a model zoo for a target task, the paper's protocol, reports.

Each experiment lives in its own module (``leep_jax.experiments.rank``, ...); import
the one you need. Nothing is imported here, so loading one experiment never pulls in
the others.
"""
