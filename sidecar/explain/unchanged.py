"""What identifies the saved files a feature importance run read (the model's reference and the recent rows its
worker keeps), so that an interval finding them as they were has nothing new to explain and is skipped.

A worker writes each save to a new file and renames it into place, so (inode, modification time, size) changes with
every save. A run takes the identities before it reads the files: a save in between makes the next interval run
again, never miss new rows. Stdlib only: the main process compares them without numpy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

Identity = tuple[int, int, int] | None  # (inode, mtime in ns, size); None: no such file


def identities(paths: Iterable[str]) -> dict[str, Identity]:
    """Each path's identity as it is on disk now."""
    found: dict[str, Identity] = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            found[path] = None
        else:
            found[path] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return found
