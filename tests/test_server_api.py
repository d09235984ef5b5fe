"""The team service's API on a real app (FastAPI's TestClient over create_app, the real job worker and job
processes) and on a real `chipfit server start` process for the restart test. The bundled digits model; fits kept
to a handful of candidates (one ORT variant at batch 1); each test that must measure anew uses its own timing
(part of the store's key), so that nothing it checks comes from another test's stored measurements."""

from __future__ import annotations

import io
import json
import os
import signal
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

pytest.importorskip("fastapi")
pytest.importorskip("itsdangerous")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient

from chipfit.server.app import create_app
from chipfit.server.auth import CSRF_HEADER, SESSION_COOKIE
from chipfit.server.config import ServerConfig
from chipfit.server.service import ServerService

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
SPACE = {"batch_sizes": [1], "threads": [1], "opt_levels": ["all"], "execution_modes": ["sequential"], "passes": []}
WAIT_S = 120.0  # generous: the machine may be loaded; a healthy job takes a few seconds


def _job(model: str, data: str, measure_time: float, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "fit",
        "model": model,
        "data": data,
        "spec": spec,
        "backends": ["onnxruntime"],
        "space": SPACE,
        "measure": {"measure_time": measure_time, "predict": False, "eval_samples": 64},
    }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait(client: Any, job_id: str, headers: dict[str, str], until: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}", headers=headers).json()
        if job["state"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {until} in {WAIT_S}s: {job}")


class Server:
    def __init__(self, client: TestClient, service: ServerService, tokens: dict[str, str], ids: dict[str, str]):
        self.client, self.service, self.tokens, self.ids = client, service, tokens, ids

    def h(self, team: str) -> dict[str, str]:
        return _bearer(self.tokens[team])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # the jobs here name their backend: their processes need not import every backend's library ahead
    config = ServerConfig(tmp_path_factory.mktemp("server"), max_upload_mb=1.0, poll_s=0.05, preload_backends=False)
    app = create_app(config)
    service: ServerService = app.state.service
    tokens = {name: service.create_team(name)[1] for name in ("alpha", "beta")}
    with TestClient(app) as client:
        h = _bearer(tokens["alpha"])
        with open(DIGITS / "model.onnx", "rb") as f:
            model = client.post("/api/models", headers=h, files={"file": ("digits.onnx", f)})
        assert model.status_code == 201, model.text
        with open(DIGITS / "eval.npz", "rb") as f:
            data = client.post(f"/api/models/{model.json()['id']}/data", headers=h, files={"file": ("eval.npz", f)})
        assert data.status_code == 201, data.text
        yield Server(client, service, tokens, {"model": model.json()["id"], "data": data.json()["id"]})


def test_fit_job_streams_its_candidates_and_delivers_an_artifact_that_loads(server: Server, tmp_path: Path) -> None:
    import chipfit

    c, h = server.client, server.h("alpha")
    model = c.get(f"/api/models/{server.ids['model']}", headers=h).json()
    assert model["inputs"][0]["name"] == "image" and model["data"][0]["samples"] > 0
    submitted = c.post("/api/jobs", headers=h, json=_job(server.ids["model"], server.ids["data"], 0.11))
    assert submitted.status_code == 201 and submitted.json()["state"] == "queued"
    job_id = submitted.json()["id"]
    with c.stream("GET", f"/api/jobs/{job_id}/events", headers=h) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = [
        (block.split("event: ")[1].split("\n")[0], json.loads(block.split("data: ")[1]))
        for block in text.split("\n\n")
        if "event: " in block
    ]
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["state"] == "done"
    measured = [d for k, d in events if k == "candidate"]
    assert measured and measured[0]["reference"] and measured[0]["p50_ms"] > 0
    job = c.get(f"/api/jobs/{job_id}", headers=h).json()
    assert job["state"] == "done" and job["result"]["winner"] is not None
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    assert job["spend_usd"] > 0 and c.get("/api/usage", headers=h).json()["spent_usd"] >= job["spend_usd"]
    assert {r["id"] for r in c.get("/api/jobs", headers=h).json()} >= {job_id}
    zipped = c.get(f"/api/jobs/{job_id}/artifact", headers=h)
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(zipped.content)).extractall(tmp_path / "artifact")
    loaded = chipfit.runtime.load(tmp_path / "artifact")
    x = np.load(DIGITS / "eval.npz")["image"][:2]
    assert loaded.run({"image": x})[0].shape == (2, 10)


