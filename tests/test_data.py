from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chipfit.data import load_data, split_data, validate_data
from chipfit.errors import DataError
from chipfit.model import load_model
from conftest import make_mlp


@pytest.fixture
def model(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_model(make_mlp(tmp_path / "m.onnx"))


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_npz_folder_and_callable_agree(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    x = np.ones((5, 4), np.float32)
    y = np.arange(5)
    a = validate_data(load_data(_npz(tmp_path, x=x, labels=y)), model)
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "labels.npy", y)
    b = validate_data(load_data(folder), model)
    c = validate_data(load_data(lambda: {"x": x, "labels": y}), model)
    assert a.sha256() == b.sha256() == c.sha256()
    assert a.n == 5 and a.labels is not None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.ones((3, 4), np.float32)}, r"lacks model input\(s\) \['x'\].*Name one array per model input"),
        ({"x": np.ones((3, 4), np.float32), "extra": np.ones(3)}, r"array\(s\) \['extra'\] that are not model inputs"),
        ({"x": np.ones((3, 4), np.int64)}, r"Array 'x' .* has dtype int64 but model input 'x' is float32.*astype"),
        ({"x": np.ones((3, 5), np.float32)}, r"Array 'x' .* expects \[batch, 4\]: axis 1 is 5, expected 4"),
        ({"x": np.ones((3, 4, 1), np.float32)}, r"has shape \(3, 4, 1\) \(3 dims\) but model input 'x' has 2 dims"),
        (
            {"x": np.array([[1, np.nan, 0, 0], [0, 0, 0, 0]], np.float32)},
            r"NaN or infinite values in 1 sample\(s\) \(first at indices \[0\]\)",
        ),
        (
            {"x": np.ones((3, 4), np.float32), "labels": np.arange(2)},
            r"'labels' .* has 2 entries but the inputs hold 3 samples",
        ),
        ({"x": np.ones((0, 4), np.float32)}, r"holds no samples"),
    ],
)
def test_bad_data_is_named_with_the_fix(tmp_path: Path, model, arrays: dict[str, np.ndarray], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=message):
        validate_data(load_data(_npz(tmp_path, **arrays)), model)


def test_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist"):
        load_data(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not an .npz archive"):
        load_data(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"holds no .npy files"):
        load_data(empty)


def test_float64_is_converted_with_a_note(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    d = validate_data(load_data({"x": np.ones((2, 4))}), model)
    assert d.inputs["x"].dtype == np.float32
    assert "converted from float64 to float32" in d.notes[0]


def test_split_has_no_overlap() -> None:
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    calib, ev = split_data(load_data({"x": x}))
    a, b = set(calib.inputs["x"][:, 0]), set(ev.inputs["x"][:, 0])
    assert not a & b and len(a) + len(b) == 100 and len(a) == 20
