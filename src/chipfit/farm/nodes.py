"""A farm node as Ray sees it: the labels and resources a node advertises when it joins, read back by the driver.

A node advertises, as Ray labels, the catalogue target it is (``chipfit.dev/target``), whether that was detected or
declared with ``--as`` (``chipfit.dev/declared``), the backends that run there (``chipfit.dev/backends``, names
joined by ``.``) and the process id hosting it (``chipfit.dev/pid``); and one ``chipfit_slot`` resource per
measurement slot, so that two measurements never share a node's cores. Ray itself counts its ``CPU``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chipfit.errors import ChipfitError

__all__ = [
    "AUTH_ENV",
    "SLOT",
    "FarmError",
    "FarmNode",
    "connect",
    "farm_nodes",
    "node_labels",
    "ray_env",
    "ray_module",
]

SLOT = "chipfit_slot"  # one unit per measurement slot of a node
AUTH_ENV = "RAY_AUTH_MODE"
_PREFIX = "chipfit.dev/"


class FarmError(ChipfitError):
    """A farm that cannot be reached, or asked for something it does not have (exit code 2)."""


def node_labels(
    target: str, declared: bool, backends: list[str], pid: int, arch: str, match: str | None = None
) -> dict[str, str]:
    """The Ray labels a node starts with (each value within Ray's label syntax: 63 characters of ``[\\w.-]``).
    ``match``: how a detected target matched the catalogue (``exact`` or ``closest``)."""
    return {
        f"{_PREFIX}target": target,
        f"{_PREFIX}match": match or ("declared" if declared else "exact"),
        f"{_PREFIX}declared": "true" if declared else "false",
        f"{_PREFIX}backends": ".".join(backends) or "none",
        f"{_PREFIX}pid": str(pid),
        f"{_PREFIX}arch": arch,
    }


@dataclass(frozen=True)
class FarmNode:
    """One chipfit node of a farm (a Ray node that has the labels above)."""

    node_id: str
    target: str
    declared: bool
    backends: tuple[str, ...]
    pid: int | None
    address: str
    alive: bool
    slots: int
    slots_free: int
    cpus: int
    arch: str = ""
    match: str = ""
    state_message: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return self.alive and self.slots_free < self.slots

    @property
    def how(self) -> str:
        """``declared``, ``detected`` (the catalogue's own CPU) or ``detected (closest)``: the entry it resembles."""
        if self.declared:
            return "declared"
        return "detected (closest)" if self.match == "closest" else "detected"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "target": self.target,
            "how": self.how,
            "backends": list(self.backends),
            "state": ("busy" if self.busy else "free") if self.alive else "dead",
            "pid": self.pid,
            "address": self.address,
            "cpus": self.cpus,
            "slots": self.slots,
            "arch": self.arch,
        }


def ray_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for Ray: no usage reports; token authentication (Ray's default for the clusters it starts) when a
    token is present, unless ``RAY_AUTH_MODE`` says otherwise."""
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.path.exists(os.path.expanduser("~/.ray/auth_token")) or env.get("RAY_AUTH_TOKEN"):
        env.setdefault(AUTH_ENV, "token")
    return env


def ray_module() -> Any:
    """``import ray`` after setting this process's Ray environment (Ray reads its configuration when first imported,
    and again when told to)."""
    imported = "ray" in sys.modules
    before = os.environ.get(AUTH_ENV)
    ray_env(os.environ)  # type: ignore[arg-type]
    import ray

    if imported and before is None and os.environ.get(AUTH_ENV) == "token":
        with contextlib.suppress(Exception):  # imported earlier (by a test, a plug-in): make Ray read the mode again
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
    return ray


def connect(address: str) -> Any:
    """Attach this process to the Ray cluster at ``address`` (``host:port``) as a driver; the ``ray`` module.

    Token authentication (Ray's default for clusters it starts) is used when a token is present, unless
    ``RAY_AUTH_MODE`` says otherwise."""
    ray = ray_module()
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == address:
            return ray
        ray.shutdown()  # attached to another farm
    if ":" not in address:
        raise FarmError(f"--farm '{address}' is not a Ray address: give host:port, as `chipfit farm up` prints it.")
    host, _, port = address.rpartition(":")
    try:  # Ray retries an unreachable head for minutes: a closed port is said at once
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise FarmError(
            f"cannot reach the farm at '{address}' ({exc}). Start one with `chipfit farm up --local-nodes T1,T2` "
            "or give the address a running farm's head printed."
        ) from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FarmError(
            f"cannot reach the farm at '{address}': {first}. Start one with `chipfit farm up --local-nodes T1,T2` "
            "or give the address a running farm's head printed."
        ) from None
    return ray


def farm_nodes(address: str) -> list[FarmNode]:
    """Every chipfit node the cluster at ``address`` knows (dead ones included), in joining order."""
    ray = connect(address)
    try:  # what each live node has free now (a busy node has lent its slot); a Ray developer API
        from ray._private.state import available_resources_per_node

        available: dict[str, dict[str, float]] = dict(available_resources_per_node())
    except Exception:  # another Ray: nodes are shown free (a resource in use up to its last unit is not listed)
        available = {}
    out = []
    for n in ray.nodes():
        labels: dict[str, str] = dict(n.get("Labels") or {})
        target = labels.get(f"{_PREFIX}target")
        if target is None:
            continue  # the head, or a node that is not chipfit's
        resources = n.get("Resources") or {}
        node_id = str(n["NodeID"])
        slots = int(resources.get(SLOT, 0))
        pid = labels.get(f"{_PREFIX}pid", "")
        backends = labels.get(f"{_PREFIX}backends", "none")
        out.append(
            FarmNode(
                node_id=node_id,
                target=target,
                declared=labels.get(f"{_PREFIX}declared") == "true",
                backends=tuple(b for b in backends.split(".") if b and b != "none"),
                pid=int(pid) if pid.isdigit() else None,
                address=str(n.get("NodeManagerAddress", "")),
                alive=bool(n.get("Alive")),
                slots=slots,
                slots_free=int(available[node_id].get(SLOT, 0)) if node_id in available else slots,
                cpus=int(resources.get("CPU", 0)),
                arch=labels.get(f"{_PREFIX}arch", ""),
                match=labels.get(f"{_PREFIX}match", ""),
                state_message=str(n.get("DeathReasonMessage") or ""),
            )
        )
    return out
