"""Errors a user can act on: bad config, bad input, a missing path, an unreachable service.

``sp-prm`` (:func:`sp_prm.cli.main`) catches :class:`UserError` once and prints its
message (what went wrong, where: file, line, column or key, and what to do) in one
to three lines with exit code 2; ``--debug`` shows the traceback too. Any other
exception is a bug and keeps its traceback.

Each class also derives from the builtin exception it refines (``ValueError``,
``FileNotFoundError``, ...), so code and tests that catch those keep working.
This module imports nothing from the project: every layer (``data_prep``,
``sp_prm``, ``decoding``) may raise these.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Something the user can fix; ``hint`` says how (printed on its own line)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class ConfigError(UserError, ValueError):
    """A recipe or ``--key value`` override is malformed or out of range."""


class UnknownKeyError(ConfigError, KeyError):
    """A config key that no field has (a typo in a recipe never passes silently)."""


class InputError(UserError, ValueError):
    """Input data cannot be used as given (a bad jsonl line, a missing column, no usable rows)."""


class MissingPathError(UserError, FileNotFoundError):
    """A file, folder or model that was named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """The output is there already, or another run is writing it."""


class ServiceError(UserError, ConnectionError):
    """A service (the hub, a server) is unreachable or refuses the credentials."""


class ModelError(UserError, ValueError):
    """A checkpoint is not what the command needs (e.g. no trained one-output reward head)."""


def report_user_error(name: str, err: UserError, debug: bool, prog: str = "sp-prm") -> int:
    """Print a user error as one to three lines (the traceback only with ``--debug``); returns exit code 2.

    ``prog name`` heads the message: ``sp-prm train``, ``python -m experiments.gold.run data``."""
    if debug:
        traceback.print_exception(err)
    lines = str(err).strip().splitlines() or [type(err).__name__]
    print(f"{prog} {name}: error: {lines[0]}" if name else f"{prog}: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)
    if not debug:
        print("  (--debug shows the traceback)", file=sys.stderr)
    return 2


def guarded(name: str, run: Callable[[], Any], debug: bool | None = None, prog: str = "sp-prm") -> Any:
    """Run a command, turning a :class:`UserError` into its short message and exit code 2.

    Also for the ``python -m`` entries (``accelerate launch -m sp_prm.train``); ``debug`` defaults to
    whether ``--debug`` is in ``sys.argv``.
    """
    debug = "--debug" in sys.argv if debug is None else debug
    try:
        return run()
    except UserError as err:  # anything else is a bug: it keeps its traceback
        raise SystemExit(report_user_error(name, err, debug, prog)) from None
