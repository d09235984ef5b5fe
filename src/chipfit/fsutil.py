"""Atomic writes, shared by everything chipfit delivers (``fit``'s artifact, ``cascade``, ``compile``).

A folder is written into a staging folder beside its destination and renamed into place; a file is written
to a temporary file beside it and ``os.replace``-d. A reader never sees a half-written version, and a write
interrupted by an exception (or a crash) leaves the old version as it was. Staging beside the destination
keeps the renames on one file system, where each is atomic. Replacing an existing folder takes two renames
(old aside, new in), so for that instant the path is absent; a file is replaced in one. What is delivered gets
the permissions of anything else the user creates (umask), not the private ones of a temporary file.

A staging folder (``.OUT.tmp-…``) and an old version set aside (``.OUT.old-…``) are named after their owner: a
tag of this machine's kernel and pid namespace, and the pid. A process killed mid-write (kill -9, a power cut
of the process) leaves them behind; the next write to the same destination removes those whose owner is a
dead process of this machine (one still alive, or one of another machine sharing the folder, is left alone),
and puts back an old version whose replacement never arrived.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale",
    "machine_id",
    "pid_alive",
    "sha256_file",
    "swap_into_place",
]

_OWNED = re.compile(r"([0-9a-f]{8})-(\d+)-")  # what follows ".OUT.tmp-" / ".OUT.old-": owner tag, pid


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


def machine_id() -> str:
    """This machine's identity for this boot: the kernel's boot id where Linux reports it (the same in every
    container on one kernel, so it names the cores they share), else the host name."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return socket.gethostname()


def _owner_tag() -> str:
    """8 hex digits naming where a pid means this process: this machine's boot and this pid namespace."""
    ns = ""
    with contextlib.suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return hashlib.sha256(f"{machine_id()}|{ns}".encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this pid namespace exists (a zombie counts as dead, another user's as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie waits only to be reaped: its work is over
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _owned_name(out: Path, kind: str) -> str:
    """The name prefix of a ``kind`` ("tmp" or "old") entry beside ``out`` owned by this process."""
    return f".{out.name}.{kind}-{_owner_tag()}-{os.getpid()}-"


def clean_stale(out: Path) -> list[Path]:
    """Remove the staging and set-aside entries beside ``out`` left by dead processes of this machine; the ones
    removed. When ``out`` itself is missing, the newest old version set aside is put back first (its owner died
    between the two renames of a swap). Entries of live processes, of other machines, or not named by
    :func:`atomic_dir` are left alone."""
    mine = _owner_tag()
    stale: dict[str, list[Path]] = {"tmp": [], "old": []}
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return []
    for entry in entries:
        for kind in stale:
            head = f".{out.name}.{kind}-"
            m = _OWNED.match(entry.name[len(head) :]) if entry.name.startswith(head) else None
            if m and m.group(1) == mine and not pid_alive(int(m.group(2))):
                stale[kind].append(Path(entry.path))
    if stale["old"] and not os.path.lexists(out):
        newest = max(stale["old"], key=lambda p: p.lstat().st_ctime)
        with contextlib.suppress(OSError):  # another process may be restoring it, or writing out, right now
            os.rename(newest, out)
            stale["old"].remove(newest)
    removed = []
    for path in stale["tmp"] + stale["old"]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        if not os.path.lexists(path):
            removed.append(path)
    return removed


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
    clean_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=_owned_name(out, "tmp"), dir=out.parent))
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
    old = out.parent / f"{_owned_name(out, 'old')}{uuid.uuid4().hex[:8]}"
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
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_owned_name(path, "tmp"), dir=path.parent)
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
