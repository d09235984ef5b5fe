"""An artifact's manifest is not trusted (issue 14, defects 5 and 6): ``chipfit.runtime.load`` and ``chipfit
serve`` open only files inside the artifact's folder that have a matching sha256 entry, import only built-in
backends (a third-party one by explicit opt-in), and a bad manifest is one clear line and exit 2 from the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chipfit
from chipfit.errors import ArtifactError
from chipfit.testing.serving import minimal_artifact
from conftest import make_mlp

X = np.array([[0.5, -0.5, 1.0, 0.0]], np.float32)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Path]:
    """A fresh artifact ``tmp_path/art`` (an MLP on onnxruntime) whose manifest entries are replaced by ``kw``;
    a second model (other weights) lies outside it at ``tmp_path/outside/model.onnx``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    make_mlp(outside / "model.onnx", seed=7)
    model = make_mlp(tmp_path / "mlp.onnx")

    def build(**kw: Any) -> Path:
        return minimal_artifact(model, tmp_path / "art", **kw)

    return build


def _model(folder: Path, **changes: Any) -> dict[str, Any]:
    """The manifest's "model" entry with ``changes`` applied."""
    m = json.loads((folder / "manifest.json").read_text())["model"]
    return {**m, **changes}


def _rewrite(folder: Path, **top: Any) -> Path:
    doc = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**doc, **top}))
    return folder


def test_an_untampered_artifact_loads_and_runs(make: Callable[..., Path]) -> None:
    """The control: what the other tests change is what makes them fail."""
    m = chipfit.runtime.load(make())
    try:
        assert m.run({"x": X})[0].shape == (1, 3)
    finally:
        m.close()


def _traversal(folder: Path) -> dict[str, Any]:
    other = folder.parent / "outside" / "model.onnx"
    return _model(folder, file="../outside/model.onnx", sha256={"../outside/model.onnx": _sha(other)})


def _absolute(folder: Path) -> dict[str, Any]:
    other = (folder.parent / "outside" / "model.onnx").resolve()
    return _model(folder, file=str(other), sha256={str(other): _sha(other)})


def _unhashed(folder: Path) -> dict[str, Any]:
    shutil.copy2(folder.parent / "outside" / "model.onnx", folder / "other.onnx")  # inside, but with no hash
    return _model(folder, file="other.onnx")


def _hash_key_outside(folder: Path) -> dict[str, Any]:
    secret = folder.parent / "secret.txt"
    secret.write_text("not for the server to read")
    return _model(folder, sha256={**_model(folder)["sha256"], "../secret.txt": _sha(secret)})


def _symlink_out(folder: Path) -> dict[str, Any]:
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(folder.parent / "outside" / "model.onnx")
    return _model(folder, sha256={"model.onnx": _sha(folder / "model.onnx")})


def _wrong_hash(folder: Path) -> dict[str, Any]:
    return _model(folder, sha256={"model.onnx": "0" * 64})


def _library_unhashed(folder: Path) -> dict[str, Any]:
    (folder / "model.so").write_bytes(b"\x7fELF not really")  # a backend file the manifest names, with no hash
    return _model(folder)


@pytest.mark.parametrize(
    ("tamper", "extra", "message"),
    [
        (_traversal, {}, "points outside the artifact folder"),
        (_absolute, {}, "points outside the artifact folder"),
        (_unhashed, {}, "has no sha256 entry"),
        (_hash_key_outside, {}, "points outside the artifact folder"),
        (_symlink_out, {}, "points outside the artifact folder"),
        (_wrong_hash, {}, "does not match the sha256"),  # a guard on what was already checked
        (_library_unhashed, {"runtime_options": {"threads": 1, "library": "model.so"}}, "has no sha256 entry"),
    ],
)
def test_every_file_an_artifact_names_is_inside_it_and_hashed(
    make: Callable[..., Path], tamper: Callable[[Path], dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    folder = make()
    _rewrite(folder, model=tamper(folder), **extra)
    with pytest.raises(ArtifactError, match=message):
        chipfit.runtime.load(folder)


@pytest.fixture
def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Path]]:
    """``make(name)``: a module ``name`` on sys.path that creates a marker file when imported (and offers
    onnxruntime's backend as ``backend``); returns the marker's path."""
    made: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str) -> Path:
        marker = tmp_path / f"{name}.imported"
        (tmp_path / f"{name}.py").write_text(
            f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
            "from chipfit.backends.onnxruntime import backend\n"
        )
        made.append(name)
        return marker

    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("backend", ["chipfit_probe_a:backend", "chipfit_probe_a", "os:system", "this:nothing"])
def test_a_backend_that_is_not_built_in_is_refused_before_anything_is_imported(
    make: Callable[..., Path], marker_module: Callable[[str], Path], backend: str
) -> None:
    marker = marker_module("chipfit_probe_a")
    had_this = "this" in sys.modules
    folder = make(backend=backend)
    with pytest.raises(ArtifactError, match=r"not a built-in backend.*CHIPFIT_BACKENDS"):
        chipfit.runtime.load(folder)
    assert not marker.exists() and "chipfit_probe_a" not in sys.modules  # its code never ran
    assert ("this" in sys.modules) == had_this


