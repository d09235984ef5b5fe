"""Atomic writes, shared by everything chipfit delivers (``fit``'s artifact, ``cascade``, ``compile``).

A folder is written into a staging folder beside its destination and renamed into place; a file is written
to a temporary file beside it and ``os.replace``-d. A reader never sees a half-written version, and a write
interrupted by an exception (or a crash) leaves the old version as it was. Staging beside the destination
keeps the renames on one file system, where each is atomic. Replacing an existing folder takes two renames
(old aside, new in), so for that instant the path is absent; a file is replaced in one. What is delivered gets
the permissions of anything else the user creates (umask), not the private ones of a temporary file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_text", "sha256_file", "swap_into_place"]


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (os.umask would set it for a
    moment, for every thread); 0o022 elsewhere if that fails."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; when the block ends normally, the staging folder
    replaces ``out`` (see :func:`swap_into_place`). When the block raises, the staging folder is removed,
    ``out`` is left untouched and the exception propagates."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out``. An existing ``out`` is first renamed aside and
    removed only once the new one is in place; if the second rename fails, the old one is put back."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it (flushed to disk, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` for text."""
    atomic_write_bytes(path, text.encode(encoding))
