"""``/docs`` works offline: the Swagger UI page references no http(s) asset (no CDN), and every script,
stylesheet and icon it references is served by the app itself from the installed swagger-ui-bundle.
``mount_docs`` is one function any FastAPI app can use (the serve app does)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from chipfit.serve.app import create_app
from chipfit.serve.docs import ASSETS, mount_docs
from chipfit.serve.metrics import Metrics
from chipfit.serve.registry import Registry


def _assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""url\s*:\s*["']([^"']+)["']""", html
    )


def _check_offline(client: Any, path: str = "/docs") -> list[str]:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "SwaggerUIBundle" in html
    assert not re.search(r"https?://", html), "the docs page must not load anything from the network"
    refs = _assets(html)
    scripts = [r for r in refs if r.endswith(".js")]
    assert scripts and any(r.endswith(".css") for r in refs)
    for ref in refs:
        got = client.get(ref)
        assert got.status_code == 200, ref
        if ref.endswith(".js"):
            assert b"SwaggerUIBundle" in got.content and got.headers["content-type"].startswith("text/javascript")
        elif ref.endswith(".css"):
            assert got.headers["content-type"].startswith("text/css") and len(got.content) > 10_000
    return refs


def test_the_serve_apps_docs_page_loads_nothing_from_a_cdn_and_its_assets_answer() -> None:
    app = create_app(Registry(slo_s=0.01, max_batch=8), Metrics(), log_access=False)
    with TestClient(app) as client:
        refs = _check_offline(client)
        assert "/openapi.json" in refs and client.get("/openapi.json").status_code == 200
        assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load from a CDN
        assert client.get("/docs/assets/../../pyproject.toml").status_code == 404
        assert client.get("/docs/assets/index.html").status_code == 404  # only the listed assets are served


def test_mount_docs_serves_any_fastapi_app_and_refuses_one_with_the_cdn_page() -> None:
    app = FastAPI(title="team", docs_url=None)

    @app.get("/ping")
    async def ping() -> Any:
        return {"ok": True}

    mount_docs(app, path="/api-docs")
    with TestClient(app) as client:
        refs = _check_offline(client, "/api-docs")
        assert {r.rsplit("/", 1)[-1] for r in refs} >= set(ASSETS)
        assert "/ping" in client.get("/openapi.json").json()["paths"]
    with pytest.raises(ValueError, match="docs_url=None"):
        mount_docs(FastAPI())
