"""What crosses the driver–node boundary of the farm: a ``FarmTask`` (the typed measurement job of
``measure.job`` and the limits to run it under) and the node's ``FarmReply`` (the worker's result, where and in
which environment it was measured). Serialised and read back only here, with the worker protocol's version.

``run_task`` is what a node runs for each task: the same isolated measurement worker as a local fit
(``measure.runner.run_worker``), at the node's own CPU quota.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chipfit.farm.ship import ShippedFile, materialize
from chipfit.measure.job import PROTOCOL, WorkerJob, WorkerProtocolError, WorkerResult

__all__ = ["FarmReply", "FarmTask", "run_task"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FarmTask(_Frozen):
    """One candidate for one node: the worker job, its time and memory limits, and its scratch folder there."""

    task_id: str = Field(min_length=1)
    target: str
    job: WorkerJob
    timeout_s: float = Field(gt=0)
    memory_limit_mb: int | None = None
    workdir: Path
    files: tuple[ShippedFile, ...] = ()  # what the job reads, for a node that does not share the driver's files

    def to_json(self) -> str:
        return json.dumps({"protocol": PROTOCOL, "kind": "FarmTask", "body": self.model_dump(mode="json")})

    @classmethod
    def from_json(cls, text: str) -> FarmTask:
        return _load(cls, text)


class FarmReply(_Frozen):
    """A node's answer: the worker's result and wall time, the node that measured it and its environment."""

    task_id: str
    result: WorkerResult
    wall_s: float
    node_id: str
    pid: int
    threads: int
    fingerprint: dict[str, Any]
    started: float  # the node's clock (time.time) when the task began and ended: the dispatch overhead is the rest
    finished: float
    shipped: bool = False  # the node mirrored the driver's files (it does not share them)
    reference_b64: str | None = None  # the reference outputs a mirroring node saved, for the driver to keep

    def to_json(self) -> str:
        return json.dumps({"protocol": PROTOCOL, "kind": "FarmReply", "body": self.model_dump(mode="json")})

    @classmethod
    def from_json(cls, text: str) -> FarmReply:
        return _load(cls, text)


def _load(cls: type[Any], text: str) -> Any:
    envelope = json.loads(text)
    if envelope.get("protocol") != PROTOCOL or envelope.get("kind") != cls.__name__:
        raise WorkerProtocolError(
            f"farm {cls.__name__} speaks protocol {envelope.get('protocol')!r}, this chipfit speaks {PROTOCOL}: run "
            "the same chipfit version on the driver and on every farm node"
        )
    return cls.model_validate(envelope["body"])


def run_task(task_json: str, blobs: dict[str, Any] | None = None) -> str:
    """On a node: measure the task's candidate in an isolated worker process; the ``FarmReply`` as JSON.
    ``blobs``: content sha256 -> Ray object holding it, for the files this node does not share with the driver."""
    from chipfit.hardware.detect import cpu_quota, environment_fingerprint
    from chipfit.measure.runner import run_worker
    from chipfit.workspace import default_home

    started = time.time()
    task = FarmTask.from_json(task_json)
    node_id = _node_id()
    threads = cpu_quota()
    job, workdir, root = task.job, task.workdir, None
    reference: str | None = None
    try:
        if task.files:
            job, workdir, root = materialize(
                task.job, task.workdir, task.files, _fetcher(blobs), default_home() / "farm-cache"
            )
        missing = [p for p in (job.model_path, job.data_dir) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(map(str, missing))} (farm nodes need the driver's files: shared or shipped)"
            )
    except (OSError, KeyError) as exc:
        result, wall = WorkerResult(status="failed", error=f"setup: node {node_id[:12]} lacks a file: {exc}"), 0.0
    else:
        result, wall = run_worker(job, workdir, task.timeout_s, task.memory_limit_mb, threads)
        saved = job.quality.save_reference
        if root is not None and saved is not None and saved.exists():
            reference = base64.b64encode(saved.read_bytes()).decode()
    reply = FarmReply(
        task_id=task.task_id,
        result=result,
        wall_s=wall,
        node_id=node_id,
        pid=os.getpid(),
        threads=threads,
        fingerprint=environment_fingerprint(),
        started=started,
        finished=time.time(),
        shipped=root is not None,
        reference_b64=reference,
    )
    return reply.to_json()


def _fetcher(blobs: dict[str, Any] | None) -> Any:
    def fetch(sha256: str) -> bytes:
        if not blobs or sha256 not in blobs:
            raise KeyError(
                f"content {sha256[:12]} was not shipped (the driver ships files when a node is on another host)"
            )
        import ray

        return bytes(ray.get(blobs[sha256], timeout=600))

    return fetch


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())
