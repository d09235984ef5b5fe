"""What a user sees of a fit: the candidates table at 80, 120 and 200 columns (every number whole), and the
progress of ``chipfit.fit`` from Python (a function per finished candidate, one line each on a non-terminal
stderr, nothing with ``progress=False``)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

import chipfit
from chipfit.cli.fit_table import fmt, p99_text
from chipfit.cli.output import print_fit_result
from chipfit.measure.measurement import Measurement
from chipfit.result import FitResult
from chipfit.search.select import CandidateResult, Violation
from chipfit.search.space import SpaceOptions

SPACE = SpaceOptions(
    backends=("onnxruntime",),
    batch_sizes=(1, 8),
    threads=(1,),
    opt_levels=("none", "all"),
    execution_modes=("sequential",),
    passes=(),
)
NUMERIC = ("batch", "p50 ms", "p99 ms", "n", "thr/s", "$/1M", "peak MB", "accuracy")


@pytest.fixture
def fitted(mlp: Path, mlp_npz: Path, fast_settings) -> FitResult:  # type: ignore[no-untyped-def]
    """A real fit, with two rows added that stress the widths: a measured one with the widest values a fit
    prints (7-digit throughput, a tiny cost, a long pass chain, two violations) and a failed one."""
    result = chipfit.fit(mlp, mlp_npz, space=SPACE, settings=fast_settings, progress=False, max_p99_ms=1000)
    base = next(r for r in result.candidates if r.measurement.ok and not r.candidate.reference)
    wide_metrics = {
        **base.measurement.metrics,
        "p50_ms": 0.000123456,
        "p99_ms": 123.456,
        "samples": 123456,
        "throughput": 1234567.0,
        "usd_per_1m": 3.1e-07,
        "peak_memory_mb": 12345.6,
        "accuracy": 0.87654321,
    }
    passes = (
        {"name": "int8_static", "params": {"calibrate": "percentile", "per_channel": True}},
        {"name": "ort_graph_opt", "params": {"level": "extended"}},
    )
    wide = CandidateResult(
        replace(base.candidate, passes=passes, batch=256),
        Measurement("ok", metrics=wide_metrics),
        "measured",
        violations=[
            Violation("max_p99_ms", 100.0, 123.456, 23.456, 0.23),
            Violation("max_memory_mb", 100.0, 12345.6, 12245.6, 122.5),
        ],
    )
    failed = CandidateResult(
        replace(base.candidate, batch=64), Measurement("timeout", error="killed after 60 s"), "measured"
    )
    result.candidates += [wide, failed]
    return result


def _cells(r: CandidateResult) -> dict[str, str]:
    return {
        "batch": str(r.candidate.batch),
        "p50 ms": fmt(r.metric("p50_ms")),
        "p99 ms": p99_text(r),
        "n": fmt(r.metric("samples")),
        "thr/s": fmt(r.metric("throughput"), 4),
        "$/1M": fmt(r.metric("usd_per_1m")),
        "peak MB": fmt(r.metric("peak_memory_mb")),
        "accuracy": fmt(r.quality(), 4),
    }


@pytest.mark.parametrize("width", [80, 120, 200])
def test_every_number_in_the_table_is_whole_at_any_width(fitted: FitResult, width: int) -> None:
    console = Console(record=True, width=width, color_system=None)
    print_fit_result(console, fitted)
    text = console.export_text()
    lines = text.splitlines()
    end = next(i for i, ln in enumerate(lines) if re.match(r"(\d+ skipped:|not shown at|p99\* =|timeout |◆ =)", ln))
    table = "\n".join(lines[:end])
    assert all(len(line) <= width for line in table.splitlines()), "a table line is wider than the terminal"
    assert "…" not in table  # nothing cut
    hidden_note = re.search(r"not shown at this width: ([^(]+) \(", text)
    hidden = {h.strip() for h in hidden_note.group(1).split(",")} if hidden_note else set()
    assert hidden <= {"n", "$/1M", "peak MB"}
    if width >= 120:
        assert not hidden, f"at {width} columns every column is shown"
    shown = [r for r in fitted.candidates if r.source != "skipped"]
    for r in shown:
        for col, value in _cells(r).items():
            if col in hidden or value == "–" or (col == "batch" and width < 120):
                continue
            # whole: not part of a longer number, not folded across lines
            assert re.search(rf"(?<![\d.e]){re.escape(value)}(?![\d.e])", table), f"{col} {value!r} at {width}"
    wide = {"thr/s": "1234567", "$/1M": "3.1e-7", "p50 ms": "0.000123", "n": "123456", "peak MB": "12346"}
    for col, value in wide.items():
        assert col in hidden or value in table, (value, width)
    assert "timeout" in table and re.search(r"p99,\s+memory", table)  # the bounds it missed, short
    if width < 120:  # the batch size joins the candidate's options
        assert re.search(r"·\s+b256", table)


def test_fit_from_python_reports_each_finished_candidate(
    mlp: Path, mlp_npz: Path, fast_settings, small_space, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    seen: list[CandidateResult] = []
    result = chipfit.fit(mlp, mlp_npz, space=small_space, settings=fast_settings, progress=seen.append)
    finished = [r for r in result.candidates if r.source != "skipped"]
    assert {r.candidate.id for r in seen} == {r.candidate.id for r in finished} and len(seen) == len(finished) >= 3
    assert all(isinstance(r, CandidateResult) and r.measurement.status for r in seen)
    assert "[1/" not in capsys.readouterr().err  # a function given: no display besides it

    # the default on a stderr that is not a terminal (pytest's capture): one line per finished candidate
    again = chipfit.fit(mlp, mlp_npz, space=small_space, settings=replace(fast_settings, fresh=True))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if re.match(r"\[\d+/\d+\] ", ln)]
    done = [r for r in again.candidates if r.source != "skipped"]
    assert len(lines) == len(done)
    assert all(re.search(r": ok, p50 [\d.e-]+ ms, accuracy [\d.]+ \(measured in [\d.]+s\)$", ln) for ln in lines)
    assert any(r.candidate.label() in lines[0] for r in done)

    chipfit.fit(mlp, mlp_npz, space=small_space, settings=fast_settings, progress=False)
    assert not re.search(r"^\[\d+/\d+\] ", capsys.readouterr().err, re.M)
