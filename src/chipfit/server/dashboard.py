"""The team service's web dashboard: server-rendered pages (Jinja2) over the service, plus its static files.

Pages: ``/login``; ``/`` (the new-job form, the team's jobs with live progress, spend against the quota);
``/jobs/{id}`` (per-target comparison, latency/quality plot with the feasible region shaded, the sortable
candidate table, the artifact download); ``/compare`` (several finished jobs side by side). Every page but the
login needs the session cookie (else a redirect to /login). The pages only read; what they change (uploads, job
submission, cancelling) goes through the REST API from ``static/dashboard.js`` with the session's CSRF token, so
that a refusal (402 over quota, 413 too large, 422 bad input) shows the API's own message in the page.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from chipfit.server.auth import csrf_token, team_from_cookie
from chipfit.server.dashboard_plots import pareto_svg, recommend_svg
from chipfit.server.dashboard_views import compare_rows, fmt, sections, spec_text, target_rows
from chipfit.server.errors import NotFound
from chipfit.server.records import Job, Team
from chipfit.server.service import ServerService
from chipfit.spec import OBJECTIVES

__all__ = ["install", "router"]

_HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(_HERE / "templates"))
DEFAULT_BACKENDS = ("onnxruntime", "openvino")  # checked in the form: quick to build; the others are a tick away


def _money(v: Any) -> str:
    v = float(v or 0.0)
    if v == 0:
        return "0"
    return f"{v:.2g}" if abs(v) < 0.01 else f"{v:,.2f}"


def _pct(v: Any) -> str:
    if not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        return "–"
    return f"±{100 * v:.0f}%" if v >= 0.005 else "<1%"


templates.env.filters["fmt"] = fmt
templates.env.filters["money"] = _money
templates.env.filters["pct"] = _pct


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and its /static files on ``app``."""
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    app.include_router(router)


def _service(request: Request) -> ServerService:
    service: ServerService = request.app.state.service
    return service


def _when(t: dt.datetime | None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', else the UTC date and time."""
    if t is None:
        return ""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    s = (dt.datetime.now(dt.UTC) - t).total_seconds()
    if s < 60:
        return f"{max(0, int(s))} s ago"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _artifacts(job: Job) -> list[dict[str, Any]]:
    """The download buttons: one for a local fit with a winner, one per target with a winner for a farm fit, and
    for a recommendation the winner of its measurements here (its row measured on this machine met the bounds)."""
    r = job.result or {}
    url = f"/api/jobs/{job.id}/artifact"
    if isinstance(r.get("targets"), dict):
        return [{"target": t, "url": f"{url}?target={t}"} for t, v in r["targets"].items() if v.get("winner")]
    if isinstance(r.get("targets"), list):
        here = [t for t in r["targets"] if t.get("source") == "measured" and t.get("meets")]
        return [{"target": "", "url": url, "label": "this machine's best"}] if here else []
    return [{"target": "", "url": url}] if r.get("winner") else []


def _job_view(job: Job, names: dict[str, str]) -> dict[str, Any]:
    req = job.request or {}
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "done": job.progress[0],
        "total": job.progress[1],
        "spend_usd": job.spend_usd,
        "bound_usd": job.bound_usd,
        "model_name": names.get(job.model_id, job.model_id),
        "created": job.created_at.isoformat() if job.created_at else "",
        "created_text": _when(job.created_at),
        "finished_text": _when(job.finished_at),
        "spec_text": spec_text(req.get("spec") or {}),
        "backends": req.get("backends") or [],
        "targets": req.get("targets") or [],
        "error": job.error,
        "artifacts": _artifacts(job) if job.state in ("done", "stopped_by_quota") else [],
        "result": job.result,
    }


def _names(service: ServerService, team: Team) -> dict[str, str]:
    return {m.id: m.name for m in service.list_models(team)}


# The pages run only the server's own script (no inline script, nothing from elsewhere); inline SVG and the
# templates' style attributes need inline styles. No framing (clickjacking), forms post only here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _page(request: Request, name: str, team: Team | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    usage = _service(request).usage(team) if team else None
    base = {"team": team, "csrf": csrf_token(request) if team else "", "usage": usage}
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _login_redirect() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, error: str | None = None) -> Response:
    if team_from_cookie(request) is not None:
        return RedirectResponse("/", status_code=303)
    message = "That token was not accepted: paste the whole token (team id, a dot, the secret)." if error else None
    return _page(request, "login.html", None, error=message, page="login")


