"""Evaluation and calibration data: an .npz file, a folder of .npy files, a dict or a Python callable.

One array per model input, named as the input, samples along axis 0; optionally ``labels``. The data is
validated against the model (names, dtypes, shapes, NaNs, label count) before anything is measured.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.errors import DataError

if TYPE_CHECKING:
    from chipfit.model import Model, TensorSpec

__all__ = ["LABELS", "Dataset", "load_data", "split_data", "validate_data"]

LABELS = "labels"
DataSource = "str | Path | Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]] | Dataset"


@dataclass
class Dataset:
    """Arrays by model input name (axis 0 = samples) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "in-memory"
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(
            {k: v[idx] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[idx],
            self.source,
        )

    def sha256(self) -> str:
        h = hashlib.sha256()
        arrays = sorted(self.inputs.items()) + ([(LABELS, self.labels)] if self.labels is not None else [])
        for name, arr in arrays:
            a = np.ascontiguousarray(arr)
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def save(self, folder: Path) -> Path:
        """Write one .npy per array (workers memory-map them)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in self.inputs.items():
            np.save(folder / f"{_safe(name)}.npy", np.ascontiguousarray(arr))
        if self.labels is not None:
            np.save(folder / f"{LABELS}.npy", self.labels)
        return folder

    @staticmethod
    def load_saved(folder: Path, names: list[str]) -> Dataset:
        inputs = {n: np.load(folder / f"{_safe(n)}.npy", mmap_mode="r") for n in names}
        lab = folder / f"{LABELS}.npy"
        return Dataset(inputs, np.load(lab) if lab.exists() else None, str(folder))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _from_mapping(arrays: Mapping[str, Any], source: str) -> Dataset:
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    labels = arrays.pop(LABELS, None)
    if not arrays:
        raise DataError(f"Data '{source}' holds no input arrays. Store one array per model input, named as the input.")
    return Dataset(arrays, labels, source)


def load_data(source: Any) -> Dataset:
    """Read data from an .npz file, a folder of .npy files, a mapping, a callable or a Dataset."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, Mapping):
        return _from_mapping(source, "in-memory mapping")
    if callable(source) and not isinstance(source, (str, Path)):
        try:
            produced = source()
        except Exception as exc:
            raise DataError(f"The data callable {getattr(source, '__name__', source)!r} raised {exc!r}.") from None
        if not isinstance(produced, Mapping):
            raise DataError(
                f"The data callable must return a mapping of input name -> array; got {type(produced).__name__}."
            )
        return _from_mapping(produced, f"callable {getattr(source, '__name__', '?')}")
    path = Path(source)
    if not path.exists():
        raise DataError(f"Data file '{path}' does not exist. Pass an .npz file or a folder of .npy files.")
    if path.is_dir():
        try:
            files = sorted(path.glob("*.npy"))
        except OSError as exc:
            raise DataError(f"Data folder '{path}' cannot be read ({exc.strerror or exc}).") from None
        if not files:
            raise DataError(f"Data folder '{path}' holds no .npy files. Save one <input name>.npy per model input.")
        return _from_mapping({f.stem: _read_npy(f) for f in files}, str(path))
    return _from_mapping(_read_npz(path), str(path))


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip
_NPY_MAGIC = b"\x93NUMPY"


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(8)
    except OSError as exc:
        raise DataError(f"Data file '{path}' cannot be read ({exc.strerror or exc}). Check its permissions.") from None


def _why(exc: BaseException) -> str:
    """numpy's reason, except its advice to unpickle: chipfit never loads pickled (object) arrays."""
    text = " ".join(str(exc).split())[:200]
    if "pickle" in text.lower():
        return "it holds an object array, which only unpickling could read; save numeric arrays instead"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_npy(path: Path) -> np.ndarray:
    if not _head(path).startswith(_NPY_MAGIC):
        raise DataError(f"Data file '{path}' is not an .npy array (no NumPy header). Write it with np.save.")
    try:
        arr: np.ndarray = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"Data file '{path}' is not a readable .npy array ({_why(exc)}).") from None
    return arr


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    head = _head(path)
    if head.startswith(_NPY_MAGIC):
        raise DataError(
            f"Data file '{path}' is a single .npy array, not an .npz archive. Save the arrays by input name with "
            "np.savez(path, <input name>=array, labels=...), or pass a folder of <input name>.npy files."
        )
    if not head.startswith(_ZIP_MAGIC):
        raise DataError(
            f"Data file '{path}' is not an .npz archive (it does not start with a zip header). "
            "Write it with np.savez(path, <input name>=array, labels=...)."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(
            f"Data file '{path}' is not a readable .npz file ({_why(exc)}). Write it with np.savez."
        ) from None
    for k, v in arrays.items():
        if not isinstance(v, np.ndarray):  # numpy hands back the raw bytes of a zip member that is not .npy
            raise DataError(f"Data file '{path}' holds '{k}', which is not an .npy array. Write it with np.savez.")
    return arrays


def _check_input(name: str, arr: np.ndarray, spec: TensorSpec, source: str) -> tuple[np.ndarray, str | None]:
    want = np.dtype(spec.dtype) if spec.dtype in np.sctypeDict else None
    note = None
    if arr.dtype.kind in "OUSV":
        raise DataError(f"Array '{name}' in {source} has dtype {arr.dtype}; the model input needs {spec.dtype}.")
    if want is not None and arr.dtype != want:
        if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
            raise DataError(
                f"Array '{name}' in {source} has dtype {arr.dtype} but model input '{name}' is {spec.dtype}. "
                f"Convert it: arr.astype(np.{spec.dtype})."
            )
        note = f"array '{name}' converted from {arr.dtype} to {spec.dtype}"
        arr = arr.astype(want)
    if arr.ndim != len(spec.shape):
        raise DataError(
            f"Array '{name}' in {source} has shape {arr.shape} ({arr.ndim} dims) but model input '{name}' "
            f"has {len(spec.shape)} dims {_fmt_shape(spec.shape)}; axis 0 holds the samples."
        )
    for axis, (got, exp) in enumerate(zip(arr.shape[1:], spec.shape[1:], strict=True), start=1):
        if isinstance(exp, int) and got != exp:
            raise DataError(
                f"Array '{name}' in {source} has shape {arr.shape} but model input '{name}' expects "
                f"{_fmt_shape(spec.shape)}: axis {axis} is {got}, expected {exp}."
            )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1) if len(arr) else np.zeros(0, bool)
        if bad.any():
            idx = np.flatnonzero(bad)
            raise DataError(
                f"Array '{name}' in {source} has NaN or infinite values in {len(idx)} sample(s) "
                f"(first at indices {idx[:5].tolist()}). Drop or clean those samples."
            )
    return arr, note


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def validate_data(data: Dataset, model: Model) -> Dataset:
    """Check data against the model's inputs; returns the data with safe dtype conversions applied."""
    names = [t.name for t in model.inputs]
    missing = [n for n in names if n not in data.inputs]
    extra = [n for n in data.inputs if n not in names]
    if missing:
        raise DataError(
            f"Data {data.source} lacks model input(s) {missing}; it has {sorted(data.inputs)}. "
            f"Name one array per model input: {names} (and optionally '{LABELS}')."
        )
    if extra:
        raise DataError(
            f"Data {data.source} has array(s) {extra} that are not model inputs {names} or '{LABELS}'. "
            "Remove or rename them."
        )
    counts = {n: len(a) if a.ndim else 0 for n, a in data.inputs.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"Arrays in {data.source} hold different numbers of samples (axis 0): {counts}.")
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError(f"Data {data.source} holds no samples (axis 0 is empty).")
    inputs, notes = {}, []
    for spec in model.inputs:
        arr, note = _check_input(spec.name, data.inputs[spec.name], spec, data.source)
        inputs[spec.name] = arr
        if note:
            notes.append(note)
    labels = data.labels
    if labels is not None:
        if labels.ndim == 0 or len(labels) != n:
            raise DataError(
                f"'{LABELS}' in {data.source} has {labels.size if labels.ndim == 0 else len(labels)} entries "
                f"but the inputs hold {n} samples; give one label per sample."
            )
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise DataError(f"'{LABELS}' in {data.source} has NaN or infinite values; drop those samples.")
    return Dataset(inputs, labels, data.source, notes)


def split_data(
    data: Dataset, calib: Dataset | None = None, calib_fraction: float = 0.2, max_calib: int = 256, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """(calibration, evaluation) without overlap; with separate calibration data, all of ``data`` evaluates."""
    if calib is not None:
        return calib, data
    n = data.n
    if n < 2:
        return data, data  # one sample: nothing to split; calibration reuses it (noted by the caller)
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, min(max_calib, int(n * calib_fraction)))
    return data.subset(np.sort(order[:k])), data.subset(np.sort(order[k:]))
