"""Screenshots of the team service's dashboard for README.md, after a real run: starts `chipfit server start` on a
fresh data dir, creates a team, and drives the dashboard in Debian's system Chromium with Playwright (no browser
download): log in, upload the bundled digits model and data through the form, run a fit and a recommendation,
then shoot the jobs page (the recommendation still running), the fit's job page and the compare page.

    .venv/bin/python tools/dashboard_screenshots.py [--img docs/img] [--fit-budget 30s]

Writes dashboard-jobs.png, dashboard-job.png and dashboard-compare.png, each cropped to the page and kept under
300 KB by reducing colours (Pillow comes with matplotlib).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
WIDTH = 1280
LIMIT = 300_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shrink(path: Path) -> str:
    from PIL import Image, ImageChops

    im = Image.open(path).convert("RGB")
    bg = Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))
    box = ImageChops.difference(im, bg).getbbox()
    if box:
        im = im.crop((0, 0, im.width, min(im.height, box[3] + 24)))
    for colours in (256, 128, 64, 32):
        im.quantize(colours, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= LIMIT:
            break
    return f"{im.width}x{im.height}, {path.stat().st_size // 1024} KB"


def _fill_job(p: Any, budget: str, kind: str) -> None:
    """Fill the new-job form for a ``kind`` job on the digits model (ONNX Runtime only) and submit it."""
    p.set_input_files("#model-file", str(DIGITS / "model.onnx"))
    p.set_input_files("#data-file", str(DIGITS / "eval.npz"))
    p.check(f"input[name=kind][value={kind}]")
    for backend in ("openvino", "tvm", "torch"):
        box = p.locator(f"input[name=backends][value={backend}]")
        if box.is_enabled():
            box.uncheck()
    if kind == "recommend":
        p.select_option("#targets", ["aws-c7i.xlarge", "aws-c7g.xlarge", "raspberry-pi-5", "aws-g5.xlarge"])
    p.fill("input[name=max_p99_ms]", "5")
    p.fill("input[name=max_accuracy_drop]", "0.01" if kind == "fit" else "")
    p.fill("input[name=time_budget]", budget)
    p.click("#submit-job")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--fit-budget", default="30s")
    ap.add_argument("--recommend-budget", default="20s")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("dashboard_screenshots: chromium is not installed: `make chromium` as root", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    args.img.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="chipfit-dashboard-"))
    env = {**os.environ, "CHIPFIT_HOME": str(tmp / "home")}
    env.pop("CHIPFIT_BACKENDS", None)
    cli = [sys.executable, "-m", "chipfit", "server"]
    out = subprocess.run(
        [*cli, "team", "create", "vision", "--quota", "5usd", "--data-dir", str(tmp / "srv")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    token = out.stdout.split()[-1]
    port = _free_port()
    log = open(tmp / "server.log", "ab")  # noqa: SIM115 (closed at the end)
    server = subprocess.Popen([*cli, "start", "--data-dir", str(tmp / "srv"), "--port", str(port)], stdout=log,
                              stderr=log, env=env)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    ok = False
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            for _ in range(300):
                try:
                    page.goto(base + "/login")
                    break
                except Exception:  # the server is still starting
                    time.sleep(0.2)
            page.fill("#token", token)
            page.click("#login-form button")
            expect(page).to_have_url(base + "/")

            _fill_job(page, args.fit_budget, "fit")
            fit_row = page.locator("#jobs-table tbody tr").first
            expect(fit_row).to_have_attribute("data-state", "done", timeout=600_000)
            fit_id = fit_row.get_attribute("data-job")
            page.reload()
            _fill_job(page, args.recommend_budget, "recommend")
            rec_row = page.locator("#jobs-table tbody tr").first
            expect(rec_row).to_have_attribute("data-state", "running", timeout=120_000)
            page.wait_for_timeout(2000)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=args.img / "dashboard-jobs.png", full_page=True)
            print("dashboard-jobs.png", _shrink(args.img / "dashboard-jobs.png"))
            expect(rec_row).to_have_attribute("data-state", "done", timeout=300_000)
            rec_id = rec_row.get_attribute("data-job")

            page.goto(f"{base}/jobs/{fit_id}")
            page.screenshot(path=args.img / "dashboard-job.png", full_page=True)
            print("dashboard-job.png", _shrink(args.img / "dashboard-job.png"))

            page.goto(f"{base}/compare?jobs={fit_id}&jobs={rec_id}")
            page.screenshot(path=args.img / "dashboard-compare.png", full_page=True)
            print("dashboard-compare.png", _shrink(args.img / "dashboard-compare.png"))
            browser.close()
        ok = True
    finally:
        server.terminate()
        server.wait(10)
        log.close()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"dashboard_screenshots: failed; the server's data dir and log are kept in {tmp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
