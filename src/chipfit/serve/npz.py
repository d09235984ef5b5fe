""".npz request bodies read with a bound on what they expand to: a body limit counts compressed bytes, and a
1 MB archive of zeros inflates to 1 GB. Each member's declared size (the zip header, then the .npy header's
shape and dtype) is checked against the limit before anything is inflated, and inflating stops as soon as
the bytes actually produced pass it — a header can lie. Only what ``np.savez`` and ``np.savez_compressed``
write is accepted (stored or deflated members, no encryption, no pickled objects)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

__all__ = ["NpzTooLarge", "read_npz"]

_CHUNK = 1 << 16
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the fixed 30 bytes before a member's name and data


class NpzTooLarge(ValueError):
    """An archive whose members (declared, or as they inflate) are over the limit (HTTP 413)."""


def _raw(body: bytes, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes as stored in the archive (still compressed)."""
    start = info.header_offset
    head = body[start : start + _LOCAL_HEADER.size]
    if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise ValueError(f"member '{info.filename}' has no local header where the directory says")
    fields = _LOCAL_HEADER.unpack(head)
    data = start + _LOCAL_HEADER.size + fields[-2] + fields[-1]  # + name length + extra length
    raw = body[data : data + info.compress_size]
    if len(raw) != info.compress_size:
        raise ValueError(f"member '{info.filename}' is cut short")
    return raw


def _inflate(info: zipfile.ZipInfo, raw: bytes, budget: int) -> bytes:
    """The member's content, inflating at most ``budget`` + 1 bytes whatever its header says."""
    if info.compress_type == zipfile.ZIP_STORED:
        out = raw
    else:
        d = zlib.decompressobj(-zlib.MAX_WBITS)
        parts, size, tail = [], 0, raw
        while tail and not d.eof:
            chunk = d.decompress(tail, min(_CHUNK, budget - size + 1))
            size += len(chunk)
            if size > budget:
                raise NpzTooLarge(f"member '{info.filename}' inflates past the limit of {budget} bytes")
            parts.append(chunk)
            tail = d.unconsumed_tail
            if not chunk and not tail:
                break
        if not d.eof:
            raise ValueError(f"member '{info.filename}' is not a complete deflate stream")
        out = b"".join(parts)
    if len(out) > budget:
        raise NpzTooLarge(f"member '{info.filename}' is {len(out)} bytes, over the limit of {budget}")
    if len(out) != info.file_size or zlib.crc32(out) != info.CRC:
        raise ValueError(f"member '{info.filename}' does not match its header (size or CRC)")
    return out


def _array(name: str, data: bytes) -> np.ndarray:
    """The array of one .npy member, its shape and dtype checked against the bytes it holds (no pickles)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"'{name}' is .npy version {version}")
    if dtype.hasobject:
        raise ValueError(f"'{name}' holds Python objects, which are never unpickled")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(data) - f.tell():
        raise ValueError(f"'{name}' holds {len(data) - f.tell()} bytes; its header says {count * dtype.itemsize}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def read_npz(body: bytes, limit: int) -> dict[str, Any]:
    """``{name: array}`` of an .npz body whose members together hold at most ``limit`` bytes once inflated.
    Raises ``NpzTooLarge`` over the limit, ``ValueError`` (or ``zipfile.BadZipFile``) for anything else."""
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        infos = z.infolist()
    declared = sum(i.file_size for i in infos)
    if declared > limit:
        raise NpzTooLarge(f"its members declare {declared} bytes in all, over the limit of {limit}")
    out: dict[str, Any] = {}
    left = limit
    for info in infos:
        if info.flag_bits & 0x1:
            raise ValueError(f"member '{info.filename}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(
                f"member '{info.filename}' uses compression {info.compress_type}; use np.savez(_compressed)"
            )
        data = _inflate(info, _raw(body, info), left)
        left -= len(data)
        name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
        out[name] = _array(info.filename, data)
    return out