def test_a_recommend_job_ranks_targets_in_standard_json(server: Server) -> None:
    """A recommend job answers with `recommend --json`'s document, parseable by a browser (no Infinity/NaN)."""
    c, h = server.client, server.h("alpha")
    body = {**_job(server.ids["model"], server.ids["data"], 0.1), "kind": "recommend"}
    body["targets"] = ["aws-c5.xlarge", "raspberry-pi-5"]
    submitted = c.post("/api/jobs", headers=h, json=body)
    assert submitted.status_code == 201, submitted.text
    _wait(c, submitted.json()["id"], h, ("done", "failed"))
    raw = c.get(f"/api/jobs/{submitted.json()['id']}", headers=h).text

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} in the job's answer")

    job = json.loads(raw, parse_constant=refuse)
    assert job["state"] == "done", job.get("error")
    names = {t["name"] for t in job["result"]["targets"]}
    assert {"aws-c5.xlarge", "raspberry-pi-5"} <= names
    assert {t["source"] for t in job["result"]["targets"]} <= {"measured", "predicted"}
    assert any(t["expected_error"] is None for t in job["result"]["targets"])  # the unvalidated predictor's: null


def test_another_teams_ids_answer_404(server: Server) -> None:
    c, a, b = server.client, server.h("alpha"), server.h("beta")
    jobs = c.get("/api/jobs", headers=a).json()
    job_id = jobs[0]["id"] if jobs else "j0"
    mid = server.ids["model"]
    assert c.get(f"/api/models/{mid}", headers=a).status_code == 200
    for method, url in [
        ("GET", f"/api/models/{mid}"),
        ("GET", f"/api/jobs/{job_id}"),
        ("GET", f"/api/jobs/{job_id}/events"),
        ("GET", f"/api/jobs/{job_id}/artifact"),
        ("DELETE", f"/api/jobs/{job_id}"),
    ]:
        assert c.request(method, url, headers=b).status_code == 404, url
    with open(DIGITS / "eval.npz", "rb") as f:
        assert c.post(f"/api/models/{mid}/data", headers=b, files={"file": ("e.npz", f)}).status_code == 404
    bad = c.post("/api/jobs", headers=b, json=_job(mid, server.ids["data"], 0.1, time_budget="1m"))
    assert bad.status_code == 404
    assert c.get("/api/models", headers=b).json() == [] and c.get("/api/jobs", headers=b).json() == []
    assert c.get("/api/usage").status_code == 401
    assert c.get("/api/usage", headers=_bearer(server.tokens["beta"] + "x")).status_code == 401


def test_quota_refuses_what_it_cannot_pay_for_and_needs_a_time_budget(server: Server) -> None:
    c, svc = server.client, server.service
    _, token = svc.create_team("gamma", 0.001)
    h = _bearer(token)
    with open(DIGITS / "model.onnx", "rb") as f:
        mid = c.post("/api/models", headers=h, files={"file": ("m.onnx", f)}).json()["id"]
    with open(DIGITS / "eval.npz", "rb") as f:
        did = c.post(f"/api/models/{mid}/data", headers=h, files={"file": ("e.npz", f)}).json()["id"]
    no_budget = c.post("/api/jobs", headers=h, json=_job(mid, did, 0.1))
    assert no_budget.status_code == 422 and "time_budget" in no_budget.json()["detail"]
    too_dear = c.post("/api/jobs", headers=h, json=_job(mid, did, 0.1, time_budget="10h"))
    assert too_dear.status_code == 402
    assert "left" in too_dear.json()["detail"] and "$0.001" in too_dear.json()["detail"]
    assert c.get("/api/jobs", headers=h).json() == []
    usage = c.get("/api/usage", headers=h).json()
    assert usage["quota_usd"] == 0.001 and usage["remaining_usd"] == 0.001


