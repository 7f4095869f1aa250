"""The one exception type the CLI turns into ``exit 2`` plus a single stderr line."""


class CLIError(Exception):
    """Bad input or environment detected by a CLI command."""
