"""The team service (issue 18) on loopback: a real `chipfit server start` process, a team made with the service,
the bundled digits model and eval set.

- time from upload to first measured candidate: from the start of the model upload (POST /api/models), through
  the data upload and the job's submission, to the first `candidate` event on the job's event stream (the
  reference, measured with fit's default timing); the job is then cancelled. Each repetition measures anew
  (a slightly different time cap per repetition: the store's key differs, nothing is reused). On a server idle
  for IDLE_S seconds (its next job's process has done its imports), and once right after the server started.
- API latency under 50 concurrent job-status polls of GET /api/jobs/ID of a finished fit (its full result JSON):
  wrk with 50 connections in a closed loop (each sends again as soon as answered: the server saturated), and
  50 clients polling once a second each (a dashboard's live job list); with the server idle and while a fit
  runs on the server's own worker.
- the server's overhead on a fit: the same small fit through the server (POST /api/jobs to its end event) and
  from the CLI (`chipfit fit --json`, launch to exit), interleaved round by round, each round measuring anew on
  both sides, IDLE_S seconds between any two fits; per round the ratio, and their median.

    python benchmarks/server_rows.py [--rounds 5] [--append BENCHMARKS.md]     (also `run.py --only server`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
HEADER = "## Team service: upload to first candidate, status-poll latency, overhead on a fit (issue 18)"
SMALL_SPACE = {"batch_sizes": [1], "threads": [1], "opt_levels": ["none", "all"], "execution_modes": ["sequential"]}
POLLERS = 50
PACED_S = 10.0
IDLE_S = 15.0  # an idle server's next job process is ready well within this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`chipfit server start` in a subprocess, with one team."""

    def __init__(self, data_dir: Path) -> None:
        from chipfit.server.config import ServerConfig
        from chipfit.server.service import ServerService

        service = ServerService(ServerConfig(data_dir, run_worker=False))
        _, self.token = service.create_team("bench")
        service.close()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "chipfit",
            "server",
            "start",
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.port),
        ]
        with open(data_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        import httpx

        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=120)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.client.get("/api/usage").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not start: {(data_dir / 'server.log').read_text()[-2000:]}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def upload(self) -> tuple[str, str]:
        with open(DIGITS / "model.onnx", "rb") as f:
            model = self.client.post("/api/models", files={"file": ("model.onnx", f)}).json()["id"]
        with open(DIGITS / "eval.npz", "rb") as f:
            data = self.client.post(f"/api/models/{model}/data", files={"file": ("eval.npz", f)}).json()["id"]
        return model, data

    def submit(self, body: dict[str, Any]) -> str:
        r = self.client.post("/api/jobs", json=body)
        r.raise_for_status()
        return str(r.json()["id"])

    def first_event(self, job: str, kind: str) -> dict[str, Any]:
        with self.client.stream("GET", f"/api/jobs/{job}/events") as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in (kind, "end"):
                    return {"event": event, **json.loads(line[6:])}
        raise RuntimeError(f"job {job}: the event stream ended without '{kind}'")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _spec() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((DIGITS / "chipfit.yaml").read_text()))


def first_candidate(server: Server, reps: int, idle_s: float) -> list[dict[str, float]]:
    """Upload → data → submit → first candidate event, ``reps`` times (fit's default space and timing), each after
    ``idle_s`` seconds of an idle server (its next job's process has imported by then; 0: right after the last)."""
    out = []
    for i in range(reps):
        time.sleep(idle_s)
        t0 = time.perf_counter()
        model, data = server.upload()
        t_up = time.perf_counter()
        body = {"model": model, "data": data, "spec": _spec(), "measure": {"measure_time": 2.0 + 0.001 * i + idle_s}}
        job = server.submit(body)
        t_sub = time.perf_counter()
        event = server.first_event(job, "candidate")
        t_first = time.perf_counter()
        server.client.delete(f"/api/jobs/{job}")
        assert event["event"] == "candidate", event
        out.append({"upload_s": t_up - t0, "submit_s": t_sub - t_up, "total_s": t_first - t0})
        _wait_idle(server)
    return out


