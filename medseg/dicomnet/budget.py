"""How much the node's store may still take: a cap on its total size (``--max-store``) and a floor of free space
on its disk (``--min-free``), checked for each instance *before* it is written, so that an instance that does
not fit is refused ("out of resources") rather than acknowledged and lost."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

GB = 1e9


def folder_size(folder: Path) -> int:
    """Bytes in the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


class StoreBudget:
    """The store's size so far and the limits on it; thread-safe (the receiver's threads reserve concurrently).

    Args:
        store: The store folder (measured once here, then counted).
        max_bytes: Most bytes the store may hold; None: no cap.
        min_free_bytes: Free bytes to keep on the store's disk after each write; 0: none.
    """

    def __init__(self, store: Path, max_bytes: float | None = None, min_free_bytes: float = 0):
        self.store, self.max_bytes, self.min_free_bytes = store, max_bytes, min_free_bytes
        self.used = folder_size(store) if max_bytes is not None else 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> str | None:
        """Count ``size`` more bytes if they fit; else the reason they do not (nothing counted)."""
        with self._lock:
            if self.max_bytes is not None and self.used + size > self.max_bytes:
                return f"the store holds {self.used / GB:.2f} GB of its --max-store {self.max_bytes / GB:g} GB"
            if self.min_free_bytes:
                free = shutil.disk_usage(self.store).free
                if free - size < self.min_free_bytes:
                    return f"{free / GB:.2f} GB free on the store's disk, --min-free is {self.min_free_bytes / GB:g} GB"
            self.used += size
            return None

    def release(self, size: int) -> None:
        """Give back a reservation whose write failed (or the size of a file it replaced)."""
        with self._lock:
            self.used -= size

    def describe(self) -> str:
        """The limits in words, for the node's start line."""
        parts = [f"store at most {self.max_bytes / GB:g} GB"] if self.max_bytes is not None else []
        parts += [f"keep {self.min_free_bytes / GB:g} GB free"] if self.min_free_bytes else []
        return ", ".join(parts) or "no store limit"
