"""chipfit serve end to end: one real server process on a loopback port (shared by the tests of this module),
real HTTP requests — predictions equal to the artifact's, JSON and .npz bodies, bad payloads answered 400
(never a crash), the token, the body limit, the structured access log (which must not block the server),
metrics, a request of more rows than the queue holds answered 413 naming the limit, hot reload and rollback
(admin token) under traffic
with no failed request, named versions, a cascade routing each row by its confidence, the load generator and
Ray Serve. Verdicts are on status codes, values and counts, never on how fast this machine is; the batcher's
timing rules are unit-tested with an injected clock in test_batcher.py."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import chipfit  # noqa: E402
from chipfit.search.driver import MeasureSettings  # noqa: E402
from chipfit.search.space import SpaceOptions  # noqa: E402
from chipfit.testing.serving import ServeProcess, free_port  # noqa: E402
from conftest import FAST_TIMING, make_mlp  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_AUTH = {"Authorization": "Bearer adm1n"}  # the admin routes (hot reload, rollback) take only this one
MAX_QUEUE = 40  # rows waiting per model: a request of more rows is refused whatever the load
ONE = {"inputs": {"x": [[0.5, -0.5, 1.0, 0.0]]}}


def _fit(model: Path, data: dict[str, np.ndarray], out: Path, work: Path) -> Path:
    chipfit.fit(
        model,
        data,
        out=out,
        space=SpaceOptions(backends=("onnxruntime",), batch_sizes=(1,), threads=(1,), opt_levels=("all",), passes=()),
        settings=MeasureSettings(timing=FAST_TIMING, predict=False),
        store=f"sqlite:///{work / 'store.db'}",
        home=work / "home",
    )
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fitted MLPs of the same signature and a cascade of them (v1 fast, v2 accurate, labels v2's own)."""
    from typer.testing import CliRunner

    from chipfit.cli import app

    work = tmp_path_factory.mktemp("serve")
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    a = _fit(make_mlp(work / "a.onnx", seed=0), {"x": x}, work / "mlp_v1", work)
    b = _fit(make_mlp(work / "b.onnx", seed=1), {"x": x}, work / "mlp_v2", work)
    labels = chipfit.runtime.load(b).run({"x": x})[0].argmax(1)
    np.savez(work / "eval.npz", x=x, labels=labels)
    args = ["cascade", str(a), str(b), "--data", str(work / "eval.npz"), "--max-accuracy-drop", "0.3"]
    r = CliRunner().invoke(app, [*args, "--out", str(work / "casc"), "--json"])
    if r.exit_code != 0:
        raise RuntimeError(f"chipfit cascade failed ({r.exit_code}): {r.output} {r.exception!r}")
    return {"v1": a, "v2": b, "casc": work / "casc", "eval": work / "eval.npz", "work": work}


@pytest.fixture(scope="module")
def server(artifacts: dict[str, Path]) -> Iterator[ServeProcess]:
    """One server for the module: ``mlp`` (v1), ``hot@3`` (v1, reloaded and rolled back by one test) and the
    cascade ``casc``; tokens from the environment, a 10 KiB body limit, max batch 8, the access log on."""
    s = ServeProcess(
        f"mlp={artifacts['v1']}",
        f"hot@3={artifacts['v1']}",
        f"casc={artifacts['casc']}",
        *("--slo-p99-ms", "500", "--max-queue", str(MAX_QUEUE), "--max-batch", "8", "--max-body-mb", "0.01"),
        env={"CHIPFIT_SERVE_TOKEN": TOKEN, "CHIPFIT_SERVE_ADMIN_TOKEN": "adm1n"},
    )
    yield s
    s.stop()


def _metric(text: str, key: str) -> float:
    """The value of the sample ``key`` (name and labels as exposed); 0 when it is not there yet."""
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(key + " ")), 0.0)


def _models(server: ServeProcess) -> dict[tuple[str, int], dict[str, Any]]:
    return {(m["name"], m["version"]): m for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["models"]}


