"""Turning expected failures into one-line messages, shared by every `kd` command."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kd.errors import FieldError, KdError, is_disk_full

F = TypeVar("F", bound=Callable[..., Any])


# Fields whose option is not `--` + the field's name with dashes.
OPTION_OF_FIELD = {"cache_run": "--cache", "teacher_runs": "--teacher", "corpora": "--tasks", "rope": "--bayesian"}


def option_name(field: str) -> str:
    """The command-line option that sets a library field."""
    return OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-"))


def user_message(error: KdError) -> str:
    """A library error as the CLI words it: a field error names the option that sets the field."""
    return error.worded(option_name(error.field)) if isinstance(error, FieldError) else str(error)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Report a KdError as `error: <message>` on stderr and exit with its code (2).

    Users and scripts see one greppable line naming the file and line at fault instead of
    a traceback; anything that is not a KdError is a bug and keeps its traceback. A full disk
    met where kd did not expect to write (e.g. inside MLflow's store) is the user's environment,
    not a bug: it too is one line, naming the file when the system said which.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KdError as error:
            _fail(user_message(error), getattr(error, "exit_code", 2))
        except OSError as error:
            if not is_disk_full(error):
                raise
            where = getattr(error, "filename2", None) or getattr(error, "filename", None)
            _fail(f"{where + ': ' if where else ''}no space left on device", 2)

    return wrapper  # type: ignore[return-value]


# click >= 8.2 reports a bare group invocation as this UsageError, whose message is the help text.
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineErrors(click.Group):
    """The `kd` group: click's usage errors (a missing or invalid option) become the same one
    line as kd's own, `error: <message> (see kd CMD --help)`, instead of a usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            if isinstance(error, _HELP):  # `kd` alone: the help text is the answer, not an error
                error.show()
                sys.exit(error.exit_code)
            context = getattr(error, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            _fail(error.format_message() + hint, error.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result
