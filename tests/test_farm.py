"""The device farm on a real local multi-node Ray cluster (``ray.cluster_utils.Cluster``, one per module): three
nodes declared as two catalogue targets, with the labels and slot ``chipfit farm join`` gives a node; Ray's
health checks shortened so a killed node is declared dead in seconds. No mocks of Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from chipfit.farm.fit import farm_fit
from chipfit.farm.local import HEALTH_CHECK, group_alive
from chipfit.farm.nodes import SLOT, farm_nodes, node_labels, ray_module
from chipfit.measure.stats import TimingPolicy
from chipfit.store import Store, default_url

C5, C6G = "aws-c5.xlarge", "aws-c6g.xlarge"
_STORE = 100 * 2**20
FLAGS = ["--measure-time", "0.15", "--batch-sizes", "1", "--threads", "1", "--execution-modes", "sequential"]
FLAGS += ["--passes", "none", "-q"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ray = ray_module()
    from ray.cluster_utils import Cluster

    saved = os.environ.get("CHIPFIT_HOME")  # the nodes' own chipfit home (their cache of shipped files)
    nodes_home = tmp_path_factory.mktemp("farm-nodes-home")
    os.environ["CHIPFIT_HOME"] = str(nodes_home)
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": HEALTH_CHECK,
            "object_store_memory": _STORE,
            "include_dashboard": False,
        },
    )
    c.chipfit_nodes = {}
    for name, target in (("c5", C5), ("c6g-a", C6G), ("c6g-b", C6G)):
        labels = node_labels(target, True, ["onnxruntime"], os.getpid(), "x86_64")
        c.chipfit_nodes[name] = c.add_node(num_cpus=1, resources={SLOT: 1}, labels=labels, object_store_memory=_STORE)
    c.wait_for_nodes()
    if saved is None:
        os.environ.pop("CHIPFIT_HOME")
    else:
        os.environ["CHIPFIT_HOME"] = saved
    c.nodes_home = nodes_home
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _ids(cluster: Any, target: str) -> set[str]:
    return {n.node_id for n in farm_nodes(cluster.address) if n.target == target}


def test_status_json_lists_the_nodes_with_target_how_and_busy(cluster: Any, cli_run: Any) -> None:
    out = json.loads(cli_run("farm", "status", "--farm", cluster.address, "--json"))
    nodes = out["nodes"]
    assert sorted(n["target"] for n in nodes) == [C5, C6G, C6G]
    for n in nodes:
        assert n["how"] == "declared" and n["backends"] == ["onnxruntime"]
        assert n["state"] == "free" and n["pid"] == os.getpid() and n["slots"] == 1 and n["cpus"] == 1
    ray = ray_module()  # a task holding the aws-c5 node's slot makes it busy
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    c5 = cluster.chipfit_nodes["c5"].node_id
    hold = ray.remote(sleep).options(
        num_cpus=0, resources={SLOT: 1}, scheduling_strategy=NodeAffinitySchedulingStrategy(c5, soft=False)
    )
    ref = hold.remote(30)
    deadline = time.monotonic() + 30
    states: dict[str, str] = {}
    while time.monotonic() < deadline and states.get(c5) != "busy":
        states = {
            n["id"]: n["state"]
            for n in json.loads(cli_run("farm", "status", "--farm", cluster.address, "--json"))["nodes"]
        }
        time.sleep(0.2)
    ray.cancel(ref, force=True)
    assert states[c5] == "busy" and sorted(states.values()) == ["busy", "free", "free"]


def test_fit_sends_each_candidate_to_a_node_of_its_target(
    cluster: Any, mlp: Path, mlp_npz: Path, cli_run: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["fit", str(mlp), "--data", str(mlp_npz), "--farm", cluster.address, "--targets", f"{C5},{C6G}"]
    args += [*FLAGS, "--backends", "onnxruntime,openvino", "--opt-levels", "none,all", "--out", str(out), "--json"]
    result = json.loads(cli_run(*args))
    assert set(result["targets"]) == {C5, C6G}
    for target, t in result["targets"].items():
        nodes = _ids(cluster, target)
        measured = [c for c in t["candidates"] if c["source"] == "measured"]
        assert len(measured) == 3, t["candidates"]  # the reference, the model as given, ORT level 'all'
        assert all(c["status"] == "ok" and c["node"] in nodes and c["how"] == "declared" for c in measured)
        assert t["winner"] is not None and t["winner"]["node"] in nodes and t["how"] == "declared"
        # a backend no node of the target offers: skipped, with the reason
        ov = [c for c in t["candidates"] if c["backend"] == "openvino"]
        assert ov and all(
            c["status"] == "skipped" and f"no node of {target} has backend openvino" in c["error"] for c in ov
        )
        assert (out / target / "manifest.json").exists()


def test_a_node_without_the_drivers_files_gets_them_shipped(
    cluster: Any, mlp: Path, mlp_npz: Path, tmp_path: Path
) -> None:
    """The driver's files are gone by the time the task runs (as on a node of another host): the node fetches each
    by content from Ray's object store, mirrors the tree, finds the variant the driver built, and sends back the
    reference outputs it saved."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from chipfit.data import load_data, validate_data
    from chipfit.farm.ship import Shipper, manifest, mirror_path
    from chipfit.farm.task import FarmReply, FarmTask, run_task
    from chipfit.measure.job import PassStep, QualityJob, WorkerJob
    from chipfit.model import load_model
    from chipfit.passes import PassContext, apply_passes

    ray = ray_module()
    drv = tmp_path / "driver"
    (drv / "variants").mkdir(parents=True)
    model = load_model(mlp)
    data_dir = validate_data(load_data(mlp_npz), model).save(drv / "eval")
    step = PassStep(name="ort_graph_opt", params={"level": "all"})
    variant, _ = apply_passes(
        model.path, model.sha256, [step.as_dict()], drv / "variants", PassContext(None, None, ["x"])
    )
    job = WorkerJob(
        model_path=model.path,
        model_sha256=model.sha256,
        passes=(step,),
        backend="onnxruntime",
        options={"intra_op_num_threads": 1},
        input_names=("x",),
        data_dir=data_dir,
        variants_dir=drv / "variants",
        home=drv,
        timing=TimingPolicy(warmup_s=0.01, warmup_runs=2, min_samples=20, max_time_s=0.15),
        quality=QualityJob(chunk=32, save_reference=drv / "refs" / "ref.npz"),
    )
    files = manifest([model.path, data_dir, variant.parent])
    task = FarmTask(task_id="ship", target=C6G, job=job, timeout_s=60, workdir=drv / "jobs" / "ship", files=files)
    blobs = Shipper(ray).refs_for(files)
    gone = tmp_path / "elsewhere"
    drv.rename(gone)  # data, variant and home are no longer where the job says
    node = cluster.chipfit_nodes["c6g-b"]
    remote = ray.remote(run_task).options(
        num_cpus=0, resources={SLOT: 1}, scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    )
    reply = FarmReply.from_json(ray.get(remote.remote(task.to_json(), blobs), timeout=120))
    assert reply.result.status == "ok", reply.result.error
    assert reply.shipped and reply.reference_b64 is not None
    mirror = cluster.nodes_home / "farm-cache" / "mirror"
    shipped_variant = mirror_path(mirror, variant.parent)
    assert (shipped_variant / "model.onnx").read_bytes() == (
        gone / variant.parent.relative_to(drv) / "model.onnx"
    ).read_bytes()
    assert sorted(p.name for p in shipped_variant.parent.iterdir()) == [variant.parent.name]  # not rebuilt there


