"""What the subcommand modules share: how their parser is made."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def subcommand_parser(
    subparsers,
    name: str,
    doc: str,
    *,
    help: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Adds subcommand ``name`` to ``subparsers``, to run ``run(args)``.

    Args:
      subparsers: the ``leep-jax`` parser's subparsers action.
      name: the subcommand.
      doc: its module docstring, printed by ``--help`` as written (its line breaks
        kept), without reST's double backquotes.
      help: the one-line summary ``leep-jax --help`` lists.
      run: what the dispatcher calls with the parsed arguments.

    Returns:
      The subcommand's parser, for its arguments.
    """
    parser = subparsers.add_parser(
        name,
        help=help,
        description=doc.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser
