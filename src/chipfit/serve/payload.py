"""Request and response bodies of ``chipfit serve``: JSON (``{"inputs": {name: nested lists}}``, parsed with
orjson) or a binary ``.npz`` (``Content-Type: application/x-npz``) for large tensors. Every input is checked
against the model's signature — names, rank, fixed dimensions, dtype, equal row counts — and a mismatch is a
``PayloadError`` (HTTP 400) whose message names the input and what the model takes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from chipfit.serve.npz import NpzTooLarge, read_npz

__all__ = ["NPZ", "InputSpec", "PayloadError", "PayloadTooLarge", "decode", "encode"]

NPZ = "application/x-npz"


class PayloadError(ValueError):
    """A request body the model cannot take (HTTP 400)."""


class PayloadTooLarge(PayloadError):
    """A request body over a size limit once expanded, or with more rows than a request may send (HTTP 413)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str | None, ...]  # the first dimension is the batch

    def describe(self) -> str:
        dims = ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(self.shape))
        return f"{self.dtype.name}[{dims}]"


def _check(spec: InputSpec, arr: np.ndarray) -> None:
    if arr.ndim != len(spec.shape):
        raise PayloadError(
            f"input '{spec.name}' has shape {list(arr.shape)}; the model takes {spec.describe()} "
            f"({len(spec.shape)} dimensions, the first the batch)."
        )
    for i, (got, want) in enumerate(zip(arr.shape[1:], spec.shape[1:], strict=True), start=1):
        if isinstance(want, int) and got != want:
            raise PayloadError(f"input '{spec.name}' has {got} in dimension {i}; the model takes {spec.describe()}.")
    if arr.shape[0] < 1:
        raise PayloadError(f"input '{spec.name}' has no rows; send at least one.")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0])
        raise PayloadError(
            f"input '{spec.name}' holds a value that is not a finite {spec.dtype.name} in row {row} (inf, NaN, "
            f"or a number out of {spec.dtype.name}'s range such as 1e308); send finite numbers."
        )


def _from_json(spec: InputSpec, value: Any) -> np.ndarray:
    if not isinstance(value, list):
        raise PayloadError(f"input '{spec.name}' must be a nested list (batch first), got {type(value).__name__}.")
    try:
        arr = np.asarray(value)
    except ValueError:
        raise PayloadError(f"input '{spec.name}' is ragged: every row must have the same shape.") from None
    if arr.dtype == object or arr.dtype.kind in "US":
        raise PayloadError(f"input '{spec.name}' must hold numbers; the model takes {spec.describe()}.")
    if spec.dtype.kind in "iu" and arr.dtype.kind == "f":
        raise PayloadError(f"input '{spec.name}' holds fractional numbers; the model takes {spec.describe()}.")
    if spec.dtype.kind == "b" and arr.dtype.kind != "b":
        raise PayloadError(f"input '{spec.name}' must hold true/false; the model takes {spec.describe()}.")
    with np.errstate(over="ignore", invalid="ignore"):  # out of the dtype's range: inf, refused by _check
        return arr.astype(spec.dtype, copy=False)


def decode(
    body: bytes,
    content_type: str,
    specs: list[InputSpec],
    max_bytes: int = 64 * 2**20,
    max_rows: int | None = None,
) -> tuple[dict[str, np.ndarray], int, bool]:
    """The feeds, their row count, and whether the client sent npz (the reply uses the same format). An .npz
    body's members may hold ``max_bytes`` in all once inflated (checked as they inflate, not trusted from
    their headers); over it, or more than ``max_rows`` rows (counted before any list becomes an array), is
    ``PayloadTooLarge``."""
    binary = content_type.split(";")[0].strip().lower() == NPZ
    if binary:
        try:
            raw: dict[str, Any] = read_npz(body, max_bytes)
        except NpzTooLarge as exc:
            raise PayloadTooLarge(f"the .npz body expands past the limit of {max_bytes} bytes: {exc}.") from None
        except Exception as exc:  # zipfile, zlib and numpy raise several types for a damaged archive
            raise PayloadError(f"the body is not a readable .npz archive ({type(exc).__name__}: {exc}).") from None
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"the body is not valid JSON ({exc}).") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
            raise PayloadError('the body must be {"inputs": {"<input name>": [[...]]}}.')
        raw = doc["inputs"]
    names = [s.name for s in specs]
    missing = [n for n in names if n not in raw]
    extra = [n for n in raw if n not in names]
    if missing or extra:
        raise PayloadError(
            f"inputs {sorted(raw)} do not match the model's {names}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
            + "."
        )
    if max_rows is not None:
        for n in names:
            v = raw[n]
            rows = len(v) if isinstance(v, list) else (v.shape[0] if isinstance(v, np.ndarray) and v.ndim else 0)
            if rows > max_rows:  # it could never be queued, however idle the server: a 429 would loop forever
                raise PayloadTooLarge(
                    f"{rows} rows are more than one request may send ({max_rows}, the queue's size: --max-queue); "
                    f"split them into requests of at most {max_rows} rows."
                )
    feeds = {}
    for s in specs:
        arr = raw[s.name]
        if binary:
            if arr.dtype != s.dtype:
                raise PayloadError(f"input '{s.name}' is {arr.dtype.name}; the model takes {s.describe()}.")
        else:
            arr = _from_json(s, arr)
        _check(s, arr)
        feeds[s.name] = arr
    rows = {len(a) for a in feeds.values()}
    if len(rows) > 1:
        raise PayloadError(f"inputs have different row counts {sorted(rows)}; send the same number of rows each.")
    return feeds, rows.pop(), binary


def encode(outputs: dict[str, np.ndarray], binary: bool) -> tuple[bytes, str]:
    if binary:
        buf = io.BytesIO()
        np.savez(buf, **outputs)  # type: ignore[arg-type]
        return buf.getvalue(), NPZ
    outputs = {k: np.ascontiguousarray(v) for k, v in outputs.items()}  # row slices already are: no copy
    return orjson.dumps({"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"