def test_a_target_not_in_the_farm_is_bad_input(cluster: Any, mlp: Path, mlp_npz: Path, cli_run: Any) -> None:
    args = ["fit", str(mlp), "--data", str(mlp_npz), "--farm", cluster.address, "--targets", "aws-c7g.xlarge"]
    err = " ".join(cli_run(*args, *FLAGS, code=2).split())
    assert "aws-c7g.xlarge is not in the farm" in err and f"its targets: {C5}, {C6G}" in err
    err = " ".join(cli_run("fit", str(mlp), "--data", str(mlp_npz), "--targets", C5, code=2).split())
    assert "--targets needs --farm" in err


def test_driver_killed_then_the_same_command_reuses_what_was_measured(
    cluster: Any, mlp: Path, mlp_npz: Path, cli_run: Any, chipfit_home: Path
) -> None:
    args = ["fit", str(mlp), "--data", str(mlp_npz), "--farm", cluster.address, "--targets", C5, *FLAGS]
    args += ["--backends", "onnxruntime", "--opt-levels", "none,all", "--measure-time", "0.3"]
    args += ["--json"]
    env = dict(os.environ, CHIPFIT_HOME=str(chipfit_home))
    driver = subprocess.Popen(
        [sys.executable, "-m", "chipfit", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    store = Store(default_url(chipfit_home))
    deadline = time.monotonic() + 60
    while store.count() < 1 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = store.count()
    assert before >= 1, "the driver stored nothing before it was killed"
    result = json.loads(cli_run(*args))["targets"][C5]
    sources = [c["source"] for c in result["candidates"] if c["source"] != "skipped"]
    assert sources.count("stored") >= before and set(sources) <= {"stored", "measured"}
    assert store.count() == len(sources)  # each candidate stored once: none measured twice
    from chipfit.predict import training_rows

    # these nodes only declared their target (--as): their rows never train the predictor as that hardware
    assert store.count() >= 1 and training_rows(store) == []


def test_killed_nodes_re_dispatched_or_lost_with_the_reason_and_the_run_goes_on(
    cluster: Any, mlp: Path, mlp_npz: Path
) -> None:
    """Mid-run, one of the two aws-c6g nodes dies while measuring (its candidate goes to the other: nothing lost,
    nothing measured twice), and so does the only aws-c5 node (its candidates are lost, with the reason)."""
    from chipfit.measure.stats import TimingPolicy
    from chipfit.search.driver import MeasureSettings
    from chipfit.search.space import SpaceOptions

    done: list[str] = []
    killed: list[str] = []
    nodes = cluster.chipfit_nodes

    def killer() -> None:  # once two aws-c6g results are in, kill the node that measured the latest: it is busy again
        while sum(line.startswith(C6G) for line in done) < 2:
            time.sleep(0.05)
        latest = [line for line in done if line.startswith(C6G)][-1]
        name = next(n for n in ("c6g-a", "c6g-b") if nodes[n].node_id[:12] in latest)
        time.sleep(0.6)  # it took its next candidate at once; every measurement warms up for 1.5 s: still busy
        for victim in (name, "c5"):
            cluster.remove_node(nodes[victim], allow_graceful=False)
            killed.append(victim)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    space = SpaceOptions(
        backends=("onnxruntime",), batch_sizes=(1,), threads=(1,), execution_modes=("sequential",), passes=()
    )
    # 1.5 s of warm-up per candidate: a node is killed mid-measurement whatever the machine's load (with 0.01 s,
    # the node had sometimes finished its next candidate before the kill, and nothing was re-dispatched)
    timing = TimingPolicy(warmup_s=1.5, warmup_runs=2, min_samples=20, max_time_s=0.3)
    settings = MeasureSettings(timing=timing, timeout_s=60, probe=False)
    result = farm_fit(
        mlp, mlp_npz, address=cluster.address, targets=[C5, C6G], space=space, settings=settings, progress=done.append
    )
    thread.join(timeout=30)
    assert len(killed) == 2, "the nodes were not killed"
    c6g = result.targets[C6G]
    measured = [r for r in c6g.fit.candidates if r.source != "skipped"]
    ids = [r.candidate.id for r in measured]
    assert len(ids) == len(set(ids)) == 5  # the reference and four graph levels, each once
    assert all(r.measurement.ok for r in measured), [r.measurement.error for r in measured]
    assert c6g.lost == 0 and c6g.redispatched >= 1 and c6g.fit.winner is not None
    assert any("re-dispatched" in n for r in measured for n in r.measurement.notes)
    c5 = result.targets[C5]
    lost = [r for r in c5.fit.candidates if r.source == "lost"]
    assert c5.lost == len(lost) >= 1
    assert all(f"no live node of {C5}" in (r.measurement.error or "") for r in lost), [
        r.measurement.error for r in lost
    ]


def test_recommend_on_the_farm_measures_its_targets_there_and_predicts_the_rest(
    cluster: Any, mlp: Path, mlp_npz: Path, cli_run: Any, tmp_path: Path
) -> None:
    """aws-c6g (the node left, which declared it) and a node that detected its target are measured on their nodes
    (after the node-killing test: its measurements are over when this one adds a node); a target not in the farm is
    predicted by a predictor trained with the detected node's measurements (never the declared
    ones), whose error against the farm's measurements is reported per farm target."""
    from rich.console import Console

    from chipfit.cli.recommend_table import recommend_table
    from chipfit.farm.predict import farm_training_rows
    from chipfit.hardware.catalog import load_catalog
    from chipfit.predict import training_rows
    from chipfit.recommend import recommend
    from chipfit.search.driver import MeasureSettings
    from chipfit.search.space import SpaceOptions

    err = " ".join(cli_run("recommend", str(mlp), "--data", str(mlp_npz), "--farm", "127.0.0.1:1", code=2).split())
    assert "cannot reach the farm at '127.0.0.1:1'" in err
    detected, pi5 = "aws-c7g.xlarge", "raspberry-pi-5"
    labels = node_labels(detected, False, ["onnxruntime"], os.getpid(), "x86_64")
    extra = cluster.add_node(num_cpus=1, resources={SLOT: 1}, labels=labels, object_store_memory=_STORE)
    cluster.wait_for_nodes()
    try:
        space = SpaceOptions(
            backends=("onnxruntime",), batch_sizes=(1,), threads=(1,), execution_modes=("sequential",), passes=(),
            opt_levels=("none", "all"),
        )  # fmt: skip
        timing = TimingPolicy(warmup_s=0.01, warmup_runs=2, min_samples=20, max_time_s=0.15)
        store = Store(default_url(tmp_path / "h"))
        kw = {"space": space, "settings": MeasureSettings(timing=timing, probe=False), "store": store}
        rec = recommend(
            mlp, mlp_npz, targets=(C6G, detected, pi5), farm=cluster.address, fit_kwargs=kw | {"home": tmp_path / "h"}
        )
    finally:
        cluster.remove_node(extra)
    rows = {t["name"]: t for t in rec.targets}
    assert rows[C6G]["source"] == "declared" and rows[C6G]["node"] in _ids(cluster, C6G)
    assert rows[detected]["source"] == "measured" and rows[detected]["node"] == extra.node_id
    assert rows[pi5]["source"] == "predicted" and C5 not in rows  # not asked for
    for name, declared in ((C6G, True), (detected, False)):
        farm = rec.farm["targets"][name]
        assert farm["declared"] is declared and farm["n"] >= 2 and farm["median_ape"] >= 0
        assert rows[name]["predictor_error"]["n"] == farm["n"]
    trained = {r["target"].name for r in farm_training_rows(training_rows(store), load_catalog())}
    assert detected in trained and C6G not in trained  # declared rows never train the predictor
    console = Console(width=160, record=True)
    console.print(recommend_table(rec.targets, "cost", 160)[0])
    text = console.export_text()
    assert "declared" in text and "measured" in text and "predicted" in text
    assert json.loads(json.dumps(rec.to_dict(), default=str))["farm"]["address"] == cluster.address


def test_an_unreachable_farm_is_bad_input_at_once(cli_run: Any) -> None:
    err = " ".join(cli_run("farm", "status", "--farm", "127.0.0.1:1", code=2).split())
    assert "cannot reach the farm at '127.0.0.1:1'" in err and "chipfit farm up" in err
    err = " ".join(cli_run("farm", "status", "--farm", "nonsense", code=2).split())
    assert "--farm 'nonsense' is not a Ray address" in err


@pytest.mark.bench  # a real `farm up` starts a head and a node with `ray start` (~40 s here): run by `make bench`
def test_farm_up_status_kill_and_down_with_the_real_commands(cli_run: Any, chipfit_home: Path) -> None:
    address = cli_run("farm", "up", "--local-nodes", C5).strip().splitlines()[-1]
    state = json.loads((chipfit_home / "farm" / "local.json").read_text())
    try:
        assert state["address"] == address and len(state["nodes"]) == 1
        pid = state["nodes"][0]["pid"]
        (node,) = json.loads(cli_run("farm", "status", "--json"))["nodes"]
        assert node["target"] == C5 and node["how"] == "declared" and node["state"] == "free" and node["pid"] == pid
        os.kill(pid, signal.SIGKILL)  # the node's process: Ray's head declares the node dead within seconds
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and node["state"] != "dead":
            time.sleep(0.5)
            (node,) = json.loads(cli_run("farm", "status", "--json"))["nodes"]
        assert node["state"] == "dead"
    finally:
        out = cli_run("farm", "down")
    assert f"stopped the farm at {address}" in out
    assert not any(group_alive(g) for g in [state["head_pid"], pid])  # every process `up` started is gone
    assert not (chipfit_home / "farm" / "local.json").exists()


def test_a_node_joining_without_as_advertises_the_target_it_detects() -> None:
    from chipfit.farm.local import join_command
    from chipfit.hardware.local import match_local

    argv = join_command("127.0.0.1:1", None, 1, ["onnxruntime"])
    labels = dict(kv.split("=", 1) for kv in next(a for a in argv if a.startswith("--labels="))[9:].split(","))
    match, info = match_local()
    assert labels["chipfit.dev/target"] == (match.name if match else "custom")
    assert labels["chipfit.dev/declared"] == "false"
    assert labels["chipfit.dev/match"] == ("exact" if info["exact"] else "closest")
    assert labels["chipfit.dev/pid"] == str(os.getpid()) and labels["chipfit.dev/backends"] == "onnxruntime"
    assert "--num-cpus=1" in argv and '--resources={"chipfit_slot": 1}' in argv
