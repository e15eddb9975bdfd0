"""The one exception type medseg raises for bad input.

Every problem a user can cause (a damaged file, a dataset that does not add up, an option that makes
no sense) is a :class:`MedsegError` whose message is one line naming the file and the problem. The CLI
prints that line and moves on to the next case; it never shows a traceback for these.
"""

from __future__ import annotations

from pathlib import Path


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters (its type name when it has none)."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:limit]


def unexpected(exc: BaseException) -> str:
    """``unexpected TypeName: message`` for an error medseg did not foresee (a bug or a library's surprise)."""
    return f"unexpected {type(exc).__name__}: {one_line(exc, 300)}"


class MedsegError(Exception):
    """A one-line, user-facing error about an input. The CLI exits with :attr:`exit_code`.

    Args:
        message: What is wrong, in one line.
        path: The file or folder it is about; prefixed to the message when given.
    """

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.problem = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)


class UsageError(MedsegError):
    """An option or argument that makes no sense (exit code 2, like a mistyped flag)."""

    exit_code = 2


class NothingToSegment(MedsegError):
    """The input holds no image, DICOM series or dataset case at all (exit code 3)."""

    exit_code = 3


class ModelError(MedsegError):
    """The model folder cannot be used: missing, incomplete, changed since training, unreadable (exit code 4)."""

    exit_code = 4
