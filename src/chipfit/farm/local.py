"""Starting farm nodes: ``join`` makes this machine a node of a running farm; ``up`` starts a head and one node per
listed target on this machine, each pinned to its own share of the cores; ``down`` stops what ``up`` started.

A node is ``ray start --block`` with chipfit's labels and one measurement slot (``farm.nodes``). ``join`` replaces
its own process with it (so the pid a node advertises is the process that hosts it: ``kill`` it and the node
goes); ``up`` runs ``chipfit farm join ... --as TARGET`` for each target, one after the other (nodes started
together on a small host time out registering), each node's agent on its own free port, and records what it
started in ``$CHIPFIT_HOME/farm/local.json``.
Nothing here runs ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chipfit.farm.nodes import SLOT, FarmError, farm_nodes, node_labels, ray_env, ray_module
from chipfit.fsutil import pid_alive

__all__ = ["HEALTH_CHECK", "detect_target", "down", "group_alive", "join_command", "state_path", "up"]

# how fast the head notices a dead node: a probe every second, dead after 3 missed (Ray's defaults take 20-70 s)
HEALTH_CHECK = {
    "health_check_initial_delay_ms": 2000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
_OBJECT_STORE = 100 * 2**20  # the farm ships job descriptions, not models: a small object store per node
_STARTED = "Ray runtime started"


def state_path(home: Path) -> Path:
    return home / "farm" / "local.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _ray_start() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]


def detect_target(as_target: str | None) -> tuple[str, bool, str]:
    """The catalogue target this machine is (``--as`` declares one instead): (name, declared, how it matched:
    ``declared``, ``exact`` — the catalogue's CPU — or ``closest``, the entry it resembles most)."""
    from chipfit.hardware.catalog import load_catalog
    from chipfit.hardware.local import match_local

    catalog = load_catalog()
    if as_target is not None:
        if as_target not in catalog:
            raise FarmError(
                f"--as: unknown target '{as_target}'. Known: {', '.join(sorted(catalog))} "
                "(add your own with a catalogue file in $CHIPFIT_HOME/hardware/)."
            )
        return as_target, True, "declared"
    match, info = match_local(catalog)
    return (match.name if match else "custom"), False, ("exact" if info.get("exact") else "closest")


def join_command(
    address: str, as_target: str | None, cpus: int | None = None, backends: Sequence[str] | None = None
) -> list[str]:
    """The ``ray start`` command line that makes this process a farm node (its labels name this process's pid).
    ``backends``: the backends it offers (default: every one available here, with the GPUs each can use)."""
    from chipfit.backends import runtime_devices
    from chipfit.hardware.cross import host_arch
    from chipfit.hardware.detect import cpu_quota

    target, declared, match = detect_target(as_target)
    offered = list(backends) if backends is not None else runtime_devices()
    labels = node_labels(target, declared, offered, os.getpid(), host_arch(), match)
    return [
        *_ray_start(),
        f"--address={address}",
        f"--num-cpus={cpus or cpu_quota()}",
        f"--resources={json.dumps({SLOT: 1})}",
        "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
        f"--object-store-memory={_OBJECT_STORE}",
        f"--dashboard-agent-listen-port={_free_port()}",
    ]


def _wait_started(proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if _STARTED in text:
            return
        if proc.poll() is not None:
            tail = " | ".join(ln for ln in text.splitlines()[-4:] if ln.strip())
            raise FarmError(f"{what} did not start (exit code {proc.returncode}): {tail[-600:]}. Its log: {log}")
        time.sleep(0.2)
    raise FarmError(f"{what} did not start within {timeout_s:.0f}s; its log: {log}")


def _spawn(argv: Sequence[str], log: Path, cores: set[int] | None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cores:
            os.sched_setaffinity(0, cores)

    with open(log, "wb") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ray_env(dict(os.environ)),
            start_new_session=True,  # its own process group: `farm down` stops the node and everything it started
            preexec_fn=pin,
        )


def _shares(n: int) -> list[set[int]]:
    """Node i's cores: this process's cores split into n disjoint shares (shared round-robin when n > cores)."""
    cores = sorted(os.sched_getaffinity(0))
    if n <= len(cores):
        size = len(cores) // n
        return [set(cores[i * size : (i + 1) * size]) for i in range(n)]
    return [{cores[i % len(cores)]} for i in range(n)]


def up(
    targets: Sequence[str],
    home: Path,
    timeout_s: float = 180.0,
    backends: Sequence[str] | None = None,
    cores_per_node: int | None = None,
) -> dict[str, Any]:
    """Start a head and one node per target here; the farm's record (address, pids, logs). ``backends``: what the
    nodes offer (default: every backend available here and the GPUs each can use, detected once for all).
    ``cores_per_node``: pin each node to at most that many of its share's cores (default: its whole share)."""
    from chipfit.backends import runtime_devices
    from chipfit.hardware.catalog import load_catalog

    catalog = load_catalog()
    unknown = [t for t in targets if t not in catalog]
    if not targets or unknown:
        raise FarmError(
            f"--local-nodes: unknown target(s) {', '.join(unknown) or '(none given)'}; give catalogue names such as "
            f"{', '.join(sorted(catalog)[:4])} (all: `chipfit targets`)."
        )
    state_file = state_path(home)
    if state_file.exists():
        old = json.loads(state_file.read_text())
        if _alive(old.get("head_pid")):
            raise FarmError(f"a local farm is already up at {old['address']}: run `chipfit farm down` first.")
    state_file.parent.mkdir(parents=True, exist_ok=True)
    logs = state_file.parent / "logs"
    logs.mkdir(exist_ok=True)
    offered = ",".join(backends if backends is not None else runtime_devices())
    port = _free_port()
    address = f"{ray_module().util.get_node_ip_address()}:{port}"
    state: dict[str, Any] = {"address": address, "head_pid": None, "nodes": [], "logs": str(logs)}
    head = [
        *_ray_start(),
        "--head",
        f"--port={port}",
        "--num-cpus=0",  # the head only schedules: measurements go to the nodes
        f"--dashboard-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--object-store-memory={_OBJECT_STORE}",
        f"--system-config={json.dumps(HEALTH_CHECK)}",
    ]
    try:
        proc = _spawn(head, logs / "head.log", None)
        state["head_pid"] = proc.pid
        _write(state_file, state)
        _wait_started(proc, logs / "head.log", "the farm's head", timeout_s)
        for i, (target, share) in enumerate(zip(targets, _shares(len(targets)), strict=True)):
            cores = set(sorted(share)[:cores_per_node]) if cores_per_node else share
            argv = [sys.executable, "-m", "chipfit", "farm", "join", address, "--as", target, "--cpus", str(len(cores))]
            argv += ["--backends", offered]
            log = logs / f"node-{i}-{target}.log"
            node = _spawn(argv, log, cores)
            state["nodes"].append({"target": target, "pid": node.pid, "cores": sorted(cores), "log": str(log)})
            _write(state_file, state)
            _wait_started(node, log, f"node {i} ({target})", timeout_s)  # one by one: together, they time out
        _wait_registered(address, len(targets), timeout_s)
    except BaseException:
        down(home)
        raise
    finally:
        _disconnect()
    return state


def _disconnect() -> None:
    ray = ray_module()
    if ray.is_initialized():
        ray.shutdown()


def _wait_registered(address: str, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(node.alive for node in farm_nodes(address)) >= n:
            return
        time.sleep(0.3)
    raise FarmError(f"the farm at {address} has fewer than {n} live nodes after {timeout_s:.0f}s")


def _write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _alive(pid: Any) -> bool:
    return isinstance(pid, int) and pid_alive(pid)


def down(home: Path, grace_s: float = 10.0) -> dict[str, Any] | None:
    """Stop the local farm ``up`` started (nodes first, then the head); its record, or None when none is up."""
    _disconnect()
    state_file = state_path(home)
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    groups = [n["pid"] for n in state.get("nodes", [])] + [state.get("head_pid")]
    groups = [g for g in groups if isinstance(g, int)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, sig)
        deadline = time.monotonic() + grace_s  # after SIGKILL, the wait for the kernel to finish them
        while time.monotonic() < deadline and any(group_alive(g) for g in groups):
            time.sleep(0.2)
    state_file.unlink(missing_ok=True)
    return state


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which a container's init may never reap, do not)."""
    import psutil

    with contextlib.suppress(ChildProcessError, OSError):  # reap our own child (when `up` ran in this process)
        os.waitpid(pgid, os.WNOHANG)
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False
