"""The team service's settings: where its files and database live, where jobs run, what an upload may weigh.
A config only stores and validates; the service (``service.py``) and the app (``app.py``) act on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "ServerConfig"]

DEFAULT_MAX_UPLOAD_MB = 512.0


@dataclass(frozen=True)
class ServerConfig:
    """``data_dir`` holds the server key, uploads (named by hash), job folders, chipfit's home for the jobs and,
    by default, the SQLite database; ``store_url`` any SQLAlchemy URL instead (the results store and the service's
    tables share it). ``farm``: run jobs on the device farm at this address (host:port) instead of the local pool.
    ``local_target``: the catalogue target whose $/hour prices the local pool (default: the one this machine
    matches). ``run_worker``: start the local job worker with the app (off for an app that only reads).
    ``preload_backends``: the next job's process, started ahead while the worker is idle, imports every backend's
    library too (a job that tries every backend then measures seconds sooner; it holds ~0.5 GB while waiting)."""

    data_dir: Path
    store_url: str | None = None
    farm: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    local_target: str | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    run_worker: bool = True
    preload_backends: bool = True
    poll_s: float = field(default=0.1, compare=False)  # how often the worker and event streams look at the queue

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be a positive number of MB; got {self.max_upload_mb!r}.")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535; got {self.port!r}.")

    @property
    def url(self) -> str:
        """The database: ``store_url``, else a SQLite file in the data dir."""
        return self.store_url or f"sqlite:///{self.data_dir / 'chipfit.db'}"

    @property
    def home(self) -> Path:
        """chipfit's home for the jobs (variants, reference outputs, the measurement lock)."""
        return self.data_dir / "home"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "server.key"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
