"""CLI plumbing: logging to stderr and one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import logging
import os
import sys

import typer


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (it may be replaced, e.g. by tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


_QUIET = False
_TO_STDERR = ("error:", "warning:", "refused:", "flag:")


def say(text: str) -> None:
    """Print one line for the user: errors, warnings, refusals and flags to stderr (always), the rest to
    stdout unless ``--quiet``."""
    if text.startswith(_TO_STDERR):
        typer.echo(text, err=True)
    elif not _QUIET:
        typer.echo(text)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send medseg's log to stderr as ``medseg: warning: ...`` lines; ``quiet`` keeps only errors and
    turns progress bars off."""
    global _QUIET
    _QUIET = quiet
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logger = logging.getLogger("medseg")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("medseg: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


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