def test_predictions_match_the_artifact_in_json_and_npz(server: ServeProcess, artifacts: dict[str, Path]) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    expected = chipfit.runtime.load(artifacts["v1"]).run({"x": x})[0]
    r = httpx.post(f"{server.url}/v1/models/mlp/predict", json={"inputs": {"x": x.tolist()}}, headers=AUTH)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"]["probs"]), expected, rtol=1e-5, atol=1e-6)
    buf = io.BytesIO()
    np.savez(buf, x=x)
    r = httpx.post(
        f"{server.url}/v1/models/mlp/predict",
        content=buf.getvalue(),
        headers={**AUTH, "Content-Type": "application/x-npz"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    np.testing.assert_allclose(np.load(io.BytesIO(r.content))["probs"], expected, rtol=1e-5, atol=1e-6)
    models = _models(server)
    mlp = models[("mlp", 1)]
    assert mlp["slo_p99_ms"] == 500 and mlp["max_batch"] == 8 and mlp["backend"] == "onnxruntime"
    assert mlp["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert ("hot", 3) in models and models[("casc", 1)]["kind"] == "cascade"  # names and versions as given
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    assert "/v1/models/{name}/predict" in spec["paths"]


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"x": [[1, 2, 3, 4]]}', "application/json", '{"inputs"'),
        (b'{"inputs": {"y": [[1, 2, 3, 4]]}}', "application/json", "missing ['x']"),
        (b'{"inputs": {"x": [[1, 2, 3]]}}', "application/json", "has 3 in dimension 1"),
        (b'{"inputs": {"x": [1, 2, 3, 4]}}', "application/json", "2 dimensions"),
        (b'{"inputs": {"x": [[1, 2], [3]]}}', "application/json", "ragged"),
        (b'{"inputs": {"x": [["a", "b", "c", "d"]]}}', "application/json", "must hold numbers"),
        (b"PK-not-a-zip", "application/x-npz", "not a readable .npz"),
    ],
)
def test_bad_payloads_are_400_naming_the_problem(server: ServeProcess, body: bytes, ctype: str, message: str) -> None:
    r = httpx.post(f"{server.url}/v1/models/mlp/predict", content=body, headers={**AUTH, "Content-Type": ctype})
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_bad_requests_other_than_the_body_are_answered_naming_the_problem(server: ServeProcess) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((1, 4), np.float64))
    r = httpx.post(
        f"{server.url}/v1/models/mlp/predict",
        content=buf.getvalue(),
        headers={**AUTH, "Content-Type": "application/x-npz"},
    )
    assert r.status_code == 400 and "float64" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/predict", json=ONE, headers={**AUTH, "X-Deadline-Ms": "soon"})
    assert r.status_code == 400 and "X-Deadline-Ms" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/versions", json={"nope": 1}, headers=ADMIN_AUTH)
    assert r.status_code == 400 and '"path"' in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/versions", json={"path": "/does/not/exist"}, headers=ADMIN_AUTH)
    assert r.status_code == 400 and "not a chipfit artifact" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/rollback", headers=ADMIN_AUTH)
    assert r.status_code == 404 and "no earlier version" in r.json()["error"]
    assert httpx.post(f"{server.url}/v1/models/nope/predict", json=ONE, headers=AUTH).status_code == 404
    assert httpx.post(f"{server.url}/v1/models/mlp@7/predict", json=ONE, headers=AUTH).status_code == 404
    assert httpx.post(f"{server.url}/v1/models/mlp/predict", json=ONE, headers=AUTH).status_code == 200  # still up


