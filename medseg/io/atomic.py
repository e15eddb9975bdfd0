"""Write files so that a crash never leaves a half-written output: temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import MedsegError


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz`` etc.) so writers that choose a format by
    extension still work. On any error the temporary file is removed and ``path`` is untouched.

    Args:
        path: Final destination.
        overwrite: When False and ``path`` exists, raise :class:`MedsegError` before writing anything.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise MedsegError("output exists (use --overwrite to replace it)", path)
    if path.is_dir():
        raise MedsegError("output path is a folder; expected a file name", path)
    make_output_dir(path.parent)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from colleagues
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def make_output_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) for outputs.

    Raises:
        MedsegError: when it, or a folder above it, is an existing file (a mistyped output path).
    """
    folder = Path(folder)
    for part in [folder, *folder.parents]:
        if part.exists() and not part.is_dir():
            raise MedsegError(f"output folder expected, but {part} is an existing file", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"cannot create the output folder ({exc.strerror or type(exc).__name__})", folder) from None
    return folder


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_csv_atomic(path: str | Path, rows: list[dict], overwrite: bool = True) -> None:
    """Write dict rows as CSV (columns: union of keys, in first-seen order) atomically."""

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue(), overwrite=overwrite)


def remove_stale_temporaries(folder: str | Path, older_than_s: float = 600.0) -> int:
    """Delete temporary files that :func:`atomic_path` left behind when a process was killed.

    Only hidden ``.*.tmp*`` files untouched for ``older_than_s`` seconds go: a file still being written
    (by a parallel shard, say) keeps changing and is left alone. Returns how many were removed.
    """

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for path in folder.iterdir():
        if path.name.startswith(".") and ".tmp" in path.name and path.is_file():
            if now - path.stat().st_mtime > older_than_s:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
