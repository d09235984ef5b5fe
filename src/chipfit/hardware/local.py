"""This machine as a catalogue target: matched to the catalogue entry it most resembles, with its own peak
rates measured (``microbench``) and its price and power scaled from the match to the cores in the CPU quota.

Matching uses what can be read here: the architecture, the ISA flags chipfit cares about and the CPU's
microarchitecture (archspec's reading, in LLVM's spelling: ``znver3``, ``sapphirerapids``, ...); a GPU is
matched by name. When nothing matches closely the machine is a ``custom`` target whose price and power are
estimated from the nearest CPU entry, and ``match["how"]`` says so: an estimate is never shown as a listed price.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from chipfit.hardware.catalog import Target, load_catalog
from chipfit.hardware.cross import host_arch
from chipfit.hardware.detect import cpu_quota, local_machine, microarch

__all__ = ["local_target", "match_local"]

_WATTS_PER_CORE = 4.0  # a server vCPU's share of socket power under load, when nothing better is known
_IMPORTANT = {
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "asimdhp",
    "sve",
    "i8mm",
    "bf16",
}  # a server core's share of socket power under load, when nothing better is known


def match_local(catalog: dict[str, Target] | None = None) -> tuple[Target | None, dict[str, Any]]:
    """The catalogue CPU entry closest to this machine and how it was chosen."""
    catalog = catalog or load_catalog()
    machine = local_machine()
    isa = set(machine["cpu"]["isa"])
    gpus = [g["name"] for g in machine["gpus"]]
    if gpus:
        for t in catalog.values():
            if t.gpu and any(t.gpu.split("-")[0].lower() in g.lower() for g in gpus):
                return t, {"how": f"GPU '{gpus[0]}' matches {t.name}", "exact": True}
    llvm = microarch()
    best: tuple[tuple[int, int], Target] | None = None
    for t in catalog.values():
        if t.arch != host_arch() or t.gpu or t.kind not in ("cloud-cpu", "laptop-cpu", "edge-cpu"):
            continue
        # the ISA flags that matter for speed decide; the microarchitecture's name breaks ties (a virtual CPU
        # that hides one flag, e.g. waitpkg, is read by archspec as an older generation)
        same_name = int(bool(llvm and t.tvm and t.tvm.get("mcpu") == llvm))
        score = (-len(_IMPORTANT & (isa ^ set(t.isa))), same_name)
        if best is None or score > best[0]:
            best = (score, t)
    if best is None:
        return None, {"how": f"no {host_arch()} CPU in the catalogue", "exact": False}
    t = best[1]
    exact = bool(llvm and t.tvm and t.tvm.get("mcpu") == llvm) and not _IMPORTANT & (isa ^ set(t.isa))
    how = f"CPU '{llvm or machine['cpu']['model']}' with ISA {sorted(isa)} " + (
        f"is the CPU of {t.name}" if exact else f"resembles {t.name} most (price and power estimated from it)"
    )
    return t, {"how": how, "exact": exact}


@functools.lru_cache(maxsize=1)
def local_target(measure: bool = True) -> tuple[Target, dict[str, Any]]:
    """This machine as a ``Target`` (name ``local``): measured fp32 peak and memory bandwidth, cores in the
    quota, price and power scaled per core from the matched entry."""
    machine = local_machine()
    cores = cpu_quota()
    match, info = match_local()
    rates: dict[str, Any] = {}
    if measure:
        from chipfit.hardware.microbench import peak_rates

        rates = peak_rates()
    scale = cores / (match.threads or match.cores) if match else 1.0  # the quota counts logical CPUs
    fp32 = float(rates.get("fp32_gflops") or (match.peak("fp32") * scale if match else 50.0 * cores))
    peaks = {"fp32": fp32}
    if match:  # other dtypes keep the matched entry's ratio to fp32
        peaks |= {d: fp32 * v / match.peak("fp32") for d, v in match.peak_gflops.items() if d != "fp32"}
    price = match.usd_per_hour * scale if match else 0.05 * cores
    watts = match.watts * scale if match else _WATTS_PER_CORE * cores
    base = match or next(iter(load_catalog().values()))
    target = replace(
        base,
        name="local",
        title=f"this machine: {machine['cpu']['model']}, {cores} cores in the CPU quota",
        kind=base.kind if match else "custom",
        arch=host_arch(),
        cores=cores,
        threads=cores,
        isa=tuple(machine["cpu"]["isa"]),
        peak_gflops=peaks,
        mem_bw_gbs=float(rates.get("mem_gbs") or (match.mem_bw_gbs * scale if match else 10.0)),
        memory_gb=float(machine["memory_gb"]),
        usd_per_hour=price,
        watts=watts,
        source="measured: chipfit.hardware.microbench" if rates else base.source,
        price={
            "source": base.price.get("source", "") if match else "estimate",
            "date": base.price.get("date", "") if match else "",
            "basis": f"{match.name} ${match.usd_per_hour:g}/h × {cores}/{match.threads or match.cores} vCPUs"
            if match
            else "no catalogue match: $0.05 per vCPU-hour assumed",
        },
        gpu=None,
        origin="local",
    )
    return target, {**info, "match": match.name if match else None, "rates": rates}
