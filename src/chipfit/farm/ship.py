"""Shipping a task's files to a node that does not share the driver's filesystem.

The driver lists every file a task reads (the model and its external data, the evaluation and calibration data,
each step of the candidate's variant as the driver built it, the reference outputs) with its sha256; each file's
bytes go into Ray's object store once per content (``Shipper``). A node that sees every file where the driver has
it measures in place (a local farm, a shared filesystem). Otherwise it mirrors the driver's tree under its own
cache (``$CHIPFIT_HOME/farm-cache/``): each file by content from its blob cache, fetched only when missing, and
the job's paths rewritten to the mirror (``materialize``). The variant steps land where ``apply_passes`` looks
for them, so a node never builds a variant the driver built.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from chipfit.measure.job import QualityJob, WorkerJob

__all__ = ["ShippedFile", "Shipper", "manifest", "materialize", "mirror_path"]


class ShippedFile(BaseModel):
    """A file a task reads: where the driver has it, its content's sha256 and size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    sha256: str
    size: int


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256: each file hashed once per run


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def manifest(paths: Iterable[Path | None]) -> tuple[ShippedFile, ...]:
    """Every file among ``paths`` (folders: the files in them, recursively), each once."""
    files: dict[Path, ShippedFile] = {}
    for p in paths:
        if p is None or not p.exists():
            continue
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file() and f not in files:
                files[f] = ShippedFile(path=f, sha256=_sha256(f), size=f.stat().st_size)
    return tuple(files.values())


class Shipper:
    """The driver's side: each content put into Ray's object store once."""

    def __init__(self, ray: Any):
        self.ray = ray
        self.refs: dict[str, Any] = {}

    def refs_for(self, files: Iterable[ShippedFile]) -> dict[str, Any]:
        out = {}
        for f in files:
            if f.sha256 not in self.refs:
                self.refs[f.sha256] = self.ray.put(f.path.read_bytes())
            out[f.sha256] = self.refs[f.sha256]
        return out


def _in_place(files: Iterable[ShippedFile]) -> bool:
    return all(f.path.is_file() and f.path.stat().st_size == f.size for f in files)


def mirror_path(root: Path, path: Path) -> Path:
    """``path`` (the driver's, absolute) under the node's mirror ``root``."""
    return root / path.resolve().relative_to(path.resolve().anchor)


def materialize(
    job: WorkerJob, workdir: Path, files: Iterable[ShippedFile], fetch: Callable[[str], bytes], cache: Path
) -> tuple[WorkerJob, Path, Path | None]:
    """The job (and its scratch folder) as this node runs it, and the mirror root (None: in place)."""
    files = list(files)
    if _in_place(files):
        return job, workdir, None
    blobs, root = cache / "blobs", cache / "mirror"
    blobs.mkdir(parents=True, exist_ok=True)
    for f in files:
        blob = blobs / f.sha256
        if not blob.exists():
            tmp = blob.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(fetch(f.sha256))
            os.replace(tmp, blob)
        dest = mirror_path(root, f.path)
        if not (dest.is_file() and dest.stat().st_size == f.size):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            tmp.write_bytes(blob.read_bytes())
            os.replace(tmp, dest)
    return _rewrite(job, root), mirror_path(root, workdir), root


def _rewrite(job: WorkerJob, root: Path) -> WorkerJob:
    def m(p: Path | None) -> Path | None:
        return None if p is None else mirror_path(root, p)

    q = job.quality
    quality: Mapping[str, Any] = {"save_reference": m(q.save_reference), "reference": m(q.reference)}
    for p in (quality["save_reference"], quality["reference"]):
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
    home, variants = m(job.home), m(job.variants_dir)
    for d in (home, variants):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    return job.model_copy(
        update={
            "model_path": m(job.model_path),
            "data_dir": m(job.data_dir),
            "calib_dir": m(job.calib_dir),
            "variants_dir": variants,
            "home": home,
            "quality": QualityJob.model_validate({**q.model_dump(), **quality}),
        }
    )
