"""Atomic writes (chipfit.fsutil): a write interrupted by an exception leaves no partial artifact and keeps the
one that was there; a finished one replaces it whole. Also through ``fit``'s artifact writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chipfit.fsutil import atomic_dir, atomic_write_bytes, atomic_write_text, sha256_file


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_interrupted_folder_write_keeps_the_old_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with atomic_dir(out) as stage:
        (stage / "model.onnx").write_bytes(b"old model")
    assert _files(out) == {"model.onnx": b"old model"}
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(out) as stage:
        (stage / "model.onnx").write_bytes(b"new mod")  # half of the new artifact is written...
        raise RuntimeError("disk full")
    assert _files(out) == {"model.onnx": b"old model"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging folder left
    with atomic_dir(out) as stage:
        (stage / "manifest.json").write_text("{}")
    assert _files(out) == {"manifest.json": b"{}"}  # replaced whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_interrupted_file_write_keeps_the_old_file(tmp_path: Path) -> None:
    f = tmp_path / "budget.json"
    atomic_write_text(f, '{"spent": 1}')
    with pytest.raises(TypeError):
        atomic_write_bytes(f, "not bytes")  # type: ignore[arg-type]  # fails writing, once the temporary file exists
    assert f.read_text() == '{"spent": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["budget.json"]
    import hashlib

    assert sha256_file(f) == hashlib.sha256(b'{"spent": 1}').hexdigest()


def test_fit_keeps_the_previous_artifact_when_writing_the_new_one_fails(
    tmp_path: Path,
    mlp: Path,
    mlp_npz: Path,
    fast_settings: object,
    small_space: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import chipfit
    import chipfit.report

    out = tmp_path / "out"
    kw = {"space": small_space, "settings": fast_settings, "store": f"sqlite:///{tmp_path / 's.db'}"}
    chipfit.fit(mlp, mlp_npz, out=out, **kw)
    before = _files(out)
    assert "manifest.json" in before and "model.onnx" in before

    def broken(result: object) -> str:  # the report is written last: everything else is staged by then
        raise RuntimeError("report failed")

    monkeypatch.setattr(chipfit.report, "render_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        chipfit.fit(mlp, mlp_npz, out=out, **kw)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    assert np.load(mlp_npz)  # the inputs are untouched too


def test_delivered_folders_and_files_get_the_users_permissions_not_a_temp_files(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "art") as staging:
            (staging / "x").write_text("x")
        atomic_write_text(tmp_path / "f.txt", "y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o755  # mkdtemp alone gives 0o700
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644  # mkstemp alone gives 0o600
