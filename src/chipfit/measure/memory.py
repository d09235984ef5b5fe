"""Peak memory of the worker attributable to the model: the RSS high-water mark after loading and running
it, minus the resident size just before. Linux /proc; elsewhere psutil's RSS (no peak) is the fallback."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MemoryProbe"]

_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryProbe:
    """``start()`` before the model is loaded, ``peak_mb()`` after it has run."""

    def __init__(self) -> None:
        self.baseline_kb = 0
        self.method = "VmHWM"

    def start(self) -> None:
        try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "VmHWM (not reset)"
        rss = _status_kb("VmRSS")
        if rss is None:
            import psutil

            self.method = "psutil rss"
            rss = psutil.Process().memory_info().rss // 1024
        self.baseline_kb = rss

    def peak_mb(self) -> float:
        peak = _status_kb("VmHWM")
        if peak is None:
            import psutil

            peak = psutil.Process().memory_info().rss // 1024
        return max(0.0, (peak - self.baseline_kb) / 1024)
