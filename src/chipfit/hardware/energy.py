"""Energy counters where the platform exposes them: RAPL package domains through Linux powercap (Intel, and
AMD since Linux 5.8) and NVML's total-energy counter on NVIDIA GPUs. ``EnergyMeter.read()`` gives joules
since an arbitrary origin; the difference over a timing loop divided by the inferences run is a *measured*
energy per inference. RAPL counts the whole package (other processes and idle power included), which the
method string says. Without counters, cost.py models energy from the catalogue's power instead.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EnergyMeter"]

_POWERCAP = Path("/sys/class/powercap")


class EnergyMeter:
    """Sum of the readable package energy counters (and GPU counters), with wrap-around handled."""

    def __init__(self, root: Path = _POWERCAP) -> None:
        self._files: list[tuple[Path, float]] = []
        for dom in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
            if dom.name.count(":") != 1:  # package domains only (intel-rapl:0), not sub-domains (intel-rapl:0:0)
                continue
            energy, wrap = dom / "energy_uj", dom / "max_energy_range_uj"
            try:
                int(energy.read_text())
                self._files.append((energy, float(wrap.read_text()) if wrap.exists() else 2.0**32))
            except (OSError, ValueError):  # unreadable (needs root on many systems): not used
                continue
        self._nvml = _nvml_handles()
        self._last: list[float] = []
        self._total = 0.0

    @property
    def method(self) -> str | None:
        parts = []
        if self._files:
            parts.append(f"RAPL ({len(self._files)} package domain(s); whole package incl. other load)")
        if self._nvml:
            parts.append(f"NVML ({len(self._nvml)} GPU(s))")
        return " + ".join(parts) or None

    @property
    def available(self) -> bool:
        return bool(self._files or self._nvml)

    def _raw(self) -> list[float]:
        vals = [float(f.read_text()) / 1e6 for f, _ in self._files]
        if self._nvml:
            import pynvml

            vals += [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 for h in self._nvml]
        return vals

    def read(self) -> float:
        """Joules since the meter was made (monotonic across counter wrap-around)."""
        now = self._raw()
        if self._last:
            wraps = [w / 1e6 for _, w in self._files] + [float("inf")] * len(self._nvml)
            for old, new, wrap in zip(self._last, now, wraps, strict=True):
                self._total += new - old if new >= old else new + wrap - old
        self._last = now
        return self._total


def _nvml_handles() -> list[object]:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        for h in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)  # Volta or newer; raises otherwise
        return handles
    except Exception:  # no pynvml, no driver, no GPU, or a GPU without the counter
        return []
