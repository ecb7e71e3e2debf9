"""User-facing errors: one line that names the problem and the fix, and a non-zero exit from every CLI."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input or environment. The message is one line: what is wrong, then how to fix it."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of a library's exception message (its type name if it has none), for quoting inside a
    one-line ``UserError``."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]


class MissingExtraError(UserError, ImportError):
    """An optional package is missing; the message names the pip extra or the install step."""


def cli_entry(main: F) -> F:
    """Wrap a CLI ``main``: a ``UserError`` prints ``error: <message>`` on stderr and exits 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]