def test_a_running_job_stops_cleanly_when_the_quota_is_spent(server: Server) -> None:
    c, svc = server.client, server.service
    _, token = svc.create_team("delta")
    h = _bearer(token)
    with open(DIGITS / "model.onnx", "rb") as f:
        mid = c.post("/api/models", headers=h, files={"file": ("m.onnx", f)}).json()["id"]
    with open(DIGITS / "eval.npz", "rb") as f:
        did = c.post(f"/api/models/{mid}/data", headers=h, files={"file": ("e.npz", f)}).json()["id"]
    submitted = c.post("/api/jobs", headers=h, json=_job(mid, did, 0.12, time_budget="10m")).json()
    svc.set_quota("delta", 1e-9)  # an administrator lowers the quota: the first measurement spends it
    job = _wait(c, submitted["id"], h, ("done", "failed", "stopped_by_quota"))
    assert job["state"] == "stopped_by_quota", job
    cands = job["result"]["candidates"]
    measured = [r for r in cands if r["source"] == "measured"]
    assert measured and measured[0]["reference"] and measured[0]["status"] == "ok"  # what it measured is kept
    assert any(r["source"] == "skipped" for r in cands)
    assert any("quota" in n for n in job["result"]["notes"])
    assert c.get("/api/usage", headers=h).json()["spent_usd"] >= 1e-9


def test_bad_uploads_get_a_clear_4xx_each(server: Server) -> None:
    c, h = server.client, server.h("beta")

    def up(url: str, name: str, body: bytes) -> Any:
        return c.post(url, headers=h, files={"file": (name, body)})

    wrong = up("/api/models", "model.txt", b"hello")
    assert wrong.status_code == 415 and ".onnx" in wrong.json()["detail"]
    big = up("/api/models", "big.onnx", os.urandom(3 * 2**20))
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    corrupt = up("/api/models", "broken.onnx", b"\x08\x07garbage" * 100)
    assert corrupt.status_code == 422 and "broken.onnx" in corrupt.json()["detail"]
    assert "tmp" not in corrupt.json()["detail"]  # the server's paths are not shown
    mid = up("/api/models", "d.onnx", (DIGITS / "model.onnx").read_bytes()).json()["id"]
    not_npz = up(f"/api/models/{mid}/data", "eval.npz", b"not a zip")
    assert not_npz.status_code == 422 and "np.savez" in not_npz.json()["detail"]
    buf = io.BytesIO()
    np.savez(buf, pixels=np.zeros((4, 1, 8, 8), np.float32))
    wrong_name = up(f"/api/models/{mid}/data", "eval.npz", buf.getvalue())
    assert wrong_name.status_code == 422 and "image" in wrong_name.json()["detail"]
    csv = up(f"/api/models/{mid}/data", "eval.csv", b"1,2,3")
    assert csv.status_code == 415 and ".npz" in csv.json()["detail"]
    assert not list((server.service.config.data_dir / "tmp").iterdir())  # nothing left half-uploaded


def test_onnx_with_external_data_uploads_as_several_parts(server: Server, tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(DIGITS / "model.onnx"))  # weights external, small constants inline (as exporters do)
    onnx.save_model(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=1024)  # fmt: skip
    c, h = server.client, server.h("beta")
    parts = [("file", ("ext.onnx", (tmp_path / "ext.onnx").read_bytes())),
             ("file", ("ext.onnx.data", (tmp_path / "ext.onnx.data").read_bytes()))]  # fmt: skip
    r = c.post("/api/models", headers=h, files=parts)
    assert r.status_code == 201, r.text
    stored = server.service.get_model(server.service.team_by_name("beta"), r.json()["id"]).path
    assert stored.parent.parent == server.service.config.data_dir / "models"
    assert not list(stored.parent.glob("ext*"))  # stored by hash, not by the client's names
    missing = c.post("/api/models", headers=h, files=parts[:1])
    assert missing.status_code == 422 and "ext.onnx.data" in missing.json()["detail"]
    assert c.get("/docs").status_code == 200
    assert "/api/jobs/{job_id}/events" in c.get("/openapi.json").json()["paths"]


def test_team_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chipfit.cli import app

    runner, d = CliRunner(), ["--data-dir", str(tmp_path)]
    made = runner.invoke(app, ["server", "team", "create", "ops", "--quota", "50usd", *d])
    assert made.exit_code == 0, made.output
    token = made.output.split()[-1]
    service = ServerService(ServerConfig(tmp_path, run_worker=False))
    assert service.team_for_token(token) is not None and service.team_by_name("ops").quota_usd == 50
    assert runner.invoke(app, ["server", "team", "set-quota", "ops", "none", *d]).exit_code == 0
    assert service.team_by_name("ops").quota_usd is None
    listed = runner.invoke(app, ["server", "team", "list", *d])
    assert "ops" in listed.output and "none" in listed.output and token not in listed.output
    rotated = runner.invoke(app, ["server", "team", "rotate-token", "ops", *d])
    service = ServerService(ServerConfig(tmp_path, run_worker=False))  # a server reads teams anew within TEAM_TTL_S
    assert service.team_for_token(token) is None and service.team_for_token(rotated.output.split()[-1])
    bad = runner.invoke(app, ["server", "team", "create", "x", "--quota", "5gpu-h", *d])
    assert bad.exit_code == 2 and "dollars" in bad.output
    assert runner.invoke(app, ["server", "team", "create", "ops", *d]).exit_code == 2  # the name is taken


