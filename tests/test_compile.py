"""The hardware catalogue (validated rows, user files) and `chipfit compile` for targets this machine is not:
cross-compiled with TVM, checked natively or under qemu-user, reopened by runtime.load where it can run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest

import chipfit
from chipfit.errors import ArtifactError, SpecError
from chipfit.hardware.catalog import load_catalog
from chipfit.hardware.cross import host_arch, toolchain
from chipfit.testing.reference_models import cnn, mlp

ROW = """
targets:
  - name: {name}
    title: This machine, portable x86-64 code
    kind: custom
    arch: {arch}
    cores: 1
    peak_gflops: {{fp32: 50}}
    mem_bw_gbs: 10
    memory_gb: 4
    usd_per_hour: {price}
    watts: 10
    source: "user: test row"
    price: {{source: "user: test", date: "2026-11"}}
    tvm: {{kind: llvm, mtriple: {triple}, mcpu: {mcpu}}}
"""


def _user_catalog(tmp_path: Path, name: str = "here", price: float = 0.1) -> Path:
    arch = host_arch()
    triple, mcpu = ("x86_64-linux-gnu", "x86-64") if arch == "x86_64" else (f"{arch}-linux-gnu", "generic")
    path = tmp_path / "mine.yaml"
    path.write_text(ROW.format(name=name, arch=arch, price=price, triple=triple, mcpu=mcpu))
    return path


def _needs_tvm() -> None:
    from chipfit.backends import backend_info

    info = backend_info("tvm")
    if not info.available:
        pytest.skip(f"tvm: {info.reason}")


def test_the_bundled_catalogue_covers_the_kinds_with_sources() -> None:
    cat = load_catalog()
    assert len(cat) >= 20
    kinds = {t.kind for t in cat.values()}
    assert {"cloud-cpu", "cloud-gpu", "edge-cpu", "edge-gpu", "laptop-cpu"} <= kinds
    gpus = " ".join(t.gpu or "" for t in cat.values())
    for name in ("T4", "L4", "A10G", "A100", "H100"):
        assert name in gpus, name
    isas = [set(t.isa) for t in cat.values() if t.kind == "cloud-cpu"]
    assert any("avx512_vnni" in s for s in isas) and any("amx_int8" in s for s in isas)
    assert any("avx2" in s and "avx512f" not in s for s in isas)  # x86 without AVX-512
    assert any(t.arch == "aarch64" and t.kind == "cloud-cpu" for t in cat.values())  # Graviton
    for t in cat.values():
        assert t.source.startswith("https://"), t.name
        assert t.price["source"] and t.price["date"][:2] == "20", t.name
        assert t.peak("fp32") > 0 and t.mem_bw_gbs > 0 and t.memory_gb > 0 and t.usd_per_hour > 0 and t.watts > 0
        assert all(t.peak(d) >= t.peak("fp32") for d in t.peak_gflops), t.name  # lower precision is not slower
        if t.gpu is None and t.kind != "laptop-cpu":
            assert t.tvm, t.name  # every Linux CPU target can be compiled for


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.replace('source: "user: test row"', ""), "'source' must cite"),
        (lambda r: r.replace("mem_bw_gbs: 10", "mem_bw_gbs: -3"), "'mem_bw_gbs' must be a positive number"),
        (lambda r: r.replace("{fp32: 50}", "{fp33: 50, fp32: 1}"), "unknown dtype"),
        (lambda r: r.replace("kind: custom", "kind: toaster"), "kind 'toaster' is not one of"),
        (lambda r: r.replace('date: "2026-11"', ""), "'price' needs a source and a date"),
        (lambda r: "targets: 3", "needs a top-level 'targets:' list"),
        (lambda r: "targets: [\n", "is not valid YAML"),
    ],
)
def test_a_bad_catalogue_row_is_a_clear_error(tmp_path: Path, cli_run, edit, message) -> None:  # type: ignore[no-untyped-def]
    path = _user_catalog(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(SpecError, match=message):
        load_catalog([path])
    assert message.split("'")[0] in cli_run("targets", "--catalog", str(path), code=2)


def test_user_rows_add_and_replace_by_name(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    path = _user_catalog(tmp_path, name="aws-c6a.xlarge", price=9.5)
    rows = json.loads(cli_run("targets", "--catalog", str(path), "--json"))
    mine = [r for r in rows if r["name"] == "aws-c6a.xlarge"]
    assert len(mine) == 1 and mine[0]["usd_per_hour"] == 9.5 and mine[0]["origin"] == str(path.resolve())
    assert len(rows) == len(load_catalog())
    table = cli_run("targets", "--kind", "edge-cpu")
    assert "raspberry-pi-5" in table and "aws-c6a" not in table


def test_compile_for_this_machine_is_checked_natively_and_loads(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    _needs_tvm()
    ref = cnn()
    onnx.save(ref.proto, tmp_path / "cnn.onnx")
    cat = _user_catalog(tmp_path)
    out = tmp_path / "art"
    manifest = json.loads(
        cli_run(
            "compile",
            str(tmp_path / "cnn.onnx"),
            "--target",
            "here",
            "--catalog",
            str(cat),
            "--out",
            str(out),
            "--json",
        )
    )
    assert manifest["check"]["status"] == "passed" and manifest["check"]["how"] == "natively"
    assert manifest["runtime_options"]["library"] == "model.so" and manifest["backend"] == "tvm"
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.so", "manifest.json"}
    session = chipfit.runtime.load(out)
    x = np.random.default_rng(3).standard_normal((2, *ref.input_shape)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})[0], ref.expected(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(host_arch() == "aarch64", reason="this test cross-compiles from another architecture")
def test_cross_compile_for_arm_checked_under_qemu_where_installed(tmp_path: Path) -> None:
    _needs_tvm()
    chain = toolchain("aarch64")
    if not chain.compiler:
        pytest.skip(
            "no aarch64 cross compiler: run `make sysroot-aarch64` as root (installs g++-aarch64-linux-gnu, "
            "qemu-user and an aarch64 sysroot with Python and the TVM runtime)"
        )
    ref = mlp()
    onnx.save(ref.proto, tmp_path / "mlp.onnx")
    np.savez(
        tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((3, *ref.input_shape)).astype(np.float32)
    )
    from chipfit.crosscompile import compile_for_target

    result = compile_for_target(tmp_path / "mlp.onnx", "raspberry-pi-5", tmp_path / "rpi", data=tmp_path / "eval.npz")
    assert result.manifest["target_info"]["arch"] == "aarch64"
    lib = (tmp_path / "rpi" / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 0xB7  # an AArch64 ELF
    why = chain.check_unavailable()
    if why:
        assert result.check == {"status": "not checked", "reason": why}
    else:
        assert result.check["status"] == "passed", result.check
        assert result.check["samples"] == 3 and result.check["max_rel_error"] < 1e-4
        assert "qemu-aarch64" in result.check["how"]
    with pytest.raises(ArtifactError, match=r"compiled for aarch64 and this machine is x86_64"):
        chipfit.runtime.load(tmp_path / "rpi")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 ISA check")
def test_a_target_with_instructions_this_cpu_lacks_is_not_run(tmp_path: Path) -> None:
    _needs_tvm()
    from chipfit.hardware.detect import local_machine

    if "avx512f" in local_machine()["cpu"]["isa"]:
        pytest.skip("this CPU has AVX-512")
    onnx.save(mlp().proto, tmp_path / "mlp.onnx")
    from chipfit.crosscompile import compile_for_target

    result = compile_for_target(tmp_path / "mlp.onnx", "aws-c6i.xlarge", tmp_path / "c6i")
    assert result.check["status"] == "not checked" and "avx512f" in result.check["reason"]


def test_compile_errors_exit_2_and_write_nothing(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    _needs_tvm()
    onnx.save(mlp().proto, tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    m = str(tmp_path / "mlp.onnx")
    assert "unknown target 'nosuch'" in cli_run("compile", m, "--target", "nosuch", "--out", str(out), code=2)
    assert "has no CPU compile target" in cli_run(
        "compile", m, "--target", "aws-g4dn.xlarge", "--out", str(out), code=2
    )
    assert "cannot compile for other targets" in cli_run(
        "compile", m, "--target", "raspberry-pi-5", "--backend", "openvino", "--out", str(out), code=2
    )
    (tmp_path / "file").write_text("x")
    assert "is a file" in cli_run("compile", m, "--target", "raspberry-pi-5", "--out", str(tmp_path / "file"), code=2)
    assert "does not exist" in cli_run(
        "compile", str(tmp_path / "no.onnx"), "--target", "raspberry-pi-5", "--out", str(out), code=2
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_missing_model_is_reported_whatever_toolchain_is_absent(
    tmp_path: Path, cli_run, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The user's input is validated before the environment: no cross compiler, no TVM, and still the answer
    to a missing file is that it does not exist."""
    import chipfit.hardware.cross as cross
    from chipfit.backends import get_backend

    monkeypatch.setattr(
        cross, "toolchain", lambda arch, mtriple="": cross.Toolchain(arch, None, "apt-get x", None, None)
    )
    monkeypatch.setattr(get_backend("tvm"), "unavailable_reason", lambda: "apache-tvm is not installed")
    out = tmp_path / "out"
    message = cli_run("compile", str(tmp_path / "no.onnx"), "--target", "raspberry-pi-5", "--out", str(out), code=2)
    assert "does not exist" in message and "cross compiler" not in message and "apache-tvm" not in message
    onnx.save(mlp().proto, tmp_path / "mlp.onnx")  # an existing model gets to the environment's errors
    assert "apache-tvm is not installed" in cli_run(
        "compile", str(tmp_path / "mlp.onnx"), "--target", "raspberry-pi-5", "--out", str(out), code=2
    )
    assert not out.exists()
