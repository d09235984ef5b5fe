"""Team tokens, the dashboard's session cookie and CSRF protection.

A token is ``<team id>.<secret>`` with ``secret = secrets.token_urlsafe(32)`` (256 random bits). At rest only
``HMAC-SHA256(server key, secret)`` is stored; a request's token is looked up by its id and its HMAC compared
with ``hmac.compare_digest`` (constant time). A slow password hash (argon2, bcrypt) exists to make guessing a
*low-entropy* password from a stolen hash expensive; a 256-bit random secret cannot be guessed however fast the
hash, so a per-request argon2 would only add ~50 ms to every API call (the service's latency goal is a p99 of
50 ms) for no security gain. The HMAC key (``server.key`` in the data dir, made once with ``secrets``, mode
0600) means a stolen database alone does not even allow checking a guess.

The dashboard logs in with the token and keeps a session cookie signed with the same key (itsdangerous): the
team id, a fingerprint of the team's current token hash (rotating the token ends every session) and a CSRF
token. With the cookie, every unsafe method (POST, PUT, PATCH, DELETE) must carry that CSRF token in the
``X-CSRF-Token`` header or a ``csrf_token`` form field, else 403. A bearer token needs no CSRF token (a browser
never sends it on its own). Tokens are never logged.

A server reads a team's row at most once a second for authentication (``ServerService.cached_team``): a token
rotated through the same service object stops working at once; one rotated by another process (the CLI) within
``service.TEAM_TTL_S``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from chipfit.server.service import ServerService, Team

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "SESSION_MAX_AGE_S",
    "csrf_token",
    "current_team",
    "hash_secret",
    "load_key",
    "new_secret",
    "session_cookie",
    "split_token",
    "team_from_cookie",
]

SESSION_COOKIE = "chipfit_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_MAX_AGE_S = 7 * 24 * 3600
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
_SALT = "chipfit-session"


def load_key(path: Path) -> bytes:
    """The server's secret key: read from ``path``, or made once (32 random bytes, mode 0600)."""
    if path.exists():
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"the server key '{path}' is shorter than 32 bytes: delete it to make a new one.")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by another process meanwhile: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(team id, secret)`` of a well-formed token, else None."""
    team_id, sep, secret = token.strip().partition(".")
    if not sep or not team_id or len(secret) < 20 or len(team_id) > 32:
        return None
    return team_id, secret


def _serializer(key: bytes) -> Any:
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(key, salt=_SALT)


def _token_fingerprint(token_hash: str) -> str:
    return token_hash[:16]


def session_cookie(service: ServerService, team: Team) -> tuple[str, str]:
    """A new session for ``team``: the signed cookie value and its CSRF token."""
    csrf = secrets.token_urlsafe(24)
    value = _serializer(service.key).dumps({"t": team.id, "f": _token_fingerprint(team.token_hash), "c": csrf})
    return value, csrf


def _session(request: Request) -> tuple[Team, str] | None:
    """The cookie's team and CSRF token, when the cookie is valid and the team's token unchanged since."""
    from itsdangerous import BadSignature

    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    service: ServerService = request.app.state.service
    try:
        payload = _serializer(service.key).loads(raw, max_age=SESSION_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("t"), str):
        return None
    team = service.cached_team(payload["t"])
    if team is None or not hmac.compare_digest(_token_fingerprint(team.token_hash), str(payload.get("f"))):
        return None
    return team, str(payload.get("c", ""))


def team_from_cookie(request: Request) -> Team | None:
    """The logged-in team of a page request, or None."""
    found = _session(request)
    return found[0] if found else None


def csrf_token(request: Request) -> str:
    """The CSRF token bound to the request's session (empty without a valid session): for forms and scripts."""
    found = _session(request)
    return found[1] if found else ""


async def _csrf_sent(request: Request) -> str:
    sent = request.headers.get(CSRF_HEADER)
    if sent:
        return sent
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()  # cached on the request: the route reads the same form
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def current_team(request: Request) -> Team:
    """FastAPI dependency: the calling team, from ``Authorization: Bearer <token>`` or the session cookie (with
    the CSRF token on unsafe methods). 401 without valid credentials, 403 without the CSRF token."""
    service: ServerService = request.app.state.service
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        team = service.team_for_token(token) if scheme.lower() == "bearer" else None
        if team is None:
            raise HTTPException(
                401,
                "Invalid or revoked team token: send 'Authorization: Bearer <token>' with the token that "
                "`chipfit server team create` (or rotate-token) printed.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return team
    found = _session(request)
    if found is None:
        raise HTTPException(
            401,
            "Not logged in: send 'Authorization: Bearer <team token>', or log in at POST /api/session.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    team, csrf = found
    if request.method in _UNSAFE:
        sent = await _csrf_sent(request)
        if not sent or not hmac.compare_digest(sent, csrf):
            raise HTTPException(
                403,
                f"Missing or wrong CSRF token: a request with the session cookie must send the session's CSRF "
                f"token in the {CSRF_HEADER} header or a '{CSRF_FIELD}' form field.",
            )
    return team
