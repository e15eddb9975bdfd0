"""CLI plumbing: one-line errors instead of tracebacks (messages go through :mod:`medseg.logs`)."""

from __future__ import annotations

import functools
import os

import typer


def one_line_errors(func):
    """Turn :class:`MedsegError` (and any unexpected error) into ``error: ...`` and exit code 1.

    Set ``MEDSEG_DEBUG=1`` to see the traceback of unexpected errors.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from medseg.errors import MedsegError, unexpected

        try:
            return func(*args, **kwargs)
        except MedsegError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("MEDSEG_DEBUG"):
                raise
            typer.echo(f"error: {unexpected(exc)} (MEDSEG_DEBUG=1 shows details)", err=True)
            raise typer.Exit(1) from None

    return wrapper
