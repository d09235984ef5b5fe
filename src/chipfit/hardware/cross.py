"""Cross toolchains and emulators for targets chipfit does not run on.

A module for another CPU architecture is linked with Debian's cross compiler (``g++-aarch64-linux-gnu``) and
checked, where possible, by running it under qemu-user with a *sysroot*: a folder holding that
architecture's C library, a Python and the TVM runtime (``make sysroot-aarch64`` builds one from Debian's
arm64 packages and PyPI's aarch64 wheels). Nothing here is required: without a cross compiler the target
cannot be compiled for (a clear error says what to install); without qemu or a sysroot the module is
delivered unchecked and the manifest says so.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from chipfit.workspace import default_home

__all__ = ["SYSROOT_PYTHON", "Toolchain", "find_sysroot", "host_arch", "toolchain"]

# The sysroot is Debian bookworm's (tools/make-sysroot.sh), whose one Python is 3.11; the wheels put in it are
# downloaded for that version, whatever interpreter runs chipfit on the host.
SYSROOT_PYTHON = "python3.11"

_TRIPLES = {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu"}
_APT = {"aarch64": "g++-aarch64-linux-gnu", "x86_64": "g++-x86-64-linux-gnu"}


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclass(frozen=True)
class Toolchain:
    arch: str
    compiler: str | None  # path of the C++ compiler that links for ``arch``; None: missing
    install_hint: str
    qemu: str | None  # path of qemu-<arch> (None on the host's own arch, or missing)
    sysroot: Path | None  # folder with the arch's libc, python3 and the TVM runtime

    @property
    def native(self) -> bool:
        return self.arch == host_arch()

    def check_unavailable(self) -> str | None:
        """Why a compiled module cannot be run here to check it (None: it can)."""
        if self.native:
            return None
        if not self.qemu:
            return f"qemu-{self.arch} is not installed (apt-get install qemu-user)"
        if self.sysroot is None:
            return (
                f"no {self.arch} sysroot with Python and the TVM runtime (build one with `make sysroot-{self.arch}`, "
                f"or point CHIPFIT_{self.arch.upper()}_SYSROOT at one)"
            )
        return None


def _sysroot_ok(path: Path) -> bool:
    return (path / "usr" / "bin" / SYSROOT_PYTHON).exists() and (path / "opt" / "chipfit-py" / "tvm").is_dir()


def find_sysroot(arch: str) -> Path | None:
    """``$CHIPFIT_<ARCH>_SYSROOT``, else ``$CHIPFIT_HOME/sysroots/<arch>``, else ``/opt/chipfit/sysroot-<arch>``."""
    env = os.environ.get(f"CHIPFIT_{arch.upper()}_SYSROOT")
    candidates = [Path(env)] if env else []
    candidates += [default_home() / "sysroots" / arch, Path(f"/opt/chipfit/sysroot-{arch}")]
    return next((p for p in candidates if _sysroot_ok(p)), None)


def toolchain(arch: str, mtriple: str = "") -> Toolchain:
    """The compiler (and emulator) for ``arch``; an ``mtriple`` for another OS than Linux has none here."""
    if mtriple and "linux" not in mtriple and platform.system() == "Linux":
        return Toolchain(arch, None, f"a toolchain for {mtriple} (build on that platform)", None, None)
    if arch == host_arch():
        cxx = shutil.which("g++") or shutil.which("c++")
        return Toolchain(arch, cxx, "apt-get install g++", None, None)
    triple = _TRIPLES.get(arch)
    compiler = shutil.which(f"{triple}-g++") if triple else None
    hint = f"apt-get install {_APT[arch]}" if arch in _APT else f"a C++ cross compiler for {arch}"
    return Toolchain(arch, compiler, hint, shutil.which(f"qemu-{arch}"), find_sysroot(arch))
