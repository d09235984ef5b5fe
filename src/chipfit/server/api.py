"""The REST API under ``/api`` (JSON; OpenAPI at ``/docs``). Every route needs the calling team
(``auth.current_team``); another team's ids answer 404. Service errors answer their own status with
``{"detail": message}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from chipfit.server.auth import SESSION_COOKIE, SESSION_MAX_AGE_S, current_team, session_cookie
from chipfit.server.jobs import JobRequest
from chipfit.server.service import ServerService, Team

__all__ = ["router"]

router = APIRouter(prefix="/api")
TeamDep = Annotated[Team, Depends(current_team)]
STREAM_POLL_S = 0.25  # an event stream reads new events this often (light on a machine that is measuring)


def _service(request: Request) -> ServerService:
    service: ServerService = request.app.state.service
    return service


@router.post("/session", tags=["session"])
async def login(request: Request) -> Response:
    """Log in with a team token (form or JSON field ``token``): sets the session cookie. A form post is redirected
    to the dashboard (303); a JSON post answers ``{"team", "csrf_token"}``."""
    ctype = request.headers.get("content-type", "")
    is_form = ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))
    if is_form:
        token = (await request.form()).get("token")
    else:
        try:
            body = await request.json()
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
    service = _service(request)
    team = service.team_for_token(token) if isinstance(token, str) else None
    if team is None:
        if is_form:
            return RedirectResponse("/login?error=1", status_code=303)
        return JSONResponse({"detail": "Invalid team token: paste the token the administrator gave you."}, 401)
    value, csrf = session_cookie(service, team)
    response: Response = (
        RedirectResponse("/", status_code=303) if is_form else JSONResponse({"team": team.name, "csrf_token": csrf})
    )
    secure = request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="lax", secure=secure)
    return response


@router.post("/session/logout", tags=["session"])
async def logout(request: Request) -> Response:
    """End the session (clears the cookie)."""
    ctype = request.headers.get("content-type", "")
    is_form = ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))
    response: Response = RedirectResponse("/login", status_code=303) if is_form else JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/models", tags=["models"])
async def list_models(request: Request, team: TeamDep) -> list[dict[str, Any]]:
    return [m.to_dict() for m in await run_in_threadpool(_service(request).list_models, team)]


@router.post("/models", tags=["models"], status_code=201)
async def upload_model(request: Request, team: TeamDep, file: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
    """Upload a model: one ``file`` part with an .onnx (plus one part per external data file it references) or a
    .pt2 ExportedProgram. Answers ``{"id", "name", "sha256", "inputs", "outputs"}`` (the same record again for a
    model the team uploaded before)."""
    record = await run_in_threadpool(_service(request).add_model, team, file)
    return record.to_dict()


@router.get("/models/{model_id}", tags=["models"])
async def get_model(request: Request, team: TeamDep, model_id: str) -> dict[str, Any]:
    service = _service(request)
    record = await run_in_threadpool(service.get_model, team, model_id)
    data = await run_in_threadpool(service.list_data, team, model_id)
    return {**record.to_dict(), "data": [d.to_dict() for d in data]}


@router.post("/models/{model_id}/data", tags=["models"], status_code=201)
async def upload_data(request: Request, team: TeamDep, model_id: str, file: UploadFile = File()) -> dict[str, Any]:
    """Upload an evaluation set for the model: an .npz with one array per model input (named as the input) and
    optional ``labels``, checked as ``chipfit fit --data`` checks it. Answers ``{"id", ...}``."""
    record = await run_in_threadpool(_service(request).add_data, team, model_id, file)
    return record.to_dict()


@router.post("/jobs", tags=["jobs"], status_code=201)
async def submit_job(request: Request, team: TeamDep, body: JobRequest) -> dict[str, Any]:
    """Queue a fit or recommend job. 402 when the team's remaining quota cannot pay for its time budget; 422 for
    a bad spec, or no time_budget under a quota."""
    job = await run_in_threadpool(_service(request).submit_job, team, body)
    return {"id": job.id, "state": job.state, "bound_usd": job.bound_usd}


@router.get("/jobs", tags=["jobs"])
async def list_jobs(request: Request, team: TeamDep) -> list[dict[str, Any]]:
    return [j.to_dict(result=False) for j in await run_in_threadpool(_service(request).list_jobs, team)]


@router.get("/jobs/{job_id}", tags=["jobs"], response_class=JSONResponse)
async def get_job(request: Request, team: TeamDep, job_id: str) -> Response:
    """State (queued|running|done|failed|cancelled|stopped_by_quota), progress, spend and, once ended, the result
    (the JSON of ``chipfit fit --json`` / ``chipfit recommend --json``)."""
    service = _service(request)
    body = service.finished_job_json(team, job_id) or await run_in_threadpool(service.job_json, team, job_id)
    return Response(body, media_type="application/json")


@router.get("/jobs/{job_id}/candidates", tags=["jobs"])
async def job_candidates(request: Request, team: TeamDep, job_id: str) -> list[dict[str, Any]]:
    return await run_in_threadpool(_service(request).job_candidates, team, job_id)


@router.delete("/jobs/{job_id}", tags=["jobs"])
async def cancel_job(request: Request, team: TeamDep, job_id: str) -> dict[str, Any]:
    """Cancel a queued or running job (a running job's process is killed; what it measured stays stored)."""
    job = await run_in_threadpool(_service(request).cancel_job, team, job_id)
    return {"id": job.id, "state": job.state}


@router.get("/jobs/{job_id}/events", tags=["jobs"])
async def job_events(request: Request, team: TeamDep, job_id: str) -> StreamingResponse:
    """Server-sent events: ``state`` changes and each ``candidate`` as it is measured, then ``end`` with the
    final state. Reconnecting with ``Last-Event-ID`` resumes after that event."""
    service = _service(request)
    await run_in_threadpool(service.get_job, team, job_id)  # 404 before the stream starts
    try:
        after = int(request.headers.get("last-event-id", "0"))
    except ValueError:
        after = 0
    poll = max(service.config.poll_s, STREAM_POLL_S)

    async def stream() -> AsyncIterator[str]:
        last = after
        idle = 0.0
        while True:
            events = await run_in_threadpool(service.job_events, team, job_id, last)
            for e in events:
                last = e.id
                yield f"id: {e.id}\nevent: {e.kind}\ndata: {json.dumps(e.data, default=str)}\n\n"
            job = await run_in_threadpool(service.get_job, team, job_id)
            if job.finished and not events:
                end = {"state": job.state, "spend_usd": job.spend_usd, "error": job.error}
                yield f"event: end\ndata: {json.dumps(end)}\n\n"
                return
            if await request.is_disconnected():
                return
            idle = 0.0 if events else idle + poll
            if idle >= 15.0:  # a comment line keeps proxies from closing a quiet stream
                idle = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(poll)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/jobs/{job_id}/artifact", tags=["jobs"])
async def job_artifact(request: Request, team: TeamDep, job_id: str, target: str | None = None) -> FileResponse:
    """The delivered folder as a zip (with a farm: per target, ``?target=``); open it with
    ``chipfit.runtime.load`` once unzipped."""
    path = await run_in_threadpool(_service(request).artifact_zip, team, job_id, target)
    return FileResponse(
        path, media_type="application/zip", filename=f"chipfit-{job_id}{'-' + target if target else ''}.zip"
    )


@router.get("/usage", tags=["usage"])
async def usage(request: Request, team: TeamDep) -> dict[str, Any]:
    """The calling team's spend and quota in dollars (``remaining_usd`` is null without a quota)."""
    return await run_in_threadpool(_service(request).usage, team)
