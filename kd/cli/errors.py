"""Turning expected failures into one-line messages, shared by every `kd` command."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kd.errors import KdError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Report a KdError as `error: <message>` on stderr and exit with its code (2).

    Users and scripts see one greppable line naming the file and line at fault instead of
    a traceback; anything that is not a KdError is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KdError as error:
            message = " ".join(str(error).split())
            click.echo(f"error: {message}", err=True)
            sys.exit(getattr(error, "exit_code", 2))

    return wrapper  # type: ignore[return-value]