@functools.lru_cache(maxsize=1)
def _backend_choices() -> tuple[dict[str, Any], ...]:
    """The built-in backends (but "null", the reference interpreter) and whether their library, named as the
    backend, is installed: found, not imported (TVM's import takes seconds)."""
    from chipfit.backends import BUILTIN

    out = []
    for name in (n for n in BUILTIN if n != "null"):
        available = importlib.util.find_spec(name) is not None
        reason = "" if available else f"pip install 'chipfit[{name}]'"
        out.append({"name": name, "available": available, "default": name in DEFAULT_BACKENDS, "reason": reason})
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _catalog() -> tuple[dict[str, Any], ...]:
    from chipfit.hardware.catalog import load_catalog

    return tuple({"name": t.name, "title": t.title, "usd_per_hour": t.usd_per_hour} for t in load_catalog().values())


def _price_text(request: Request) -> str:
    from chipfit.errors import ChipfitError
    from chipfit.server.quota import price_of

    config = request.app.state.service.config
    if config.farm:
        return f"jobs run on the farm at {config.farm}, at the sum of the chosen targets' $/hour"
    try:
        name, usd, _ = price_of(config.local_target)
    except ChipfitError as exc:
        return f"the local pool has no price ({exc})"
    return f"this server's pool is priced as {name}, ${usd:g}/hour of measurement"


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> Response:
    team = team_from_cookie(request)
    if team is None:
        return _login_redirect()
    service = _service(request)
    models = service.list_models(team)
    names = {m.id: m.name for m in models}
    latest_data: dict[str, Any] = {}
    for d in service.list_data(team):  # newest first: each model's latest evaluation set
        latest_data.setdefault(d.model_id, d)
    jobs = [_job_view(j, names) for j in service.list_jobs(team)]
    farm = request.app.state.service.config.farm
    return _page(
        request,
        "index.html",
        team,
        page="jobs",
        jobs=jobs,
        models=[
            {
                "id": m.id,
                "name": m.name,
                "sha256": m.sha256,
                "data_id": latest_data[m.id].id if m.id in latest_data else "",
                "data_name": latest_data[m.id].name if m.id in latest_data else "",
            }
            for m in models
        ],
        backends=_backend_choices(),
        targets=_catalog(),
        farm=farm,
        objectives=OBJECTIVES,
        default_budget="1m",
        price_text=_price_text(request),
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    team = team_from_cookie(request)
    if team is None:
        return _login_redirect()
    service = _service(request)
    try:
        job = service.get_job(team, job_id)
    except NotFound as exc:
        return _page(request, "error.html", team, page="jobs", message=str(exc), status_code=404)
    view = _job_view(job, _names(service, team))
    secs = sections(job.kind, job.result)
    if not secs and job.result is None and job.state == "running":
        partial = {"candidates": service.job_candidates(team, job_id), "pareto": [], "winner": None}
        secs = sections("fit", partial, (job.request or {}).get("spec"), partial=True)
    for s in secs:
        s["svg"] = pareto_svg(s) if s["rows"] else ""
    comparison = target_rows(job.kind, job.result)
    rec_svg = ""
    if job.result and isinstance(job.result.get("targets"), list):
        rec_svg = recommend_svg(job.result["targets"], (job.result.get("spec") or {}).get("max_p99_ms"))
    return _page(
        request,
        "job.html",
        team,
        page="jobs",
        job=view,
        sections=secs,
        comparison=comparison,
        recommend_svg=rec_svg,
    )


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, jobs: list[str] = Query(default_factory=list)) -> Response:
    team = team_from_cookie(request)
    if team is None:
        return _login_redirect()
    service = _service(request)
    names = _names(service, team)
    finished = [_job_view(j, names) for j in service.list_jobs(team) if j.result is not None]
    by_id = {j["id"]: j for j in finished}
    picked = [j for j in jobs if j in by_id]
    rows = compare_rows([by_id[j] for j in picked])
    return _page(request, "compare.html", team, page="compare", finished=finished, picked=picked, rows=rows)
