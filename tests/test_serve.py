"""chipfit serve: a real server on a loopback port, real HTTP requests — predictions equal to the artifact's,
JSON and .npz bodies, bad payloads answered 400 (never a crash), the token, the body limit, metrics,
overload answered 429 quickly, hot reload and rollback under traffic with no failed request, max-batch 1,
cascades, and the load generator."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
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


def _fit(model: Path, data: dict[str, np.ndarray], out: Path, work: Path) -> Path:
    chipfit.fit(
        model,
        data,
        out=out,
        space=SpaceOptions(backends=("onnxruntime",), batch_sizes=(1, 8), threads=(1,), opt_levels=("all",), passes=()),
        settings=MeasureSettings(timing=FAST_TIMING, predict=False),
        store=f"sqlite:///{work / 'store.db'}",
        home=work / "home",
    )
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    a = _fit(make_mlp(work / "a.onnx", seed=0), {"x": x}, work / "mlp_v1", work)
    b = _fit(make_mlp(work / "b.onnx", seed=1), {"x": x}, work / "mlp_v2", work)
    return {"v1": a, "v2": b, "work": work}


@pytest.fixture
def server(artifacts: dict[str, Path]) -> Iterator[ServeProcess]:
    s = ServeProcess(f"mlp={artifacts['v1']}", "--slo-p99-ms", "50", "--token", "s3cret")
    yield s
    s.stop()


AUTH = {"Authorization": "Bearer s3cret"}


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
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["models"]
    assert models[0]["name"] == "mlp" and models[0]["version"] == 1 and models[0]["slo_p99_ms"] == 50
    assert models[0]["backend"] == "onnxruntime" and models[0]["inputs"][0]["name"] == "x"
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    assert "/v1/models/{name}/predict" in spec["paths"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no token


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
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((1, 4), np.float64))
    r = httpx.post(
        f"{server.url}/v1/models/mlp/predict",
        content=buf.getvalue(),
        headers={**AUTH, "Content-Type": "application/x-npz"},
    )
    assert r.status_code == 400 and "float64" in r.json()["error"]
    ok = {"inputs": {"x": [[0.0, 0.0, 0.0, 0.0]]}}
    r = httpx.post(f"{server.url}/v1/models/mlp/predict", json=ok, headers={**AUTH, "X-Deadline-Ms": "soon"})
    assert r.status_code == 400 and "X-Deadline-Ms" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/versions", json={"nope": 1}, headers=AUTH)
    assert r.status_code == 400 and '"path"' in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/versions", json={"path": "/does/not/exist"}, headers=AUTH)
    assert r.status_code == 400 and "not a chipfit artifact" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/mlp/rollback", headers=AUTH)
    assert r.status_code == 404 and "no earlier version" in r.json()["error"]
    assert httpx.post(f"{server.url}/v1/models/nope/predict", json={}, headers=AUTH).status_code == 404
    assert httpx.post(f"{server.url}/v1/models/mlp@7/predict", json={}, headers=AUTH).status_code == 404
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still up


def test_token_required_and_body_limit(artifacts: dict[str, Path]) -> None:
    s = ServeProcess(str(artifacts["v1"]), "--max-body-mb", "0.0001", env={"CHIPFIT_SERVE_TOKEN": "t0k"})
    try:
        url = f"{s.url}/v1/models/mlp_v1/predict"
        body = {"inputs": {"x": [[0.0, 0.0, 0.0, 0.0]]}}
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        ok = httpx.post(url, json=body, headers={"Authorization": "Bearer t0k"})
        assert ok.status_code == 200, ok.text
        big = httpx.post(url, json={"inputs": {"x": [[0.0] * 4] * 50}}, headers={"Authorization": "Bearer t0k"})
        assert big.status_code == 413 and "--max-body-mb" in big.json()["error"]
    finally:
        err = s.stop()
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert any(x["status"] == 401 for x in lines) and all("ms" in x for x in lines)  # structured access log


def _hammer(url: str, stop: threading.Event, codes: list[int], headers: dict[str, str]) -> None:
    with httpx.Client(headers=headers) as c:
        while not stop.is_set():
            r = c.post(url, json={"inputs": {"x": [[0.5, -0.5, 1.0, 0.0]]}})
            codes.append(r.status_code)
            time.sleep(0.002)


def test_hot_reload_and_rollback_under_traffic_fail_no_request(
    server: ServeProcess, artifacts: dict[str, Path]
) -> None:
    url = f"{server.url}/v1/models/mlp/predict"
    stop, codes = threading.Event(), []  # type: ignore[var-annotated]
    t = threading.Thread(target=_hammer, args=(url, stop, codes, AUTH))
    t.start()
    try:
        time.sleep(0.5)
        r = httpx.post(
            f"{server.url}/v1/models/mlp/versions", json={"path": str(artifacts["v2"])}, headers=AUTH, timeout=60
        )
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        time.sleep(0.5)
        x = {"inputs": {"x": [[0.5, -0.5, 1.0, 0.0]]}}
        v2 = httpx.post(url, json=x, headers=AUTH).json()["outputs"]["probs"]
        v1 = httpx.post(f"{server.url}/v1/models/mlp@1/predict", json=x, headers=AUTH).json()["outputs"]["probs"]
        assert not np.allclose(v1, v2)  # the new version answers by default, the old one by name@1
        assert httpx.post(f"{server.url}/v1/models/mlp/rollback", headers=AUTH).json()["version"] == 1
        time.sleep(0.3)
        assert np.allclose(httpx.post(url, json=x, headers=AUTH).json()["outputs"]["probs"], v1)
    finally:
        stop.set()
        t.join()
    assert len(codes) > 50 and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def test_overload_is_answered_429_quickly_and_the_server_survives(artifacts: dict[str, Path]) -> None:
    s = ServeProcess(str(artifacts["v1"]), "--slo-p99-ms", "2", "--max-queue", "8", "--no-access-log")
    try:
        from chipfit.serve.loadtest import run_load

        body = json.dumps({"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]] * 8}}).encode()
        r = run_load(s.url, "mlp_v1", body, "application/json", rate=3000, duration_s=1.5, arrival="bursty")
        assert r.ok > 0 and r.rejected > 0 and r.errors == 0, r
        bad = httpx.post(f"{s.url}/v1/models/mlp_v1/predict", content=body)
        assert bad.status_code in (200, 429)
        if bad.status_code == 429:
            assert int(bad.headers["Retry-After"]) >= 1
        metrics = httpx.get(f"{s.url}/metrics").text
        assert "chipfit_rejections_total" in metrics and "chipfit_batch_size_bucket" in metrics
        assert 'chipfit_queue_depth{model="mlp_v1",version="1"}' in metrics
        assert httpx.get(f"{s.url}/healthz").status_code == 200
    finally:
        s.stop()


def test_max_batch_1_serves_one_request_at_a_time(artifacts: dict[str, Path], cli_run: Any) -> None:
    s = ServeProcess(str(artifacts["v1"]), "--max-batch", "1", "--slo-p99-ms", "200", "--no-access-log")
    try:
        out = json.loads(cli_run("loadtest", s.url, "--model", "mlp_v1", "--rate", "300", "--duration", "1", "--json"))
        assert out["ok"] > 100 and out["errors"] == 0 and out["p99_ms"] is not None
        metrics = httpx.get(f"{s.url}/metrics").text
        count = _metric(metrics, 'chipfit_batch_size_count{model="mlp_v1",version="1"}')
        total = _metric(metrics, 'chipfit_batch_size_sum{model="mlp_v1",version="1"}')
        assert count == total > 0  # every batch had one row
    finally:
        s.stop()


def _metric(text: str, key: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(key)))


def _digits_model(path: Path, hidden: int, epochs: int) -> Path:
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    x, y = load_digits(return_X_y=True)
    xt, yt = torch.tensor(x[:1200] / 16.0, dtype=torch.float32), torch.tensor(y[:1200])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)) if hidden else nn.Linear(64, 10)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, 64),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def test_cascade_keeps_accuracy_within_the_bound_and_serves_as_one_endpoint(tmp_path: Path, cli_run: Any) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    ev = {"x": (x[1200:] / 16.0).astype(np.float32), "labels": y[1200:].astype(np.int64)}
    np.savez(tmp_path / "eval.npz", **ev)
    fast = _fit(_digits_model(tmp_path / "fast.onnx", 0, 15), {"x": ev["x"]}, tmp_path / "fast", tmp_path)
    acc = _fit(_digits_model(tmp_path / "acc.onnx", 128, 150), {"x": ev["x"]}, tmp_path / "acc", tmp_path)
    r = json.loads(
        cli_run(
            "cascade",
            str(fast),
            str(acc),
            "--data",
            str(tmp_path / "eval.npz"),
            "--max-accuracy-drop",
            "0.01",
            "--out",
            str(tmp_path / "casc"),
            "--json",
        )
    )
    assert r["accuracy_fast"] < r["accuracy_accurate"] - 0.01  # the fast model alone would break the bound
    assert r["accuracy"] >= r["accuracy_accurate"] - 0.01 - 1e-9
    assert 0 < r["fast_share"] < 1 and r["expected_ms"] <= r["fast_ms"] + r["accurate_ms"]
    assert "must be in [0, 1)" in cli_run(
        "cascade", str(fast), str(acc), "--data", str(tmp_path / "eval.npz"), "--max-accuracy-drop", "2", code=2
    )
    np.savez(tmp_path / "other.npz", y=ev["x"], labels=ev["labels"])
    assert "lacks the model's inputs" in cli_run(
        "cascade", str(fast), str(acc), "--data", str(tmp_path / "other.npz"), code=2
    )
    np.savez(tmp_path / "nolabels.npz", x=ev["x"])
    assert "add a 'labels' array" in cli_run(
        "cascade", str(fast), str(acc), "--data", str(tmp_path / "nolabels.npz"), code=2
    )
    s = ServeProcess(f"digits={tmp_path / 'casc'}", "--slo-p99-ms", "100", "--no-access-log")
    try:
        body = {"inputs": {"x": ev["x"][:64].tolist()}}
        out = httpx.post(f"{s.url}/v1/models/digits/predict", json=body, timeout=30)
        assert out.status_code == 200, out.text
        pred = np.array(out.json()["outputs"]["logits"]).argmax(1)
        assert (pred == ev["labels"][:64]).mean() > 0.85
        info = httpx.get(f"{s.url}/v1/models").json()["models"][0]
        assert info["kind"] == "cascade" and info["cascade"]["threshold"] == pytest.approx(r["threshold"])
        metrics = httpx.get(f"{s.url}/metrics").text
        fast_rows = _metric(metrics, 'chipfit_cascade_fast_rows_total{model="digits",version="1"}')
        rows = _metric(metrics, 'chipfit_cascade_rows_total{model="digits",version="1"}')
        assert rows == 64 and 0 < fast_rows <= 64
    finally:
        s.stop()


def test_ray_serve_deploys_the_same_app(artifacts: dict[str, Path], local_ray: Any) -> None:
    pytest.importorskip("ray.serve")
    from ray import serve

    from chipfit.serve.ray_serve import deploy
    from chipfit.serve.server import ServeOptions

    port = free_port()
    try:
        deploy(ServeOptions([f"mlp={artifacts['v1']}"], port=port, slo_p99_ms=100, replicas=2, access_log=False))
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


def test_the_batcher_batches_under_load_and_runs_a_lone_request_at_once() -> None:
    import asyncio

    from chipfit.serve.batcher import AdaptiveBatcher

    w = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    sizes: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.002)  # a model whose cost is mostly per call: batching pays
        return [feeds["x"] @ w]

    async def drive(batcher: AdaptiveBatcher, n: int, gap: float) -> tuple[list[np.ndarray], list[float]]:
        xs = [np.full((1, 16), i, np.float32) for i in range(n)]

        async def one(i: int) -> tuple[np.ndarray, float]:
            await asyncio.sleep(i * gap)
            t0 = time.perf_counter()
            out = await batcher.submit({"x": xs[i]}, 1)
            return out["y"], time.perf_counter() - t0

        res = await asyncio.gather(*(one(i) for i in range(n)))
        return [r[0] for r in res], [r[1] for r in res]

    adaptive = AdaptiveBatcher(  # an SLO and a queue that admit everything: batching is under test here
        model, ["y"], 0.5, max_batch=32, max_queue=1000, on_batch=lambda r, s, q: sizes.append(r)
    )
    one_at_a_time = AdaptiveBatcher(model, ["y"], 10.0, max_batch=1)
    try:
        got, _ = asyncio.run(drive(adaptive, 200, 0.0002))  # 5000/s offered, 500/s one at a time
        ref, _ = asyncio.run(drive(one_at_a_time, 50, 0.0))
        assert max(sizes) > 4 and len(sizes) < 200  # batched
        for i, out in enumerate(got[:50]):  # each request got its own rows back, as one at a time gives them
            np.testing.assert_allclose(out, ref[i], rtol=1e-6)
        sizes.clear()
        _, lat = asyncio.run(drive(adaptive, 5, 0.05))  # a lone request at a time: run at once, no window
        assert sizes == [1] * 5  # each ran alone, at once: no window waiting for company
        assert float(np.median(lat)) < 0.02 and max(lat) < 0.1  # (a 2 ms model; loose for a busy CI machine)
    finally:
        adaptive.close()
        one_at_a_time.close()


def test_the_latency_model_scales_the_profile_by_what_it_observes_and_never_falls_with_the_batch() -> None:
    from chipfit.serve.latency import LatencyModel

    profile = [{"batch": 1, "p50_ms": 2.0}, {"batch": 8, "p50_ms": 4.0}, {"batch": 32, "p50_ms": 10.0}]
    m = LatencyModel(profile, min_samples=8)
    assert m.typical(8) == pytest.approx(0.004) and m.typical(16) == pytest.approx(0.006)
    for _ in range(8):
        m.observe(1, 0.006)  # the server runs 3× slower than fit measured (it shares its cores)
    assert m.typical(1) == pytest.approx(0.006)
    assert m.typical(8) == pytest.approx(0.012) and m.typical(32) == pytest.approx(0.030)  # the profile × 3
    for _ in range(8):
        m.observe(8, 0.005)  # observed faster than batch 1: noise, not a law
    sizes = [1, 2, 4, 8, 16, 32, 64]
    assert all(m.typical(a) <= m.typical(b) for a, b in itertools.pairwise(sizes))
    assert all(m.p99(a) <= m.p99(b) for a, b in itertools.pairwise(sizes))
    assert m.largest_within(0.0, 64) == 1 and m.largest_within(1.0, 64) == 64


def test_admission_counts_the_queue_in_batches_not_one_row_at_a_time() -> None:
    import asyncio

    from chipfit.serve.batcher import AdaptiveBatcher, Overloaded

    release = threading.Event()

    def model(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        release.wait(10)  # the first batch holds the model until the queue behind it is built
        return [feeds["x"]]

    # profile: 40 ms for 1 row, 80 ms for 16 — memory-bound, batching nearly free; SLO 400 ms (long enough
    # that a stalled CI machine does not make the queued requests late before the model is released)
    profile = [{"batch": 1, "p50_ms": 40.0}, {"batch": 16, "p50_ms": 80.0}]
    b = AdaptiveBatcher(model, ["y"], 0.400, profile, max_batch=16, max_queue=1000)

    async def fill(n: int) -> tuple[int, int]:
        futs, rejected = [], 0
        for i in range(n):
            try:
                futs.append(b.submit({"x": np.full((1, 2), i, np.float32)}, 1))
            except Overloaded:
                rejected += 1
            await asyncio.sleep(0.001 if i == 0 else 0)  # the first one starts running (and holds the model)
        release.set()
        results = await asyncio.gather(*futs, return_exceptions=True)
        return sum(not isinstance(r, BaseException) for r in results), rejected

    try:
        # 16 rows queued behind a running row: batches of up to 16 rows (≈ 80 ms each) meet 400 ms; one row at
        # a time (40 ms each) would not, and a row-by-row estimate turned them away
        served, rejected = asyncio.run(fill(17))
        assert rejected == 0 and served == 17
        assert b.drain_batch() >= 8
    finally:
        b.close()


def test_a_batch_is_not_shrunk_for_its_oldest_request_when_that_would_make_the_rest_late() -> None:
    import asyncio

    from chipfit.serve.batcher import AdaptiveBatcher, Overloaded

    release = threading.Event()
    sizes: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        release.wait(10)
        return [feeds["x"]]

    # 40 ms for 1 row, 80 ms for 16, SLO 400 ms; the oldest queued request has waited ~340 ms when the model is
    # free: alone it would finish in time (40 ms), with the 7 behind it not (~61 ms) — but they would, and
    # serving it alone first would make them wait another 40 ms for nothing on a model where 8 cost about 1.
    profile = [{"batch": 1, "p50_ms": 40.0}, {"batch": 16, "p50_ms": 80.0}]
    b = AdaptiveBatcher(
        model, ["y"], 0.400, profile, max_batch=16, max_queue=1000, on_batch=lambda r, s, q: sizes.append(r)
    )

    async def run() -> None:
        x = np.zeros((1, 2), np.float32)
        futs = [b.submit({"x": x}, 1)]  # holds the model
        await asyncio.sleep(0.01)
        futs.append(b.submit({"x": x}, 1))  # the oldest queued
        await asyncio.sleep(0.33)
        futs += [b.submit({"x": x}, 1) for _ in range(7)]
        release.set()
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert all(not isinstance(r, BaseException) or isinstance(r, Overloaded) for r in results)

    try:
        asyncio.run(run())
        # after the first row: one batch with everyone (or, on a stalled machine, the 7 after the oldest was
        # rejected as late) — not the oldest alone
        assert sizes[0] == 1 and sizes[1] >= 7, sizes
    finally:
        b.close()


def test_several_models_and_named_versions_in_one_server(artifacts: dict[str, Path], cli_run: Any) -> None:
    s = ServeProcess(f"a@3={artifacts['v1']}", f"b={artifacts['v2']}", "--no-access-log")
    try:
        models = {(m["name"], m["version"]) for m in httpx.get(f"{s.url}/v1/models").json()["models"]}
        assert models == {("a", 3), ("b", 1)}
        body = {"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}
        assert httpx.post(f"{s.url}/v1/models/a@3/predict", json=body).status_code == 200
        assert httpx.post(f"{s.url}/v1/models/b/predict", json=body).status_code == 200
    finally:
        s.stop()
    (artifacts["work"] / "empty").mkdir(exist_ok=True)
    assert "not a chipfit artifact" in cli_run("serve", str(artifacts["work"] / "empty"), code=2)
    assert "version after @ must be a number" in cli_run("serve", f"a@x={artifacts['v1']}", code=2)
    assert "--arrival must be" in cli_run("loadtest", "http://127.0.0.1:9", "--model", "a", "--arrival", "x", code=2)
    assert "must be positive" in cli_run("loadtest", "http://127.0.0.1:9", "--model", "a", "--rate", "-1", code=2)
    assert "cannot reach" in cli_run("loadtest", "http://127.0.0.1:9", "--model", "a", code=2)
    assert "(extra [ray])" in " ".join(cli_run("serve", "--help").split())  # not eaten as rich markup
    other = artifacts["work"] / "c.onnx"
    make_mlp(other, n_in=5)
    assert "differ in signature" in cli_run(
        "cascade",
        str(artifacts["v1"]),
        str(_fit(other, {"x": np.zeros((16, 5), np.float32)}, artifacts["work"] / "mlp5", artifacts["work"])),
        "--data",
        str(other),
        code=2,
    )
