"""The identity of a saved file changes with every save a worker makes (write aside, rename into place), and only
then."""

from __future__ import annotations

import os
from pathlib import Path

from sidecar.explain.unchanged import identities


def save(path: Path, data: bytes) -> None:
    """As a worker saves: a new file renamed over the old one."""
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_bytes(data)
    os.replace(aside, path)


def test_a_save_changes_the_identity_even_with_the_same_bytes_and_time(tmp_path: Path) -> None:
    path = tmp_path / "recent.npz"
    save(path, b"rows")
    first = identities([str(path)])
    assert first == identities([str(path)])  # nothing saved: the same
    stat = path.stat()
    save(path, b"rows")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: the inode still tells
    assert identities([str(path)]) != first


def test_a_missing_file_has_no_identity(tmp_path: Path) -> None:
    path = tmp_path / "recent.npz"
    assert identities([str(path)]) == {str(path): None}
    save(path, b"rows")
    assert identities([str(path)])[str(path)] is not None
