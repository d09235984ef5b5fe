"""No code from a model file by default (issue 14, defect 1): crafted .pt2 archives, pickled recipe modules and
checkpoints are refused with one clear line naming the file and --trust-pickle, and the code in them never
runs (each crafted payload creates a marker file when it runs)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from chipfit.errors import ChipfitError, ModelError  # noqa: E402
from chipfit.model import load_model  # noqa: E402


class _Runs:
    """Unpickling this creates ``marker`` (builtins.open in write mode): proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


class _Net(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: object) -> object:
        y = torch.relu(self.lin(x))
        return y * x.shape[0] if x.shape[0] > 3 else y  # type: ignore[attr-defined]  # a guard and a symbol


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    ep = torch.export.export(_Net(), (torch.randn(4, 3),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    """A copy of the archive ``src`` with each entry's bytes passed through ``edit(name, data)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
    return dst


def _pickled_weight(good: Path, dst: Path, payload: bytes) -> Path:
    """``good`` with its first weight marked use_pickle and holding ``payload``."""
    with zipfile.ZipFile(good) as z:
        cfg_name = next(n for n in z.namelist() if n.endswith("data/weights/model_weights_config.json"))
        cfg = json.loads(z.read(cfg_name))
    fqn = next(iter(cfg["config"]))
    cfg["config"][fqn]["use_pickle"] = True
    weight = "data/weights/" + cfg["config"][fqn]["path_name"]

    def edit(name: str, data: bytes) -> bytes:
        if name == cfg_name:
            return json.dumps(cfg).encode()
        return payload if name.endswith(weight) else data

    return _rewrite(good, dst, edit)


def _replace_in(entry: str, old: str, new: str) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith(entry):
            return data
        text = data.decode()
        assert old in text, (entry, old)
        return text.replace(old, new).encode()

    return edit


def _evil_pt2(kind: str, good: Path, tmp: Path, marker: Path) -> Path:
    evil = tmp / "evil.pt2"
    if kind == "pickled-weight":
        return _pickled_weight(good, evil, pickle.dumps(_Runs(marker)))
    if kind == "sample-inputs-pickle":  # torch retries a failed weights_only load with weights_only=False
        return _rewrite(
            good, evil, lambda n, d: pickle.dumps(_Runs(marker)) if n.endswith("sample_inputs/model.pt") else d
        )
    with zipfile.ZipFile(good) as z:
        program = next(n for n in z.namelist() if n.endswith("models/model.json"))
        text = z.read(program).decode()
    if kind == "guard-code":  # exec'd by ExportedProgram.module()
        guard = json.loads(text)["guards_code"][0]
        return _rewrite(good, evil, _replace_in("models/model.json", guard, f"open('{marker}', 'w') and {guard}"))
    if kind == "shape-expression":  # sympy.sympify (eval) at load
        sym = next(s for s in json.loads(text)["range_constraints"])
        old = f"Symbol('{sym}', positive=True, integer=True)"
        new = f"Symbol('{sym}', positive=True, integer=open('{marker}', 'w') is not None)"
        return _rewrite(good, evil, _replace_in("models/model.json", json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
    if kind == "graph-target":
        return _rewrite(good, evil, _replace_in("models/model.json", '"torch.ops.aten.relu.default"', '"torch.load"'))
    raise AssertionError(kind)


KINDS = ["pickled-weight", "sample-inputs-pickle", "guard-code", "shape-expression", "graph-target"]


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_refuses_a_pt2_that_would_run_code(kind: str, good: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = _evil_pt2(kind, good, tmp_path, marker)
    with pytest.raises(ModelError) as err:
        load_model(evil, home=tmp_path / "home")
    msg = str(err.value)
    assert str(evil) in msg and "--trust-pickle" in msg and "\n" not in msg, msg
    assert not marker.exists(), "code from the model file ran"


def test_the_crafted_payloads_do_run_code_in_torch_itself(good: Path, tmp_path: Path) -> None:
    """The crafted files are real attacks: torch.export.load (+ .module() and a call) runs each payload."""
    for kind in ("pickled-weight", "sample-inputs-pickle", "guard-code", "shape-expression"):
        marker = tmp_path / f"ran-{kind}"
        evil = _evil_pt2(kind, good, tmp_path, marker)
        with contextlib.suppress(Exception):  # the payload runs before the (malformed) load fails
            torch.export.load(str(evil)).module()(torch.randn(4, 3))
        assert marker.exists(), kind


def test_the_cli_refuses_a_pickled_pt2_in_one_line(good: Path, tmp_path: Path) -> None:
    import numpy as np

    marker = tmp_path / "ran"
    evil = _evil_pt2("pickled-weight", good, tmp_path, marker)
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip at all" * 10)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.ones((8, 3), np.float32))
    cases = [
        (evil, tmp_path / "missing.npz", "missing.npz"),  # the command: nothing runs, one line
        (evil, data, "--trust-pickle"),
        (garbage, data, "torch.export.save"),
    ]
    for model, data_path, expected in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "chipfit", "fit", str(model), "--data", str(data_path), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CHIPFIT_HOME": str(tmp_path / "home")},
        )
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
        assert expected in lines[0], lines[0]
        if expected != "missing.npz":
            assert str(model) in lines[0], lines[0]
    assert not marker.exists()


def test_trust_pickle_loads_a_pt2_with_a_pickled_tensor(good: Path, tmp_path: Path) -> None:
    """torch.export.save pickles tensor subclasses; such a file loads when the user opts in."""
    with zipfile.ZipFile(good) as z:
        cfg = json.loads(z.read(next(n for n in z.namelist() if n.endswith("model_weights_config.json"))))
    fqn = next(iter(cfg["config"]))
    value = torch.nn.Parameter(torch.full_like(torch.export.load(str(good)).state_dict[fqn], 0.5))
    buf = io.BytesIO()
    torch.save(value, buf)
    pt2 = _pickled_weight(good, tmp_path / "pickled.pt2", buf.getvalue())
    with pytest.raises(ModelError, match="--trust-pickle"):
        load_model(pt2, home=tmp_path / "home")
    model = load_model(pt2, home=tmp_path / "home", trust_pickle=True)
    assert model.inputs and model.inputs[0].shape[1] == 3


def test_a_good_pt2_still_loads(good: Path, tmp_path: Path) -> None:
    model = load_model(good, home=tmp_path / "home")
    assert model.dynamic_batch and model.stats.n_nodes >= 1


def test_recipe_model_files_and_teacher_checkpoints_are_not_unpickled(tmp_path: Path) -> None:
    from chipfit.explore.checkpoint import read_checkpoint
    from chipfit.explore.recipes import load_module

    marker = tmp_path / "ran"
    evil = tmp_path / "backbone.pt"
    torch.save({"net": _Runs(marker)}, evil)  # what torch.save(module) is: a pickle of arbitrary objects
    with pytest.raises(ChipfitError, match="--trust-pickle") as err:
        load_module(evil)
    assert str(evil) in str(err.value)
    with pytest.raises(ModelError, match="--trust-pickle"):
        read_checkpoint(evil)  # a distill teacher's {checkpoint: ...}
    plain = tmp_path / "old.pkl"
    plain.write_bytes(pickle.dumps({"model": _Runs(marker)}))
    with pytest.raises(ModelError, match="--trust-pickle"):
        read_checkpoint(plain)
    assert not marker.exists()
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2))), scripted)
    assert load_module(scripted)(torch.ones(1, 3)).shape == (1, 2)
    module = torch.nn.Linear(3, 2)
    torch.save(module, tmp_path / "trusted.pt")
    assert isinstance(load_module(tmp_path / "trusted.pt", trust_pickle=True), torch.nn.Linear)


def test_a_checkpoint_round_trips_in_the_safe_format(tmp_path: Path) -> None:
    import numpy as np

    from chipfit.explore.job import TrialJob
    from chipfit.explore.trial import TrialContext

    job = TrialJob("s.yaml", "st", "sqlite://", 0, {}, str(tmp_path / "ckpt" / "trial-0.pkl"), 1e12)
    ctx = TrialContext(SimpleNamespace(number=0), job, SimpleNamespace(max_resource=3))
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "rng": np.arange(4)}
    path = ctx.checkpoint(state)
    assert zipfile.is_zipfile(path)  # torch.save's format, read back with weights_only=True
    back = ctx.load_checkpoint()
    assert back["epoch"] == 2 and np.array_equal(back["rng"], np.arange(4))
    assert torch.equal(back["model"]["weight"], net.state_dict()["weight"])
    assert back["optimizer"]["state"][0]["step"] == opt.state_dict()["state"][0]["step"]

    marker = tmp_path / "ran"
    ctx.checkpoint({"x": _Runs(marker)})
    with pytest.raises(ModelError, match="--trust-pickle"):
        ctx.load_checkpoint()
    assert not marker.exists()
