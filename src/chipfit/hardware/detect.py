"""Local detection: CPU model and ISA flags, the container's CPU quota, memory, GPUs, library versions.

Threads must follow the container's CPU quota (cgroup v1 or v2), not the host's core count: ONNX Runtime's
default thread pool sizes itself to the host (onnxruntime#29510), which oversubscribes a 2-core container
on a 64-core host.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "cpu_features",
    "cpu_quota",
    "environment_fingerprint",
    "fingerprint_hash",
    "local_machine",
    "microarch",
]

# ISA flags that change which kernels a runtime can use; the rest of /proc/cpuinfo is noise here.
_RELEVANT_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_fp16",
    "amx_int8",
    "amx_tile",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
    "fphp",
    "asimdhp",
)
_LIBRARIES = ("chipfit", "onnx", "onnxruntime", "numpy", "torch", "apache-tvm", "openvino")


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 cpu.max or v1 cfs_quota/period), or None when unlimited."""
    paths: list[tuple[str, str]] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            paths.append((controllers, rel.lstrip("/")))
    except OSError:
        pass
    candidates: list[tuple[Path, Path | None]] = []
    for controllers, rel in paths:
        if controllers == "":  # cgroup v2
            candidates += [(root / rel / "cpu.max", None), (root / "cpu.max", None)]
        elif "cpu" in controllers.split(","):
            for d in (root / "cpu" / rel, root / "cpu,cpuacct" / rel, root / "cpu", root / "cpu,cpuacct"):
                candidates.append((d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota_s, period_s = quota_file.read_text().split()[:2]
                if quota_s == "max":
                    return None
                return int(quota_s) / int(period_s)
            quota = int(quota_file.read_text())
            if quota <= 0:
                return None
            return quota / int(period_file.read_text())
        except (OSError, ValueError):
            continue
    return None


@functools.lru_cache(maxsize=1)
def cpu_quota() -> int:
    """The number of CPUs this process may use: affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


# archspec's names where LLVM (and so the catalogue's ``tvm.mcpu``) spells the microarchitecture otherwise
_LLVM_NAMES = {"zen": "znver1", "icelake": "icelake-server", "skylake_avx512": "skylake-avx512", "m1": "apple-m1"}


@functools.lru_cache(maxsize=1)
def microarch() -> str | None:
    """This CPU's microarchitecture in LLVM's spelling (``znver4``, ``sapphirerapids``, ``neoverse-v1``), read
    with archspec (the library Spack uses for it); None when archspec knows only the generic family."""
    try:
        import archspec.cpu
    except ImportError:  # a core dependency, but a broken install must not stop detection
        return None
    host = archspec.cpu.host()
    if host.vendor == "generic" or host.name == host.family.name:
        return None
    name = host.name
    if name.startswith("zen") and name[3:].isdigit():
        return f"znver{name[3:]}"
    return _LLVM_NAMES.get(name, name.replace("_", "-"))


def _cpu_info() -> dict[str, Any]:
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model or "unknown",
        "arch": platform.machine(),
        "isa": sorted(f for f in _RELEVANT_FLAGS if f in flags),
        "microarch": microarch(),
        "cores_in_quota": cpu_quota(),
        "logical_cores_host": os.cpu_count(),
    }


def cpu_features(isa: list[str] | None = None) -> dict[str, bool]:
    """What the CPU's instruction set means for precision choices.

    ``int8_dot``: an int8 dot-product instruction (VNNI, AMX, Arm dot-product / i8mm); without it x86 int8
    kernels multiply u8·s8 with saturation, hence reduced-range weights. ``fast_fp16``: fp16 arithmetic
    (AVX512-FP16, AMX-FP16, Arm FP16 vector units); without it fp16 models are cast back to fp32. ``bf16``:
    native bf16 dot products (AVX512-BF16, AMX-BF16, Arm BF16).
    """
    flags = set(local_machine()["cpu"]["isa"] if isa is None else isa)
    return {
        "int8_dot": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}),
        "fast_fp16": bool(flags & {"avx512_fp16", "amx_fp16", "asimdhp"}),
        "bf16": bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}),
    }


def _gpus() -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, mem, driver = (part.strip() for part in line.split(",")[:3])
        gpus.append({"name": name, "memory_mb": float(mem), "driver": driver})
    return gpus


def _versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@functools.lru_cache(maxsize=1)
def local_machine() -> dict[str, Any]:
    """A description of this machine: CPU, memory, GPUs, OS."""
    import psutil

    return {
        "cpu": _cpu_info(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def environment_fingerprint() -> dict[str, Any]:
    """What a measurement depends on besides the model and candidate: machine and library versions."""
    machine = local_machine()
    return {
        "cpu": {k: machine["cpu"][k] for k in ("model", "arch", "isa", "cores_in_quota")},
        "gpus": [g["name"] for g in machine["gpus"]],
        "versions": _versions(),
    }


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
