"""Uploaded files: streamed to disk under the data dir with a size limit and a sha256, named by their hash
(never by the client's file name), then checked by chipfit's own loaders, as the CLI would: a model through
``chipfit.model.load_model`` (a .pt2 that holds pickles or code is refused: never ``trust_pickle``), data through
``chipfit.data.load_data`` + ``validate_data`` (as ``fit`` validates it).

An ONNX model with external data comes as several ``file`` parts: the ``.onnx`` and each file its tensors
reference (by the name the model gives, e.g. ``model.onnx.data``). The references are rewritten to the parts'
hash names, so that no client-chosen name reaches the file system.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from chipfit.errors import DataError, ModelError
from chipfit.server.errors import Invalid, TooLarge, UnsupportedType

__all__ = ["SavedFile", "Upload", "client_name", "save_upload", "store_data", "store_model"]

_CHUNK = 1 << 20
_MODEL_SUFFIXES = (".onnx", ".pt2")


class Upload(Protocol):
    """What FastAPI's ``UploadFile`` offers, and all that is used of it."""

    @property
    def filename(self) -> str | None: ...

    @property
    def file(self) -> BinaryIO: ...


@dataclass(frozen=True)
class SavedFile:
    name: str  # the client's name, cleaned: shown to the team, never used as a path
    path: Path  # a temporary file under the data dir
    sha256: str
    size: int


def client_name(filename: str | None) -> str:
    """The client's file name for display: its last component, printable characters only, at most 200."""
    base = re.split(r"[\\/]", filename or "")[-1]
    return re.sub(r"[^\w.\- ()+]", "_", base)[:200] or "upload"


def save_upload(upload: Upload, tmp_dir: Path, limit: int) -> SavedFile:
    """Copy ``upload`` to a temporary file in ``tmp_dir`` by chunks, hashing it; 413 past ``limit`` bytes."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    h, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(
                        f"'{client_name(upload.filename)}' is larger than this server's upload limit of "
                        f"{limit / 2**20:g} MB. Upload a smaller file, or start the server with a higher limit."
                    )
                h.update(chunk)
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return SavedFile(client_name(upload.filename), Path(name), h.hexdigest(), size)


def _tensors_with_location(proto: Any) -> list[tuple[Any, Any]]:
    import onnx

    from chipfit.onnx_files import all_tensors

    out = []
    for t in all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    out.append((t, entry))
    return out


def _place_onnx(main: SavedFile, extra: Sequence[SavedFile], folder: Path) -> Path:
    """The model in ``folder`` as ``model.onnx``, its external data files renamed to their hashes."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(main.path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise Invalid(
            f"'{main.name}' is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]}). Upload the .onnx "
            "file as exported (torch.onnx.export, onnx.save)."
        ) from None
    by_name = {f.name: f for f in extra}
    refs = _tensors_with_location(proto)
    needed = sorted({e.value for _, e in refs})
    missing = [n for n in needed if client_name(n) not in by_name]
    if missing:
        raise Invalid(
            f"'{main.name}' keeps tensors in external data file(s) {missing} that were not uploaded: add each "
            "as another 'file' part named as the model references it."
        )
    unused = sorted(set(by_name) - {client_name(n) for n in needed})
    if unused:
        raise Invalid(f"Uploaded file(s) {unused} are not external data of '{main.name}': upload only those it uses.")
    folder.mkdir(parents=True, exist_ok=True)
    for _, entry in refs:
        f = by_name[client_name(entry.value)]
        entry.value = f"{f.sha256[:32]}.bin"
    for f in extra:
        dest = folder / f"{f.sha256[:32]}.bin"
        if not dest.exists():
            shutil.copyfile(f.path, dest)
    target = folder / "model.onnx"
    if refs:
        onnx.save_model(proto, str(target))  # locations rewritten; tensors stay external
    else:
        shutil.copyfile(main.path, target)
    return target


def store_model(files: Sequence[SavedFile], models_dir: Path, home: Path) -> tuple[Any, str]:
    """Place the uploaded model under ``models_dir/<hash>/`` and load it with chipfit's loader. Returns the
    ``chipfit.model.Model`` and the client's file name."""
    from chipfit.model import load_model

    if not files:
        raise Invalid("No file uploaded: send the model as the multipart field 'file'.")
    mains = [f for f in files if f.name.lower().endswith(_MODEL_SUFFIXES)]
    if len(mains) != 1:
        names = [f.name for f in files]
        raise UnsupportedType(
            f"Expected one .onnx (with its external data files, if any) or one .pt2 ExportedProgram; got {names}. "
            "Export the model to ONNX (torch.onnx.export) or save it with torch.export.save."
        )
    main = mains[0]
    extra = [f for f in files if f is not main]
    key = hashlib.sha256("".join(sorted(f.sha256 for f in files)).encode()).hexdigest()
    folder = models_dir / key
    try:
        if main.name.lower().endswith(".pt2"):
            if extra:
                raise UnsupportedType(f"A .pt2 upload is one file; got {[f.name for f in files]}.")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "model.pt2"
            if not path.exists():
                shutil.copyfile(main.path, path)
        else:
            path = _place_onnx(main, extra, folder)
        return load_model(path, home=home, trust_pickle=False), main.name
    except ModelError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise Invalid(_client_message(str(exc), folder, main.name)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def store_data(upload: SavedFile, data_dir: Path, model: Any) -> tuple[Path, dict[str, Any]]:
    """Place an evaluation set (.npz) under ``data_dir`` by hash after checking it as ``fit`` checks it."""
    from chipfit.data import load_data, validate_data

    if not upload.name.lower().endswith(".npz"):
        raise UnsupportedType(
            f"Evaluation data must be an .npz archive (one array per model input, named as the input, optional "
            f"'labels'); got '{upload.name}'. Write it with np.savez."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{upload.sha256}.npz"
    if not path.exists():
        shutil.copyfile(upload.path, path)
    try:
        ds = validate_data(load_data(path), model)
    except DataError as exc:
        path.unlink(missing_ok=True)
        raise Invalid(_client_message(str(exc), path, upload.name)) from None
    info = {
        "samples": ds.n,
        "labels": ds.labels is not None,
        "arrays": {k: list(v.shape) for k, v in ds.inputs.items()},
        "size_bytes": upload.size,
    }
    return path, info


def _client_message(text: str, server_path: Path, name: str) -> str:
    """An error message with the server's paths replaced by the client's file name."""
    for p in (str(server_path / "model.onnx"), str(server_path / "model.pt2"), str(server_path)):
        text = text.replace(p, name)
    return text
