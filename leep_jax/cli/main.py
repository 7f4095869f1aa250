"""The ``leep-jax`` command line: a thin dispatcher over subcommand modules.

Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Bad input is reported as one line on stderr with exit status 2 (``CLIError``), never
as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from leep_jax.cli.errors import CLIError

_SUBCOMMANDS = ("score", "rank", "sweep", "experiment")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; keep it one line
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="leep-jax",
        description="Transferability scores (LEEP, NCE, H-score, LogME, ...), model-zoo "
        "sweeps and the paper's experiments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in _SUBCOMMANDS:
        module = f"leep_jax.cli.{name}"
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as e:  # a subcommand still being written
            if e.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except CLIError as e:
        print(f"leep-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leep-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
