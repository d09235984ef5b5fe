"""The HTML report (issue 15, item 7): skipped candidates are one collapsed summary (reason × count), not rows;
failures stay red with their failure class; plots label ticks with plain decimals and fit their axes to the data;
explore.html keeps numbers whole and drops the p99 column when no bound was set."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chipfit.candidate import Candidate
from chipfit.measure.measurement import Measurement
from chipfit.model import load_model
from chipfit.report import render_report
from chipfit.report.plots import plain_number
from chipfit.result import FitResult
from chipfit.search.select import CandidateResult
from chipfit.spec import Spec

pytest.importorskip("matplotlib")

MODEL = Path(__file__).parents[1] / "examples" / "digits" / "model.onnx"
ENV = {
    "cpu": {"model": "Test CPU", "cores_in_quota": 2, "isa": ["avx2"]},
    "versions": {"onnxruntime": "1.0"},
}
SKIP_BATCH = "batch sweep only for the 3 fastest feasible configurations at batch 1"
SKIP_OPTS = "runtime options swept only for the 3 fastest feasible variants"


def _ok(i: int, batch: int = 1, threads: int | None = None) -> CandidateResult:
    opts = {"intra_op_num_threads": threads} if threads else {}
    c = Candidate("onnxruntime", options=opts, batch=batch, reference=i == 0 and batch == 1 and not threads)
    p50 = 0.0159 * (1 + i * 0.4) * batch**0.6
    m = {
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "p99_ci_ms": [p50 * 1.9, p50 * 2.1],
        "samples": 5000,
        "throughput": batch / p50 * 1000,
        "peak_memory_mb": 3.8,
        "size_mb": 0.16,
        "accuracy": 0.98148,  # every point at the same accuracy: the axis must not run to 1.02
    }
    return CandidateResult(c, Measurement("ok", metrics=m))


def _result(n_skipped: int = 120, with_failures: bool = True) -> FitResult:
    ok = [_ok(i, threads=i or None) for i in range(6)] + [_ok(0, batch=b) for b in (2, 4, 8, 16, 32)]
    skipped = [
        CandidateResult(
            Candidate("openvino", options={"threads": k}, batch=2 + k),
            Measurement("skipped", error=SKIP_BATCH if k % 4 else SKIP_OPTS),
            "skipped",
        )
        for k in range(n_skipped)
    ]
    failed = (
        [
            CandidateResult(Candidate("tvm", batch=1), Measurement("timeout", error="worker timed out after 60 s")),
            CandidateResult(Candidate("tvm", batch=2), Measurement("failed", error="ValueError: bad graph")),
        ]
        if with_failures
        else []
    )
    return FitResult(
        winner=ok[0],
        pareto=[ok[0]],
        candidates=ok + skipped + failed,
        near_misses=[],
        reference=ok[0],
        spec=Spec(max_p99_ms=5),
        model=load_model(MODEL),
        environment=ENV,
        elapsed_s=12.0,
    )


def _main_table(page: str) -> str:
    start = page.index("<table", page.index("<h2>Measured candidates"))
    return page[start : page.index("</table>", start)]


def test_skipped_candidates_are_a_collapsed_summary_not_rows() -> None:
    page = render_report(_result())
    table = _main_table(page)
    assert "openvino" not in table  # every openvino candidate was skipped: none is a row
    assert table.count("<tr") == 1 + 11  # header + the measured ones
    details = page[page.index('<details class="skipped">') : page.index("</details>")]
    assert "120 candidates not measured, for 2 reasons" in details
    rows = re.findall(r'<tr><td class="l">([^<]+)</td><td class="n">(\d+)</td></tr>', details)
    assert rows == [(SKIP_BATCH, "90"), (SKIP_OPTS, "30")]  # reason × count, most frequent first
    assert page.count(SKIP_BATCH) == 1  # listed once, not per candidate
    assert "skipped" not in table


def test_failures_stay_red_with_their_class() -> None:
    page = render_report(_result())
    failed = page[page.index('<h2 id="failed">') :]
    failed = failed[: failed.index("</table>")]
    assert '<td class="l bad failure-timeout">timeout</td>' in failed
    assert '<td class="l bad failure-failed">failed</td>' in failed
    assert "ValueError: bad graph" in failed
    table = _main_table(page)
    assert ">failed<" not in table and "tvm" not in table  # not repeated among the measured rows
    skipped_part = page[page.index('<details class="skipped">') : page.index("</details>")]
    assert "bad" not in skipped_part  # skipped is not a failure: not red


def test_page_shrinks_with_skipped_rows_collapsed() -> None:
    """The page grows by the failures and the measured rows, not by the skipped candidates."""
    few = render_report(_result(n_skipped=4))
    many = render_report(_result(n_skipped=400))
    assert len(many) - len(few) < 200  # 396 more skipped candidates: the counts change, no rows are added
    assert many.count("<tr") == few.count("<tr")


def _tick_labels(svg: str) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg) if t.strip()]


def test_plots_use_plain_tick_labels_and_fitted_axes() -> None:
    page = render_report(_result())
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2  # the scatter and the per-batch plot
    for svg in svgs:
        labels = _tick_labels(svg)
        assert labels, "the SVG keeps its text as text"
        joined = " ".join(labels)
        for form in ("10^", "mathdefault", "⁰", "⁻", "²", "e-0", "e+0", "×10"):
            assert form not in joined, (form, labels)
        assert "<tspan" not in svg or "baseline-shift" not in svg  # no superscript exponents
    scatter_ticks = [float(t) for t in _tick_labels(svgs[0]) if re.fullmatch(r"-?\d+(\.\d+)?", t)]
    accuracy_ticks = [t for t in scatter_ticks if 0.9 < t < 1.1]
    assert accuracy_ticks and max(accuracy_ticks) < 0.99  # every point at 0.9815: the axis stops well short of 1
    batch_ticks = _tick_labels(svgs[1])
    assert {"1", "2", "4", "8", "16", "32"} <= set(batch_ticks)  # one plain tick per measured batch size


def test_plots_are_sized_to_read() -> None:
    svg = re.findall(r"<svg.*?</svg>", render_report(_result()), flags=re.S)[0]
    width = float(re.search(r'width="([\d.]+)pt"', svg).group(1))  # type: ignore[union-attr]
    assert width >= 500  # 8 in is 576 pt; the old plots were 7.5 × 4.2 at smaller type


@pytest.mark.parametrize(
    ("value", "text"), [(0.0159, "0.0159"), (2.0, "2"), (1000.0, "1000"), (1e-5, "0.00001"), (0.98, "0.98")]
)
def test_plain_number(value: float, text: str) -> None:
    assert plain_number(value) == text


def _explore_result(tmp_path: Path, bound: float | None) -> Any:
    hist = [
        {
            "trial": i,
            "state": "complete" if i % 2 else "pruned",
            "value": 0.9 + i / 100,
            "curve": [(1, 0.5), (3, 0.9 + i / 100)],
            "charged_s": 1.5,
            "charged_usd": 0.0001234,
            "threads": 1,
            "params": {"lr": 0.00123456, "width": 64, "dropout": 0.125},
            "reason": None,
            "hardware": {"p99_ms": 0.2 * (i + 1), "source": "predicted", "detail": "d"} if bound else None,
        }
        for i in range(4)
    ]
    summary = {
        "spent": 0.001,
        "budget": 0.005,
        "unit": "cpu-h",
        "spent_usd": 0.0002,
        "stopped_by": "budget",
        "trials": {"complete": 2, "pruned": 2},
        "bound": {"max_p99_ms": bound, "target": "local"} if bound else None,
        "artifact": None,
    }
    space = SimpleNamespace(path=tmp_path / "space.yaml", metric="accuracy", rungs=[1, 3], reduction_factor=3)
    return SimpleNamespace(
        to_dict=lambda: summary,
        space=space,
        winner={"trial": 3, "value": 0.93, "params": hist[3]["params"]},
        history=hist,
    )


def test_explore_report_keeps_numbers_whole_and_drops_an_empty_p99_column(tmp_path: Path) -> None:
    from chipfit.report.explore import write_explore_report

    page = (write_explore_report(_explore_result(tmp_path, None), tmp_path / "a") / "explore.html").read_text()
    trials = page[page.index("<h2>Trials") :]
    assert "p99 ms" not in trials  # no bound, no latency: no empty column
    assert "white-space: nowrap" in page
    assert '<td class="l params">' in trials
    assert '<span class="n">lr=0.001235</span>' in trials  # each parameter is one unbreakable item
    assert page.count("<h2>") == page.count("<h2")  # headings share report.html's style (no inline variants)
    with_bound = (write_explore_report(_explore_result(tmp_path, 1.0), tmp_path / "b") / "explore.html").read_text()
    assert "p99 ms" in with_bound[with_bound.index("<h2>Trials") :]
