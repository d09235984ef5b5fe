"""The hardware catalogue: targets with their peak rates, memory, price and power, each citing its source.

The bundled ``catalog.yaml`` is read first, then every ``*.yaml`` in ``$CHIPFIT_HOME/hardware/``, then the
files the user names; a later row replaces an earlier one of the same name. Every row is validated (units,
positive values, a source and a price date), and an invalid file is a clear error naming the row and field.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.errors import SpecError
from chipfit.workspace import default_home

__all__ = ["DTYPES", "KINDS", "Target", "get_target", "load_catalog"]

KINDS = ("cloud-cpu", "cloud-gpu", "edge-cpu", "edge-gpu", "laptop-cpu", "custom")
DTYPES = ("fp32", "fp16", "bf16", "int8")
_BUNDLED = Path(__file__).with_name("catalog.yaml")
_REQUIRED = ("name", "title", "kind", "arch", "cores", "peak_gflops", "mem_bw_gbs", "memory_gb", "usd_per_hour")


@dataclass(frozen=True)
class Target:
    """One hardware target. Rates are dense peaks; ``usd_per_hour`` is on-demand or amortised (see price)."""

    name: str
    title: str
    kind: str
    arch: str
    cores: int
    peak_gflops: Mapping[str, float]
    mem_bw_gbs: float
    memory_gb: float
    usd_per_hour: float
    watts: float
    source: str
    price: Mapping[str, str] = field(default_factory=dict)
    threads: int | None = None
    isa: tuple[str, ...] = ()
    gpu: str | None = None
    notes: str = ""
    tvm: Mapping[str, Any] | None = None
    origin: str = "bundled"

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None

    def peak(self, dtype: str) -> float:
        """GFLOP/s for ``dtype``; a dtype without native arithmetic runs at the fp32 rate."""
        return float(self.peak_gflops.get(dtype, self.peak_gflops["fp32"]))

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["peak_gflops"], out["price"], out["isa"] = dict(self.peak_gflops), dict(self.price), list(self.isa)
        out["tvm"] = dict(self.tvm) if self.tvm else None
        return out


def _positive(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError(f"{where}: '{key}' must be a positive number, got {value!r}. Fix the row in the catalogue.")
    return float(value)


def _parse(row: Any, origin: str, index: int) -> Target:
    where = f"hardware catalogue '{origin}', row {index + 1}"
    if not isinstance(row, dict):
        raise SpecError(f"{where}: expected a mapping of fields, got {type(row).__name__}.")
    where = f"{where} ('{row.get('name', '?')}')"
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}. Each target needs: {', '.join(_REQUIRED)}.")
    if row["kind"] not in KINDS:
        raise SpecError(f"{where}: kind '{row['kind']}' is not one of {', '.join(KINDS)}.")
    peaks = row["peak_gflops"]
    if not isinstance(peaks, dict) or "fp32" not in peaks:
        raise SpecError(f"{where}: peak_gflops needs at least fp32 (GFLOP/s), e.g. {{fp32: 400, int8: 1600}}.")
    unknown = set(peaks) - set(DTYPES)
    if unknown:
        raise SpecError(f"{where}: peak_gflops has unknown dtype {sorted(unknown)}; use {', '.join(DTYPES)}.")
    source = row.get("source")
    if not source or not str(source).startswith(("http://", "https://", "measured:", "user:")):
        raise SpecError(f"{where}: 'source' must cite where the specs come from (a URL, or 'user: <note>').")
    price = row.get("price") or {}
    if not price.get("source") or not price.get("date"):
        raise SpecError(f"{where}: 'price' needs a source and a date, e.g. {{source: https://..., date: 2025-06}}.")
    cores = row["cores"]
    if not isinstance(cores, int) or cores < 1:
        raise SpecError(f"{where}: 'cores' must be a positive integer, got {cores!r}.")
    return Target(
        name=str(row["name"]),
        title=str(row["title"]),
        kind=str(row["kind"]),
        arch=str(row["arch"]),
        cores=cores,
        threads=row.get("threads"),
        peak_gflops={k: _positive(where, f"peak_gflops.{k}", v) for k, v in peaks.items()},
        mem_bw_gbs=_positive(where, "mem_bw_gbs", row["mem_bw_gbs"]),
        memory_gb=_positive(where, "memory_gb", row["memory_gb"]),
        usd_per_hour=_positive(where, "usd_per_hour", row["usd_per_hour"]),
        watts=_positive(where, "watts", row.get("watts")),
        source=str(source),
        price={k: str(v) for k, v in price.items()},
        isa=tuple(row.get("isa") or ()),
        gpu=row.get("gpu"),
        notes=str(row.get("notes") or ""),
        tvm=row.get("tvm"),
        origin=origin,
    )


def _read(path: Path) -> list[Target]:
    from chipfit.spec import read_yaml

    if not path.is_file():
        raise SpecError(f"--catalog: cannot read '{path}': it does not exist. Pass an existing YAML file.")
    doc = read_yaml(path, "--catalog: catalogue file")  # bounded, no aliases: a user's file is untrusted
    rows = doc.get("targets") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise SpecError(f"--catalog: '{path}' needs a top-level 'targets:' list (see the bundled catalog.yaml).")
    origin = "bundled" if path == _BUNDLED else str(path)
    return [_parse(row, origin, i) for i, row in enumerate(rows)]


@functools.lru_cache(maxsize=8)
def _load(paths: tuple[Path, ...]) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for path in paths:
        for target in _read(path):
            out[target.name] = target
    return out


def load_catalog(extra: Iterable[str | os.PathLike[str]] = (), home: Path | None = None) -> dict[str, Target]:
    """Every target by name: bundled, then ``$CHIPFIT_HOME/hardware/*.yaml``, then ``extra`` files."""
    user_dir = (home or default_home()) / "hardware"
    user = sorted(user_dir.glob("*.yaml")) if user_dir.is_dir() else []
    for p in extra:
        if not Path(p).is_file():
            raise SpecError(f"--catalog: '{p}' does not exist. Pass a YAML file with a 'targets:' list.")
    paths = (_BUNDLED, *user, *(Path(p).resolve() for p in extra))
    return dict(_load(paths))


def get_target(name: str, extra: Iterable[str | os.PathLike[str]] = ()) -> Target:
    catalog = load_catalog(extra)
    if name not in catalog:
        raise SpecError(
            f"--target: unknown target '{name}'. Known: {', '.join(sorted(catalog))} "
            "(see `chipfit targets`; add your own with --catalog FILE)."
        )
    return catalog[name]
