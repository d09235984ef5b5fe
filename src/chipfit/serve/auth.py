"""Who may call what on ``chipfit serve``. Two tokens: ``token`` (``--token`` / ``CHIPFIT_SERVE_TOKEN``) guards
every route but the health probes; ``admin_token`` (``--admin-token`` / ``CHIPFIT_SERVE_ADMIN_TOKEN``) is the
only key to the admin routes — those that load a path or change what is served — which do not exist at all
without it (``--token`` alone never enables them). ``Authorization: Bearer <token>``, the scheme in any case;
tokens are compared in constant time."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

__all__ = ["ADMIN_DISABLED", "Access", "bearer", "is_admin_path"]

ADMIN_DISABLED = (
    "admin routes (loading a version, rollback) are disabled: start the server with --admin-token "
    "(or CHIPFIT_SERVE_ADMIN_TOKEN) and send that token to use them."
)
_ADMIN = re.compile(r"^/v1/models/[^/]+/(versions|rollback)$")


def is_admin_path(method: str, path: str) -> bool:
    """A route that loads a path or changes what is served."""
    return method == "POST" and _ADMIN.match(path) is not None


def bearer(header: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        return None
    return value.strip()


def _same(got: bytes | None, expected: bytes | None) -> bool:
    if expected is None:
        return False
    return hmac.compare_digest(got or b"", expected)  # constant time in the token's content


@dataclass(frozen=True)
class Access:
    """The decision for one request: HTTP status (0: allowed) and the message to answer with."""

    token: bytes | None
    admin_token: bytes | None

    @classmethod
    def of(cls, token: str | None, admin_token: str | None) -> Access:
        return cls(token.encode() if token else None, admin_token.encode() if admin_token else None)

    def check(self, method: str, path: str, authorization: bytes | None, open_path: bool) -> tuple[int, str]:
        got = bearer(authorization)
        is_admin = _same(got, self.admin_token)
        if is_admin_path(method, path):
            if self.admin_token is None:
                return 404, ADMIN_DISABLED
            if is_admin:
                return 0, ""
            if got is None:
                return 401, "admin routes need the admin token: send Authorization: Bearer <admin token>."
            return 403, "admin routes need the admin token (--admin-token); the token sent is not it."
        if open_path or self.token is None or is_admin or _same(got, self.token):
            return 0, ""
        return 401, "missing or wrong bearer token: send Authorization: Bearer <token>."