def test_the_token_guards_all_but_the_probes_and_the_body_limit_is_413(server: ServeProcess) -> None:
    url = f"{server.url}/v1/models/mlp/predict"
    assert httpx.post(url, json=ONE).status_code == 401
    assert httpx.post(url, json=ONE, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no token
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/openapi.json").status_code == 200  # the API's description: no data
    assert httpx.get(f"{server.url}/docs/assets/swagger-ui.css").status_code == 200  # a browser reads /docs
    big = httpx.post(url, json={"inputs": {"x": [[0.0] * 4] * 1000}}, headers=AUTH)  # ~20 KB over the 10 KiB limit
    assert big.status_code == 413 and "--max-body-mb" in big.json()["error"]
    assert httpx.post(url, json=ONE, headers=AUTH).status_code == 200
    lines = [json.loads(x) for x in server.output().splitlines() if x.startswith("{")]
    assert {"method": "POST", "path": "/v1/models/mlp/predict", "status": 401} in [
        {k: x[k] for k in ("method", "path", "status")} for x in lines
    ]  # one structured access-log line per request
    assert all(isinstance(x["ms"], float | int) and x["ms"] >= 0 for x in lines)


def test_a_request_the_queue_can_never_hold_is_413_naming_the_limit_and_counted(server: ServeProcess) -> None:
    url = f"{server.url}/v1/models/mlp/predict"
    key = 'chipfit_requests_total{code="413",model="mlp",version="1"}'
    before = _metric(httpx.get(f"{server.url}/metrics", headers=AUTH).text, key)
    too_many = {"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]] * (MAX_QUEUE + 1)}}
    r = httpx.post(url, json=too_many, headers=AUTH)
    assert r.status_code == 413 and f"at most {MAX_QUEUE} rows" in r.json()["error"], r.text
    assert "Retry-After" not in r.headers  # retrying the same request could never succeed
    assert httpx.post(url, json={"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]] * MAX_QUEUE}}, headers=AUTH).status_code == 200
    after = _metric(httpx.get(f"{server.url}/metrics", headers=AUTH).text, key)
    assert after == before + 1


def test_metrics_count_each_request_and_row(server: ServeProcess) -> None:
    labels = 'model="mlp",version="1"'
    keys = {
        "ok": f'chipfit_requests_total{{code="200",{labels}}}',
        "batches": f"chipfit_batch_size_count{{{labels}}}",
        "rows": f"chipfit_batch_size_sum{{{labels}}}",
        "latencies": f"chipfit_request_latency_seconds_count{{{labels}}}",
    }

    def read() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        assert f"chipfit_queue_depth{{{labels}}}" in text
        return {k: _metric(text, v) for k, v in keys.items()}

    before = read()
    with httpx.Client(headers=AUTH) as c:
        for rows in (1, 2, 3):  # one after another: each is a batch of its own
            assert c.post(f"{server.url}/v1/models/mlp/predict", json={"inputs": {"x": [[0.0] * 4] * rows}}).is_success
    after = read()
    assert {k: after[k] - before[k] for k in keys} == {"ok": 3, "batches": 3, "rows": 6, "latencies": 3}


def test_the_access_log_does_not_block_the_server_after_thousands_of_requests(server: ServeProcess) -> None:
    # each request writes a line of ~150 bytes; 1200 lines are ~180 KB, nearly three times what a pipe holds
    n = 1200
    with httpx.Client(headers=AUTH, timeout=10) as c:
        codes = [c.post(f"{server.url}/v1/models/mlp/predict", json=ONE).status_code for _ in range(n)]
    assert codes == [200] * n
    logged = [x for x in server.output().splitlines() if x.startswith('{"t"') and "/mlp/predict" in x]
    assert len(logged) >= n


def _hammer(url: str, stop: threading.Event, codes: list[int]) -> None:
    with httpx.Client(headers=AUTH, timeout=30) as c:
        while not stop.is_set():
            codes.append(c.post(url, json=ONE).status_code)
            stop.wait(0.002)


def _wait_for(codes: list[int], n: int, stop: threading.Event) -> None:
    """Until ``n`` more requests have completed (bounded: a dead hammer fails the test, it does not hang it)."""
    target = len(codes) + n
    for _ in range(3000):
        if len(codes) >= target:
            return
        stop.wait(0.01)
    raise AssertionError(f"traffic stalled at {len(codes)} requests")


def test_hot_reload_and_rollback_under_traffic_fail_no_request(
    server: ServeProcess, artifacts: dict[str, Path]
) -> None:
    url = f"{server.url}/v1/models/hot/predict"
    stop, codes = threading.Event(), []  # type: ignore[var-annotated]
    t = threading.Thread(target=_hammer, args=(url, stop, codes))
    t.start()
    try:
        _wait_for(codes, 10, stop)
        r = httpx.post(
            f"{server.url}/v1/models/hot/versions", json={"path": str(artifacts["v2"])}, headers=ADMIN_AUTH, timeout=60
        )
        assert r.status_code == 200 and r.json()["version"] == 4, r.text  # after the 3 it was started as
        _wait_for(codes, 10, stop)
        new = httpx.post(url, json=ONE, headers=AUTH).json()["outputs"]["probs"]
        old = httpx.post(f"{server.url}/v1/models/hot@3/predict", json=ONE, headers=AUTH).json()["outputs"]["probs"]
        x = np.array(ONE["inputs"]["x"], np.float32)
        np.testing.assert_allclose(new, chipfit.runtime.load(artifacts["v2"]).run({"x": x})[0], rtol=1e-5, atol=1e-6)
        assert not np.allclose(old, new)  # the new version answers by default, the old one by name@3
        assert {k[1]: m["active"] for k, m in _models(server).items() if k[0] == "hot"} == {3: False, 4: True}
        r = httpx.post(f"{server.url}/v1/models/hot/rollback", headers=ADMIN_AUTH)
        assert r.status_code == 200 and r.json()["version"] == 3
        assert np.allclose(httpx.post(url, json=ONE, headers=AUTH).json()["outputs"]["probs"], old)
        _wait_for(codes, 10, stop)
    finally:
        stop.set()
        t.join()
    assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def test_a_cascade_answers_each_row_from_the_model_its_confidence_calls_for(
    server: ServeProcess, artifacts: dict[str, Path]
) -> None:
    from chipfit.serve.registry import confidence

    info = _models(server)[("casc", 1)]["cascade"]
    t = info["threshold"]
    x = np.load(artifacts["eval"])["x"]
    fast = chipfit.runtime.load(artifacts["v1"]).run({"x": x})[0]
    accurate = chipfit.runtime.load(artifacts["v2"]).run({"x": x})[0]
    conf = confidence(fast)
    sure, unsure = np.flatnonzero(conf >= t)[:16], np.flatnonzero(conf < t)[:16]
    assert len(sure) and len(unsure), f"the cascade should defer some rows and keep others (threshold {t})"
    rows = np.concatenate([sure, unsure])
    buf = io.BytesIO()
    np.savez(buf, x=x[rows])
    r = httpx.post(
        f"{server.url}/v1/models/casc/predict",
        content=buf.getvalue(),
        headers={**AUTH, "Content-Type": "application/x-npz"},
    )
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content))["probs"]
    np.testing.assert_allclose(got[: len(sure)], fast[sure], rtol=1e-5, atol=1e-6)  # confident: the fast model
    np.testing.assert_allclose(got[len(sure) :], accurate[unsure], rtol=1e-5, atol=1e-6)  # the rest: accurate
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert _metric(metrics, 'chipfit_cascade_fast_rows_total{model="casc",version="1"}') == len(sure)
    assert _metric(metrics, 'chipfit_cascade_rows_total{model="casc",version="1"}') == len(rows)


def test_the_load_generator_reports_on_a_live_server(server: ServeProcess, cli_run: Any) -> None:
    args = ["loadtest", server.url, "--model", "mlp", "--token", TOKEN, "--rate", "100", "--duration", "0.5"]
    out = json.loads(cli_run(*args, "--json"))
    assert out["errors"] == 0 and out["ok"] > 0 and out["ok"] + out["rejected"] == out["sent"]
    assert out["p50_ms"] is not None and out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]


def test_bad_command_lines_exit_2_naming_the_problem(artifacts: dict[str, Path], cli_run: Any) -> None:
    (artifacts["work"] / "empty").mkdir(exist_ok=True)
    assert "not a chipfit artifact" in cli_run("serve", str(artifacts["work"] / "empty"), code=2)
    assert "version after @ must be a number" in cli_run("serve", f"a@x={artifacts['v1']}", code=2)
    assert "--arrival must be" in cli_run("loadtest", "http://127.0.0.1:9", "--model", "a", "--arrival", "x", code=2)
    assert "must be positive" in cli_run("loadtest", "http://127.0.0.1:9", "--model", "a", "--rate", "-1", code=2)
    assert "cannot reach" in cli_run("loadtest", "http://127.0.0.1:9", "--model", "a", code=2)
    assert "(extra [ray])" in " ".join(cli_run("serve", "--help").split())  # not eaten as rich markup


def test_ray_serve_deploys_the_same_app(artifacts: dict[str, Path], local_ray: Any) -> None:
    pytest.importorskip("ray.serve")
    from ray import serve

    from chipfit.serve.ray_serve import deploy
    from chipfit.serve.server import ServeOptions

    port = free_port()
    try:
        deploy(ServeOptions([f"mlp={artifacts['v1']}"], port=port, slo_p99_ms=100, replicas=1, access_log=False))
        url = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{url}/v1/models/mlp/predict", json={"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}, timeout=30)
        assert r.status_code == 200, r.text
        x = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
        expected = chipfit.runtime.load(artifacts["v1"]).run({"x": x})[0]
        np.testing.assert_allclose(r.json()["outputs"]["probs"], expected, rtol=1e-5, atol=1e-6)
        bad = httpx.post(f"{url}/v1/models/mlp/predict", json={"inputs": {"y": [[1]]}}, timeout=30)
        assert bad.status_code == 400
        assert "chipfit_request_latency_seconds" in httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        serve.shutdown()