def test_cookie_session_needs_the_csrf_token_and_token_rotation_ends_it(server: Server) -> None:
    c, svc = server.client, server.service
    _, token = svc.create_team("epsilon")
    login = c.post("/api/session", json={"token": token})
    assert login.status_code == 200 and login.json()["team"] == "epsilon"
    csrf, cookie = login.json()["csrf_token"], login.cookies[SESSION_COOKIE]
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, cookie)
    assert c.get("/api/usage").status_code == 200
    body = {"kind": "fit", "model": "m0", "data": "d0"}
    assert c.post("/api/jobs", json=body).status_code == 403
    assert c.post("/api/jobs", json=body, headers={CSRF_HEADER: "wrong"}).status_code == 403
    assert c.post("/api/jobs", json=body, headers={CSRF_HEADER: csrf}).status_code == 404  # past the CSRF check
    assert c.post("/api/session/logout", headers={CSRF_HEADER: csrf}).status_code == 200
    form = c.post("/api/session", data={"token": token}, follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == "/"
    assert c.post("/api/session", json={"token": token + "x"}).status_code == 401
    c.cookies.clear()
    new = svc.rotate_token("epsilon")
    assert c.get("/api/usage", headers=_bearer(token)).status_code == 401
    c.cookies.set(SESSION_COOKIE, cookie)
    assert c.get("/api/usage").status_code == 401  # the old session ended with the old token
    c.cookies.clear()
    assert c.get("/api/usage", headers=_bearer(new)).json()["team"] == "epsilon"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "chipfit", "server", "start", "--data-dir", str(data_dir), "--port", str(port)]
    cmd += ["--no-preload-backends"]  # the jobs name their backend
    with open(data_dir / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    import httpx

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/usage", timeout=2).status_code == 401:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
        assert proc.poll() is None, (data_dir / "server.log").read_text()
    raise AssertionError("the server did not answer")


def test_a_server_killed_with_jobs_queued_and_running_loses_none(tmp_path: Path) -> None:
    import httpx

    data_dir = tmp_path / "srv"
    service = ServerService(ServerConfig(data_dir, run_worker=False))  # (the CLI's team create: test_team_commands)
    _, token = service.create_team("ops")
    service.close()
    h = _bearer(token)
    port = _free_port()
    proc = _start(data_dir, port)
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=30)
        with open(DIGITS / "model.onnx", "rb") as f:
            mid = c.post("/api/models", files={"file": ("m.onnx", f)}).json()["id"]
        with open(DIGITS / "eval.npz", "rb") as f:
            did = c.post(f"/api/models/{mid}/data", files={"file": ("e.npz", f)}).json()["id"]
        first = c.post("/api/jobs", json=_job(mid, did, 0.3)).json()["id"]
        second = c.post("/api/jobs", json=_job(mid, did, 0.06)).json()["id"]
        deadline = time.monotonic() + WAIT_S
        while not [e for e in c.get(f"/api/jobs/{first}/candidates").json() if e["source"] == "measured"]:
            assert time.monotonic() < deadline, c.get(f"/api/jobs/{first}").json()
            time.sleep(0.1)
        assert c.get(f"/api/jobs/{second}").json()["state"] == "queued"
        proc.send_signal(signal.SIGKILL)  # mid-job: one candidate stored, the others not yet
        proc.wait()
        proc = _start(data_dir, port)
        done = [_wait(c, j, {}, ("done", "failed", "cancelled", "stopped_by_quota")) for j in (first, second)]
    finally:
        proc.kill()
        proc.wait()
    assert [j["state"] for j in done] == ["done", "done"], done
    assert done[0]["attempts"] == 2 and done[1]["attempts"] == 1
    reused = [r for r in done[0]["result"]["candidates"] if r["source"] == "stored"]
    assert reused and reused[0]["reference"]  # resumed from what the killed run had stored
