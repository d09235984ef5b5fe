"""Which artifacts may run native code here: a compiled library in an artifact (TVM's ``model.so``) is loaded
with ``dlopen``, which runs its code, so a hash in the manifest proves nothing (whoever crafted the artifact
wrote the hash too). chipfit marks the artifacts it builds with an HMAC of their file hashes under a secret
key kept in ``$CHIPFIT_HOME/keys/artifact.key`` (created on first use, mode 0600): an artifact built by this
home verifies; any other that ships native code is refused unless the user opts in (``trust_native=True``,
``CHIPFIT_TRUST_NATIVE=1``, ``chipfit serve --trust-native``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets

from chipfit.workspace import default_home

__all__ = ["TRUST_ENV", "mark", "native_trusted", "verifies"]

TRUST_ENV = "CHIPFIT_TRUST_NATIVE"


def _key(create: bool) -> bytes | None:
    path = default_home() / "keys" / "artifact.key"
    try:
        return path.read_bytes()
    except OSError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def _digest(key: bytes, files: dict[str, str]) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def mark(files: dict[str, str]) -> str:
    """The provenance mark of an artifact whose files have these sha256s, under this home's key."""
    key = _key(create=True)
    return _digest(key, files) if key else ""


def verifies(files: dict[str, str], provenance: object) -> bool:
    """Whether ``provenance`` is this home's mark of ``files`` (constant-time comparison)."""
    key = _key(create=False)
    return bool(key) and isinstance(provenance, str) and hmac.compare_digest(_digest(key, files), provenance)  # type: ignore[arg-type]


def native_trusted(explicit: bool = False) -> bool:
    """The user's opt-in to run native code from artifacts this home did not build."""
    return explicit or os.environ.get(TRUST_ENV, "") in ("1", "true", "yes")