def _wait_idle(server: Server) -> None:
    while any(j["state"] in ("queued", "running") for j in server.client.get("/api/jobs").json()):
        time.sleep(0.1)


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    assert m, text
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def wrk_polls(server: Server, job: str, seconds: int = 5) -> dict[str, float]:
    """wrk, closed loop: POLLERS connections each sending GET /api/jobs/ID as soon as the last one answered."""
    cmd = ["wrk", "-t2", f"-c{POLLERS}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {server.token}"]
    out = subprocess.run([*cmd, f"{server.url}/api/jobs/{job}"], capture_output=True, text=True, check=True).stdout
    bad = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return {
        "n": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "bad": float(bad),
    }


async def _paced(url: str, headers: dict[str, str], job: str, seconds: float) -> list[float]:
    """POLLERS clients, each polling once a second (a dashboard's live job list), started out of phase."""
    import httpx

    times: list[float] = []
    limits = httpx.Limits(max_connections=POLLERS, max_keepalive_connections=POLLERS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def poller(k: int) -> None:
            await asyncio.sleep(k / POLLERS)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await client.get(f"/api/jobs/{job}")
                times.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))

        await asyncio.gather(*(poller(k) for k in range(POLLERS)))
    return times


def poll_latency(server: Server, job: str, busy_body: dict[str, Any] | None) -> dict[str, Any]:
    """wrk's closed loop and the paced pollers, with the server idle or (``busy_body``) while it runs a fit."""
    busy = server.submit(busy_body) if busy_body else None
    if busy:
        server.first_event(busy, "candidate")  # the fit is measuring now
    closed = wrk_polls(server, job)
    paced = np.asarray(asyncio.run(_paced(server.url, server.headers, job, PACED_S)))
    state = server.client.get(f"/api/jobs/{busy}").json()["state"] if busy else "idle"
    if busy:
        server.client.delete(f"/api/jobs/{busy}")
        _wait_idle(server)
    return {
        "wrk": closed,
        "paced": {"n": len(paced), "p50": float(np.percentile(paced, 50)), "p99": float(np.percentile(paced, 99))},
        "state": state,
    }


def _fit_body(model: str, data: str, measure_time: float) -> dict[str, Any]:
    return {
        "model": model,
        "data": data,
        "spec": {"max_accuracy_drop": 0.01, "objective": "latency"},
        "backends": ["onnxruntime"],
        "space": {**SMALL_SPACE, "passes": []},
        "measure": {"measure_time": measure_time, "predict": False},
    }


