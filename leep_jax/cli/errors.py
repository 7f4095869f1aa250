"""The one exception type the CLI turns into ``exit 2`` plus a single stderr line."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence


class CLIError(Exception):
    """Bad input or environment detected by a CLI command."""


def one_line(error: BaseException) -> str:
    """``error``'s message with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(error).split())


def require_extra(extra: str, modules: Sequence[str], what: str) -> None:
    """Raises `CLIError` naming the extra to install when one of ``modules`` is missing.

    Args:
      extra: the pip extra that brings the modules (``"experiments"``).
      modules: top-level module names to look for.
      what: what needs them, for the message (``"leep-jax experiment"``).
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            raise CLIError(f"{what} needs the '{extra}' extra: pip install 'leep-jax[{extra}]'")
