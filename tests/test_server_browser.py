"""The team service's dashboard in a real browser: Debian's system Chromium driven by the pinned Playwright for
Python (``executable_path``: no browser download), against a real ``chipfit server start`` process, in one browser
session on the bundled digits model: log in with the team token, see a quota refusal in the page, upload the model
and its data through the form, submit a tiny fit, watch it finish, see the candidate table (sort it) and the
latency/quality plot, download the artifact and run it with ``chipfit.runtime.load``, then compare.

Skipped, with the reason, where Chromium is not on PATH (``make chromium`` installs it) or Playwright is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
WAIT_S = 60.0  # a generous ceiling for the server to answer and the tiny fit to end; verdicts never rest on time
UI_WAIT_MS = 30_000  # a page's answer (an upload is read and checked before the form reports)
TERMINAL = re.compile("done|failed|cancelled|stopped_by_quota")
CHROMIUM = shutil.which("chromium")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="the browser test needs Debian's chromium on PATH: `make chromium` as root, or sudo apt-get install chromium",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CHIPFIT_BACKENDS", None)  # the test suite's faulty plug-ins live in tests/: not the server's business
    return env


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "chipfit", "server", *args], capture_output=True, text=True, env=_env(), check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real server process with one team (quota $1): (base URL, the team's token)."""
    import httpx

    data_dir = tmp_path / "srv"
    token = _cli("team", "create", "vision", "--quota", "1usd", "--data-dir", str(data_dir)).split()[-1]
    port = _free_port()
    cmd = [sys.executable, "-m", "chipfit", "server", "start", "--data-dir", str(data_dir), "--port", str(port)]
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=_env())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/api/usage", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer: " + (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@needs_chromium
def test_dashboard_login_upload_fit_watch_download_and_run(server: tuple[str, str], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the dev extra)")
    from chipfit.runtime import load

    base, token = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(UI_WAIT_MS)  # ceilings for a loaded machine, not verdicts
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # script errors and Content-Security-Policy refusals; the refused requests (401, 402, 404) are expected
            page.on(
                "console", lambda m: errors.append(m.text) if m.type == "error" and "status of" not in m.text else None
            )
            expect = sync_api.expect
            expect.set_options(timeout=UI_WAIT_MS)

            # no session: the dashboard sends you to the login; a wrong token is refused in the page
            page.goto(base + "/")
            expect(page).to_have_url(base + "/login")
            page.fill("#token", token[:-4] + "AAAA")
            page.click("#login-form button")
            expect(page.locator(".login .alert")).to_contain_text("Invalid team token")
            page.fill("#token", token)
            page.click("#login-form button")
            expect(page).to_have_url(base + "/")
            expect(page.locator("#jobs-empty")).to_contain_text("No jobs yet")
            expect(page.locator("#spend")).to_contain_text("of $1.00")

            # a job the quota cannot pay for: the API's 402 message is shown in the form
            page.set_input_files("#model-file", str(DIGITS / "model.onnx"))
            page.set_input_files("#data-file", str(DIGITS / "eval.npz"))
            for backend in ("openvino", "tvm", "torch"):
                page.uncheck(f"input[name=backends][value={backend}]")
            page.fill("input[name=max_p99_ms]", "5")
            page.fill("input[name=time_budget]", "1000h")
            page.click("summary:has-text('Search space')")
            page.fill("input[name=batch_sizes]", "1")
            page.fill("input[name=threads]", "1")
            page.fill("input[name=opt_levels]", "basic")
            page.fill("input[name=passes]", "none")
            page.fill("input[name=measure_time]", "0.2")
            page.click("#submit-job")
            expect(page.locator("#job-form-error")).to_contain_text("Over the team's quota")
            expect(page.locator("#job-form-error")).to_contain_text("left of $1")

            # a tiny fit within the quota: the row appears and follows the job to its end
            page.fill("input[name=time_budget]", "30s")
            page.click("#submit-job")
            row = page.locator("#jobs-table tbody tr").first
            expect(row).to_have_attribute("data-state", re.compile("queued|running|done"))
            expect(row).to_have_attribute("data-state", TERMINAL, timeout=WAIT_S * 1000)
            assert row.get_attribute("data-state") == "done", row.get_attribute("title")
            expect(row.locator(".progress-text")).not_to_have_text("0 / ?")

            # the job page: per-target row, the plot with the feasible region, the candidate table (sortable)
            row.locator("a").click()
            expect(page.locator("#job-state")).to_have_text("done")
            table = page.locator("table.candidates")
            expect(table.locator("tbody tr.winner")).to_have_count(1)
            assert table.locator("tbody tr").count() >= 2
            plot = page.locator("figure.pareto svg")
            expect(plot).to_be_visible()
            expect(plot).to_contain_text("feasible region (p99 ≤ 5 ms)")
            expect(page.locator("#targets-table tbody tr")).to_have_count(1)

            def column(n: int) -> list[str]:  # the sort keys (data-v) of the table's n-th column, top to bottom
                return [c.get_attribute("data-v") or "" for c in table.locator(f"tbody tr td:nth-child({n})").all()]

            variant = table.locator("th", has_text="variant")  # the model as given vs its variants: >= 2 values
            variant.click()
            expect(variant).to_have_attribute("aria-sort", "ascending")
            ascending = column(1)
            assert ascending == sorted(ascending) and len(set(ascending)) >= 2, ascending
            variant.click()
            expect(variant).to_have_attribute("aria-sort", "descending")
            assert column(1) == sorted(ascending, reverse=True)
            table.locator("th", has_text="p50 ms").click()  # numbers compare as numbers; unmeasured last
            p50 = [float(v) for v in column(6) if v]
            assert p50 == sorted(p50) and column(6)[: len(p50)] == [repr(v) for v in p50], column(6)

            # the artifact: downloaded through the button, unzipped, loaded and run once
            with page.expect_download() as download:
                page.click("a#download")
            archive = tmp_path / "artifact.zip"
            download.value.save_as(archive)
            folder = tmp_path / "artifact"
            with zipfile.ZipFile(archive) as z:
                z.extractall(folder)
            model = load(folder)
            try:
                images = np.load(DIGITS / "eval.npz")["image"][:1]
                (logits,) = model.run({"image": images})
            finally:
                model.close()
            assert logits.shape == (1, 10) and np.isfinite(logits).all()

            # compare: pick the finished job, one table
            page.click("header nav >> text=Compare")
            page.check("#compare-form input[name=jobs]")
            page.click("#compare-form button")
            assert page.locator("#compare-table tbody tr").count() >= 1
            expect(page.locator("#compare-table tbody tr.winner")).to_have_count(1)

            # an unknown job id (or another team's) is a 404 page that says so
            missing = page.goto(base + "/jobs/j0000000000000000")
            assert missing is not None and missing.status == 404
            expect(page.locator("main")).to_contain_text("No job 'j0000000000000000'")
            assert not errors, errors
        finally:
            sync_api.expect.set_options(timeout=5_000)  # Playwright's default, for whatever runs next
            browser.close()


def test_a_farm_fit_is_laid_out_per_target_with_its_plot_and_comparison(
    mlp: Path, mlp_npz: Path, fast_settings: Any, small_space: Any
) -> None:
    """The job page's views on a farm fit's result shape ({target: per-target result}), built from a real fit's JSON:
    one section per target with its winner flagged, the per-target comparison labelled measured or declared, the
    plot's feasible region from a bound beyond the data, and one compare row per variant and target."""
    import json

    import chipfit
    from chipfit.server.dashboard_plots import pareto_svg
    from chipfit.server.dashboard_views import compare_rows, sections, target_rows

    result = chipfit.fit(mlp, mlp_npz, space=small_space, settings=fast_settings, max_p99_ms=1000, progress=False)
    local = json.loads(json.dumps(result.to_dict(), default=str))
    farm = {
        "farm": "192.0.2.2:6379",
        "targets": {"aws-c5.xlarge": {**local, "how": "declared"}, "aws-c7g.xlarge": {**local, "how": "measured"}},
        "spec": local["spec"],
    }
    secs = sections("fit", farm)
    assert [s["name"] for s in secs] == ["aws-c5.xlarge", "aws-c7g.xlarge"]
    assert [s["how"] for s in secs] == ["declared", "measured"]
    for s in secs:
        assert sum(r["winner"] for r in s["rows"]) == 1
        assert len(s["rows"]) == len([c for c in local["candidates"] if c["status"] != "skipped"])
        svg = pareto_svg(s)
        assert svg.startswith("<svg") and "feasible region (p99 ≤ 1000 ms)" in svg
    rows = target_rows("fit", farm)
    assert [(r["target"], r["source"], r["p50_ms"]) for r in rows] == [
        ("aws-c5.xlarge", "declared", local["winner"]["p50_ms"]),
        ("aws-c7g.xlarge", "measured", local["winner"]["p50_ms"]),
    ]
    compared = compare_rows([{"id": "j1", "kind": "fit", "model_name": "mlp.onnx", "result": farm}])
    assert {r["target"] for r in compared} == {"aws-c5.xlarge", "aws-c7g.xlarge"}
    assert sum(r["winner"] for r in compared) == 2  # each target's winner, once