def _cli_fit(home: Path, measure_time: float, out: Path) -> tuple[float, float]:
    cmd = [
        sys.executable, "-m", "chipfit", "fit", str(DIGITS / "model.onnx"), "--data", str(DIGITS / "eval.npz"),
        "--max-accuracy-drop", "0.01", "--objective", "latency", "--backends", "onnxruntime", "--batch-sizes", "1",
        "--threads", "1", "--opt-levels", "none,all", "--execution-modes", "sequential", "--passes", "none",
        "--measure-time", str(measure_time), "--no-predict", "--json", "--quiet", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "CHIPFIT_HOME": str(home)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, float(json.loads(done.stdout)["elapsed_s"])


def overhead(server: Server, model: str, data: str, home: Path, rounds: int) -> list[dict[str, float]]:
    """Per round: the server's fit and the CLI's, alternating which goes first."""
    out = []
    for r in range(rounds):
        time.sleep(IDLE_S)  # the server's next job process imports meanwhile, not during either side's fit
        mt = 0.3 + 0.001 * r  # a new store key each round: both sides measure every candidate
        timings: dict[str, float] = {}
        for side in ("server", "cli") if r % 2 == 0 else ("cli", "server"):
            if timings:
                time.sleep(IDLE_S)  # the server's next job process imports between the two, never during a fit
            if side == "cli":
                timings["cli"], timings["cli_fit"] = _cli_fit(home, mt, home / f"out-{r}")
            else:
                t0 = time.perf_counter()
                job = server.submit(_fit_body(model, data, mt))
                end = server.first_event(job, "end")
                timings["server"] = time.perf_counter() - t0
                assert end["state"] == "done", end
                result = server.client.get(f"/api/jobs/{job}").json()
                timings["candidates"] = result["progress"]["total"]
                timings["server_fit"] = result["result"]["elapsed_s"]
        out.append(
            {
                **timings,
                "ratio": timings["server"] / timings["cli"],
                "fit_ratio": timings["server_fit"] / timings["cli_fit"],
            }
        )
    return out


def section(tmp: Path, rounds: int = 5) -> list[str]:
    from chipfit.hardware.detect import local_machine

    server = Server(tmp / "server")
    try:
        cold = first_candidate(server, reps=1, idle_s=0.0)  # right after the server started
        firsts = first_candidate(server, reps=3, idle_s=IDLE_S)
        model, data = server.upload()
        done = server.submit(_fit_body(model, data, 0.2))
        assert server.first_event(done, "end")["state"] == "done"
        body = server.client.get(f"/api/jobs/{done}").content
        time.sleep(IDLE_S)  # idle: the next job's process has imported
        idle = poll_latency(server, done, None)
        busy = poll_latency(server, done, _fit_body(model, data, 3.0))  # long enough to outlast the polls
        over = overhead(server, model, data, tmp / "cli-home", rounds)
    finally:
        server.close()
    totals = [f["total_s"] for f in firsts]
    runs = ", ".join(f"{t:.2f}" for t in totals)
    ratios = [o["ratio"] for o in over]
    med = float(np.median(ratios))
    fit_med = float(np.median([o["fit_ratio"] for o in over]))
    pairs = ", ".join(f"{o['server']:.2f}/{o['cli']:.2f} s" for o in over)
    n_cand = int(over[0]["candidates"])
    cpu = local_machine()["cpu"]
    lines = [
        HEADER,
        "",
        f"A real `chipfit server start` on loopback ({cpu['model']}, {cpu['cores_in_quota']} cores in the CPU quota, "
        "shared with other work), the bundled digits model. Timings from the client's side.",
        "",
        "| measurement | measured | goal |",
        "|---|---|---|",
        f"| upload → first measured candidate (demo spec, fit's default space and timing), on a server idle for "
        f"{IDLE_S:.0f} s ({len(totals)} runs) | median {np.median(totals):.2f} s ({runs}); of which "
        f"model + data upload {np.median([f['upload_s'] for f in firsts]) * 1000:.0f} ms | ≤ 5 s |",
        f"| the same right after `chipfit server start` (the job waits for its process's imports: TVM, torch, "
        f"OpenVINO) | {cold[0]['total_s']:.2f} s | ≤ 5 s |",
        *(
            f"| GET /api/jobs/ID (a finished fit's full result, {len(body)} bytes), {name}: {POLLERS} connections "
            f"in a closed loop (wrk, 5 s) | p50 {p['wrk']['p50']:.1f} ms, p99 {p['wrk']['p99']:.1f} ms at "
            f"{p['wrk']['rps']:.0f} req/s ({p['wrk']['n']:.0f} requests, {p['wrk']['bad']:.0f} errors) | "
            "p99 ≤ 50 ms |\n"
            f"| the same, {name}: {POLLERS} clients each polling once a second ({PACED_S:.0f} s) | "
            f"p50 {p['paced']['p50']:.1f} ms, p99 {p['paced']['p99']:.1f} ms ({p['paced']['n']} requests) | "
            "p99 ≤ 50 ms |"
            for name, p in (("server idle", idle), ("while a fit runs on the server's worker", busy))
        ),
        f"| a small fit ({n_cand} candidates) through the server vs `chipfit fit` ({len(over)} rounds, interleaved) | "
        f"end to end (POST to end event / launch to exit): server/CLI median {med:.3f} ({pairs}); the fit "
        f"itself (its elapsed_s, in the job's process / in the CLI's): median {fit_med:.3f} | ≤ 1.05 |",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--append", type=Path, default=None, help="replace (or add) this section in the file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = section(Path(tmp), args.rounds)
    text = "\n".join(lines) + "\n"
    if args.append:
        sys.path.insert(0, str(Path(__file__).parent))
        from _md import replace_section

        replace_section(args.append, HEADER, text)
    print(text)


if __name__ == "__main__":
    main()
