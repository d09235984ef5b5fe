"""The driver's dispatch loop: each task goes to a free live node of its target that has the task's backend, as a
Ray task with Ray's retries off (``max_retries=0``); chipfit re-queues instead, so a result is never measured on
another target's hardware. A node holds one task at a time (its one ``chipfit_slot``).

A node that dies (its process killed, its machine gone) has its in-flight task re-queued at the front of its
target's queue, for another node of the same target; when no node of the target is left, the task is ``lost``
with the reason. Every wait has a timeout: a task whose reply does not come within its cap plus a slack is
cancelled and ``lost``. Each outcome is handed to ``on_outcome`` as it arrives (the caller stores it at once).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chipfit.farm.nodes import SLOT, FarmNode, connect
from chipfit.farm.task import FarmReply, FarmTask, run_task

__all__ = ["Dispatcher", "Outcome", "Work"]

_MAX_ATTEMPTS = 3  # a task whose worker process crashed this often on live nodes is lost
_SUSPECT_S = 8.0  # a node whose task failed gets nothing new for this long: the head may still declare it dead


@dataclass
class Work:
    """One task to place: on a node of ``task.target`` that runs ``backend``."""

    task: FarmTask
    backend: str
    tried: list[str] = field(default_factory=list)  # why earlier attempts ended (node and error)
    blobs: dict[str, Any] = field(default_factory=dict)  # sha256 -> Ray object: the task's files, when shipped


@dataclass(frozen=True)
class Outcome:
    work: Work
    reply: FarmReply | None
    node: FarmNode | None
    lost: str | None = None
    overhead_s: float | None = None  # the driver's round trip minus the node's time in the task

    @property
    def redispatched(self) -> int:
        return len(self.work.tried)


@dataclass
class _Flight:
    work: Work
    node: FarmNode
    sent: float
    deadline: float


class Dispatcher:
    """Places ``Work`` on the farm's nodes; ``run`` returns when every task has an outcome."""

    def __init__(self, address: str, nodes: Sequence[FarmNode], slack_s: float = 120.0, poll_s: float = 0.25):
        self.ray = connect(address)
        self.nodes = {n.node_id: n for n in nodes if n.alive and n.slots > 0}
        self.dead: dict[str, str] = {}
        self.suspect: dict[str, float] = {}
        self.slack_s, self.poll_s = slack_s, poll_s
        self.remote = self.ray.remote(run_task)
        self.died: list[str] = []  # node ids that died during this run

    def _submit(self, work: Work, node: FarmNode) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return self.remote.options(
            num_cpus=0,  # the worker sets its own thread counts; the slot keeps measurements apart
            resources={SLOT: 1},
            max_retries=0,  # chipfit re-queues, on a node of the same target
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            name=f"chipfit-measure-{work.task.task_id}",
        ).remote(work.task.to_json(), work.blobs)

    def _refresh(self) -> None:
        """Mark the nodes the head reports dead."""
        for n in self.ray.nodes():
            nid = str(n["NodeID"])
            if nid in self.nodes and not n.get("Alive") and nid not in self.dead:
                self.dead[nid] = "the farm's head reports it dead" + (
                    f" ({n.get('DeathReasonMessage')})" if n.get("DeathReasonMessage") else ""
                )
                self.died.append(nid)

    def _free(self, target: str, backend: str, busy: set[str]) -> FarmNode | None:
        now = time.monotonic()
        for n in self.nodes.values():
            if n.target != target or n.node_id in self.dead or n.node_id in busy:
                continue
            if self.suspect.get(n.node_id, 0.0) > now or backend not in n.backends:
                continue
            return n
        return None

    def _left(self, target: str, backend: str) -> list[FarmNode]:
        return [
            n
            for n in self.nodes.values()
            if n.target == target and n.node_id not in self.dead and backend in n.backends
        ]

    def run(self, works: Sequence[Work], on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        queue: deque[Work] = deque(works)
        flights: dict[Any, _Flight] = {}
        out: list[Outcome] = []
        next_refresh = 0.0

        def finish(o: Outcome) -> None:
            out.append(o)
            on_outcome(o)

        while queue or flights:
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh()
                next_refresh = now + 1.0
            for ref, f in list(flights.items()):  # tasks on nodes that died go back to the queue, first
                if f.node.node_id in self.dead:
                    flights.pop(ref)
                    with contextlib.suppress(Exception):
                        self.ray.cancel(ref, force=True)
                    f.work.tried.append(f"node {f.node.node_id[:12]} died while measuring: {self.dead[f.node.node_id]}")
                    queue.appendleft(f.work)
            busy = {f.node.node_id for f in flights.values()}
            waiting: deque[Work] = deque()
            while queue:
                w = queue.popleft()
                if not self._left(w.task.target, w.backend):
                    finish(Outcome(w, None, None, lost=self._lost_reason(w)))
                    continue
                node = self._free(w.task.target, w.backend, busy)
                if node is None:
                    waiting.append(w)
                    continue
                ref = self._submit(w, node)
                busy.add(node.node_id)
                cap = w.task.timeout_s + self.slack_s
                flights[ref] = _Flight(w, node, time.time(), time.monotonic() + cap)
            queue = waiting
            if not flights:
                if queue:
                    time.sleep(self.poll_s)
                continue
            ready, _ = self.ray.wait(list(flights), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                self._collect(ref, flights.pop(ref), queue, finish)
            for ref, f in list(flights.items()):
                if time.monotonic() > f.deadline:
                    flights.pop(ref)
                    with contextlib.suppress(Exception):
                        self.ray.cancel(ref, force=True)
                    finish(Outcome(f.work, None, f.node, lost=f"no reply from node {f.node.node_id[:12]} in time"))
        return out

    def _collect(self, ref: Any, f: _Flight, queue: deque[Work], finish: Callable[[Outcome], None]) -> None:
        from ray.exceptions import RayError

        try:
            reply = FarmReply.from_json(self.ray.get(ref, timeout=60))
        except RayError as exc:  # the node or its worker process died under the task
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            f.work.tried.append(f"node {f.node.node_id[:12]}: {type(exc).__name__}: {first}")
            self.suspect[f.node.node_id] = time.monotonic() + _SUSPECT_S
            if len(f.work.tried) >= _MAX_ATTEMPTS:
                finish(Outcome(f.work, None, f.node, lost="; ".join(f.work.tried)))
            else:
                queue.appendleft(f.work)
            return
        overhead = max(0.0, (time.time() - f.sent) - (reply.finished - reply.started))
        finish(Outcome(f.work, reply, self.nodes.get(reply.node_id, f.node), overhead_s=overhead))

    def _lost_reason(self, w: Work) -> str:
        t = w.task.target
        same = [n for n in self.nodes.values() if n.target == t]
        if not any(w.backend in n.backends for n in same):
            return f"no node of {t} has backend {w.backend}"
        history = "; ".join(w.tried) if w.tried else "its nodes died"
        return f"no live node of {t} with backend {w.backend} is left in the farm ({history})"
