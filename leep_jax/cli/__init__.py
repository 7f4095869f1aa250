"""Command-line interface (``leep-jax``)."""
