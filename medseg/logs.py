"""medseg's one reporting channel. Library code logs with levels to ``logging.getLogger(__name__)`` (a child of
the ``medseg`` logger): INFO for progress, decisions and summaries, WARNING for what the user should look at,
ERROR for a case, file or series that failed. :func:`log_to_console` shows them as the CLI does; in Jupyter,
call it once (or configure :mod:`logging` as you like).

Two kinds of message keep their own word instead of the level's: a QA flag (WARNING, ``flag: ...``) and a
refused case (ERROR, ``refused: ...``): pass ``extra=FLAG`` or ``extra=REFUSED``.
"""

from __future__ import annotations

import logging
import os
import sys

FLAG = {"kind": "flag"}
REFUSED = {"kind": "refused"}


class LineFormatter(logging.Formatter):
    """INFO and DEBUG lines as they are; others prefixed with their kind or level: ``warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno < logging.WARNING:
            return text
        return f"{getattr(record, 'kind', record.levelname.lower())}: {text}"


class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at the time of each message (tests and Jupyter
    replace them)."""

    def __init__(self, to_stderr: bool):
        super().__init__()
        self._to_stderr = to_stderr
        self.setFormatter(LineFormatter())
        if to_stderr:
            self.setLevel(logging.WARNING)
        else:
            self.addFilter(lambda record: record.levelno < logging.WARNING)

    @property
    def stream(self):
        return sys.stderr if self._to_stderr else sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_to_console(verbose: bool = False, quiet: bool = False) -> None:
    """Show medseg's messages: progress and summaries on stdout, warnings, flags, refusals and errors on
    stderr. ``verbose`` adds debug details; ``quiet`` keeps only stderr's lines and turns progress bars off.
    Calling it again replaces the previous setting."""
    logger = logging.getLogger("medseg")
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    else:
        logger.addHandler(_Console(to_stderr=False))
    logger.addHandler(_Console(to_stderr=True))
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