def test_a_third_party_backend_loads_only_when_opted_in_by_environment_or_registration(
    make: Callable[..., Path], marker_module: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chipfit.backends import register_backend

    by_env, by_call = marker_module("chipfit_probe_b"), marker_module("chipfit_probe_c")
    monkeypatch.setenv("CHIPFIT_BACKENDS", "other:x, chipfit_probe_b:backend")  # restored after the test
    folder = make(backend="chipfit_probe_b:backend")
    m = chipfit.runtime.load(folder)
    assert by_env.exists() and m.run({"x": X})[0].shape == (1, 3)
    m.close()
    _rewrite(folder, backend="chipfit_probe_c:backend")
    with pytest.raises(ArtifactError, match="not a built-in backend"):
        chipfit.runtime.load(folder)  # opting in one plug-in is not opting in all
    assert not by_call.exists()
    register_backend("chipfit_probe_c:backend")
    chipfit.runtime.load(folder).close()
    assert by_call.exists()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something already listens on: were a bad artifact served, the server would fail to bind (exit 1)
    instead of running forever inside the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _serve_fails_in_one_line(folder: Path, port: int, message: str) -> None:
    from typer.testing import CliRunner

    from chipfit.cli import app

    r = CliRunner().invoke(app, ["serve", str(folder), "--port", str(port), "--slo-p99-ms", "100"])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_serve_refuses_a_traversal_manifest_in_one_line(make: Callable[..., Path], busy_port: int) -> None:
    folder = make()
    _rewrite(folder, model=_traversal(folder))
    _serve_fails_in_one_line(folder, busy_port, "points outside the artifact folder")


def test_serve_refuses_a_backend_that_is_not_a_backend_in_one_line(
    make: Callable[..., Path], marker_module: Callable[[str], Path], busy_port: int
) -> None:
    marker = marker_module("chipfit_probe_d")
    _serve_fails_in_one_line(make(backend="os:system"), busy_port, "not a built-in backend")
    _serve_fails_in_one_line(make(backend="chipfit_probe_d:backend"), busy_port, "not a built-in backend")
    assert not marker.exists()


def test_serve_on_an_invalid_json_manifest_exits_2_in_one_line_without_a_traceback(
    make: Callable[..., Path], busy_port: int
) -> None:
    folder = make()
    (folder / "manifest.json").write_text('{"format": 1, "model": ')
    cmd = [sys.executable, "-m", "chipfit", "serve", str(folder), "--port", str(busy_port), "--slo-p99-ms", "100"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not valid JSON" in lines[0] and "Traceback" not in r.stderr, r.stderr
    folder.joinpath("manifest.json").write_text("[1, 2]")  # valid JSON, not a manifest
    _serve_fails_in_one_line(folder, busy_port, "not an object")


def _native_library(folder: Path, marker: Path) -> Path:
    """A real shared library whose constructor writes ``marker`` when it is loaded (dlopen runs it)."""
    import shutil
    import subprocess

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the test library: run `make test` as root (it installs g++)")
    src = folder.parent / "evil.c"
    src.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {"
        f' FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
    )
    lib = folder / "model.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return lib


def test_a_compiled_library_from_elsewhere_is_not_loaded_without_the_opt_in(
    make: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash proves nothing about native code (whoever crafted the artifact wrote it): a library is loaded only
    when this chipfit home built the artifact (its provenance mark verifies) or the user trusts native code."""
    from chipfit.provenance import mark, verifies

    monkeypatch.delenv("CHIPFIT_TRUST_NATIVE", raising=False)
    art = make()
    marker = tmp_path / "ran"
    lib = _native_library(art, marker)
    files = {**_model(art)["sha256"], "model.so": _sha(lib)}
    _rewrite(art, model=_model(art, sha256=files), backend="tvm", runtime_options={"threads": 1, "library": "model.so"})
    with pytest.raises(ArtifactError, match=r"ships native code .*trust_native=True.*CHIPFIT_TRUST_NATIVE=1"):
        chipfit.runtime.load(art)
    _rewrite(art, provenance="0" * 64)  # a forged mark does not verify either
    with pytest.raises(ArtifactError, match="ships native code"):
        chipfit.runtime.load(art)
    assert not marker.exists()
    assert verifies(files, mark(files)) and not verifies({**files, "model.so": "1" * 64}, mark(files))
    monkeypatch.setenv("CHIPFIT_HOME", str(tmp_path / "another-home"))  # another home's key: its own mark only
    assert not verifies(files, json.loads((art / "manifest.json").read_text())["provenance"])


def test_external_data_the_model_names_must_be_inside_the_folder_and_hashed(make: Callable[..., Path]) -> None:
    import onnx

    art = make()
    proto = onnx.load(str(art / "model.onnx"))
    onnx.save(proto, str(art / "model.onnx"), save_as_external_data=True, location="w.data", size_threshold=0)
    files = {"model.onnx": _sha(art / "model.onnx")}  # w.data left out of the table
    _rewrite(art, model=_model(art, sha256=files))
    with pytest.raises(ArtifactError, match=r"external data 'w\.data' has no sha256 entry"):
        chipfit.runtime.load(art)
    bare = onnx.load(str(art / "model.onnx"), load_external_data=False)
    for t in bare.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside/model.onnx"
    onnx.save(bare, str(art / "model.onnx"))
    _rewrite(art, model=_model(art, sha256={"model.onnx": _sha(art / "model.onnx")}))
    with pytest.raises(ArtifactError, match="points outside the artifact folder"):
        chipfit.runtime.load(art)
    _rewrite(art, model=_model(art, sha256={"model.onnx": _sha(art / "model.onnx"), "w.data": _sha(art / "w.data")}))
    onnx.save(proto, str(art / "model.onnx"), save_as_external_data=True, location="w.data", size_threshold=0)
    _rewrite(art, model=_model(art, sha256={"model.onnx": _sha(art / "model.onnx"), "w.data": _sha(art / "w.data")}))
    assert chipfit.runtime.load(art).run({"x": X})[0].shape == (1, 3)  # inside and hashed: it loads
