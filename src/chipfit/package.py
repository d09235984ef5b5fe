"""The deployable artifact: the winning model, manifest.json, results.jsonl and report.html in one folder,
written atomically (a staging folder renamed into place), and ``load`` that reopens it exactly as measured.

``load`` trusts nothing in the folder it is given: every file the manifest names (``model.file``, a backend's
``runtime_options.library`` / ``program``, each ``sha256`` key) must be a relative path that stays inside the
folder (symlinks resolved) and have a sha256 entry that matches; the backend must be a built-in one — a
third-party ``"package.module:attribute"`` backend is imported only when opted in (``CHIPFIT_BACKENDS`` or
``chipfit.backends.register_backend``), since importing it runs its code.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chipfit.errors import ArtifactError, ChipfitError, OutputError
from chipfit.fsutil import atomic_dir, sha256_file
from chipfit.model import onnx_files
from chipfit.result import FitResult, batch_profile, constraints_table

if TYPE_CHECKING:
    from chipfit.search.driver import SearchContext

__all__ = [
    "LoadedModel",
    "check_backend",
    "check_writable",
    "inside",
    "load",
    "read_manifest",
    "verify_files",
    "write_artifact",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
FILE_OPTIONS = ("library", "program")  # runtime options that name a file of the artifact (tvm, torch)
MAX_MANIFEST_BYTES = 16 * 2**20


def check_writable(out: Path) -> Path:
    """Fail before any work when ``out`` cannot become an artifact folder."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file; pass a folder path (it is created if missing).")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise OutputError(
            f"--out '{out}' is a non-empty folder that is not a chipfit artifact; refusing to overwrite it. "
            "Pass a new or empty folder."
        )
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".chipfit-probe-", delete=True):
            pass
    except OSError as exc:
        raise OutputError(
            f"--out '{out}' is not writable ({exc.strerror or exc}). Pass a folder you can write to."
        ) from None
    return out


def _provenance(files: dict[str, str]) -> str:
    from chipfit.provenance import mark

    return mark(files) if files else ""


def _manifest(
    result: FitResult, model_file: str | None, files: dict[str, str], runtime_options: dict[str, Any] | None
) -> dict[str, Any]:
    from chipfit import __version__

    w = result.winner
    return {
        "format": FORMAT_VERSION,
        "chipfit_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "feasible": result.feasible,
        "model": {"file": model_file, "sha256": files, "source": result.model.summary()},
        "provenance": _provenance(files),
        "backend": w.candidate.backend if w else None,
        "target": w.candidate.target if w else None,
        "candidate": w.candidate.to_dict() if w else None,
        "runtime_options": runtime_options,
        "measurements": w.measurement.metrics if w else None,
        "batch_profile": batch_profile(result),
        "objective": result.spec.objective,
        "spec": result.spec.model_dump(),
        "constraints": constraints_table(result),
        "reference": result.reference.measurement.metrics if result.reference else None,
        "environment": result.environment,
        "notes": result.notes + (w.measurement.notes if w else []),
    }


def write_artifact(result: FitResult, out: Path, ctx: SearchContext) -> Path:
    """Write the artifact to a staging folder beside ``out`` and swap it in (``fsutil.atomic_dir``): nothing
    is half-written, and a write that fails keeps the artifact that was there."""
    from chipfit.passes import apply_passes
    from chipfit.report import render_report

    with atomic_dir(out) as staging:
        files: dict[str, str] = {}
        model_file = None
        runtime_options = None
        if result.winner is not None:
            variant, _ = apply_passes(
                ctx.model_path,
                ctx.model_sha256,
                list(result.winner.candidate.passes),
                ctx.variants_dir,
                ctx.pass_context(),
            )
            for p in onnx_files(variant):  # the model is always model.onnx; external data keeps its names
                shutil.copy2(p, staging / ("model.onnx" if p == variant else p.name))
            model_file = "model.onnx"
            runtime_options = _package_backend(result.winner.candidate, staging / model_file, variant)
            files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        with open(staging / "results.jsonl", "w") as f:
            for r in result.candidates:
                f.write(json.dumps(r.to_dict(), default=_json_default) + "\n")
        (staging / MANIFEST).write_text(
            json.dumps(_manifest(result, model_file, files, runtime_options), indent=2, default=_json_default)
        )
        (staging / "report.html").write_text(render_report(result))
    return out


def _package_backend(c: Any, model_file: Path, variant: Path) -> dict[str, Any]:
    """The runtime options to record; a backend with a ``package`` hook also writes its deployable files
    (a compiled library, a torch program) beside the model, compiled for the batch size it was measured at."""
    from chipfit.backends import get_backend

    backend = get_backend(c.backend)
    options = dict(c.options)
    if backend.capabilities.specializes_batch:
        options["batch"] = c.batch
    hook = getattr(backend, "package", None)
    if hook is None:
        return options
    return dict(hook(variant, c.target, options, model_file.parent))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


class LoadedModel:
    """A model from an artifact, on the backend and with the options it was measured with."""

    def __init__(self, executable: Any, manifest: dict[str, Any], path: Path) -> None:
        self._exe = executable
        self.manifest = manifest
        self.path = path
        self.input_names: list[str] = list(executable.input_names)
        self.output_names: list[str] = list(executable.output_names)
        self.backend: str = manifest["backend"]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._exe.run(feeds)

    def close(self) -> None:
        self._exe.close()

    def __repr__(self) -> str:
        return f"LoadedModel({str(self.path)!r}, backend={self.backend!r}, inputs={self.input_names})"


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder`` as a JSON object; ``ArtifactError`` naming the problem otherwise."""
    mf = folder / MANIFEST
    if not mf.is_file():
        raise ArtifactError(
            f"'{folder}' is not a chipfit artifact: {MANIFEST} is missing. Pass the --out folder of `chipfit fit`."
        )
    if mf.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"'{mf}' is over {MAX_MANIFEST_BYTES >> 20} MiB; it is not a chipfit manifest.")
    try:
        doc = json.loads(mf.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"'{mf}' is not valid JSON ({exc}); the artifact is damaged. Run `chipfit fit` again."
        ) from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"'{mf}' holds a JSON {type(doc).__name__}, not an object; the artifact is damaged.")
    return doc


def inside(folder: Path, name: Any, what: str) -> Path:
    """The resolved path of ``name`` when it is a relative path that stays inside ``folder`` (``..`` and
    symlinks followed); ``ArtifactError`` otherwise."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"Artifact '{folder}': {what} must be a file name inside the folder, got {name!r}.")
    root = folder.resolve()
    target = (root / name).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or target == root or not target.is_relative_to(root):
        raise ArtifactError(
            f"Artifact '{folder}': {what} '{name}' points outside the artifact folder; an artifact may only name "
            "files inside it. Use the folder `chipfit fit` wrote, unchanged."
        )
    return target


def verify_files(folder: Path, manifest: dict[str, Any]) -> Path:
    """Check that every file the manifest names is inside ``folder`` and has a sha256 entry, and that every
    entry matches its file; the model file's path."""
    model = manifest.get("model")
    hashes = model.get("sha256") if isinstance(model, dict) else None
    if (
        not isinstance(model, dict)
        or not isinstance(hashes, dict)
        or not all(isinstance(v, str) for v in hashes.values())
    ):
        raise ArtifactError(f"Artifact '{folder}': {MANIFEST} has no model.sha256 table; the artifact is damaged.")
    options = manifest.get("runtime_options") or {}
    if not isinstance(options, dict):
        raise ArtifactError(f"Artifact '{folder}': runtime_options in {MANIFEST} must be an object.")
    named = {"model.file": model.get("file")} | {
        f"runtime_options.{k}": options[k] for k in FILE_OPTIONS if options.get(k)
    }
    for what, name in named.items():
        inside(folder, name, what)
        if name not in hashes:
            raise ArtifactError(
                f"Artifact '{folder}': {what} '{name}' has no sha256 entry in {MANIFEST}; every file an artifact "
                "names must have one. Re-run `chipfit fit` to produce a complete artifact."
            )
    for name, digest in hashes.items():
        f = inside(folder, name, "a model.sha256 entry")
        if not f.is_file():
            raise ArtifactError(f"Artifact '{folder}' lacks '{name}', which its manifest lists.")
        actual = sha256_file(f)
        if actual != digest:
            raise ArtifactError(
                f"'{f}' does not match the sha256 in {MANIFEST} (expected {digest[:12]}…, got {actual[:12]}…): "
                "the model was changed after it was measured. Re-run `chipfit fit` to produce a fresh artifact."
            )
    model_path = inside(folder, model["file"], "model.file")
    for location in _external_locations(model_path):  # the model's own external-data references
        inside(folder, location, "an external-data location inside the model")
        if location not in hashes:
            raise ArtifactError(
                f"Artifact '{folder}': the model's external data '{location}' has no sha256 entry in {MANIFEST}; "
                "every file an artifact uses must have one. Re-run `chipfit fit` to produce a complete artifact."
            )
    return model_path


def _external_locations(model_path: Path) -> list[str]:
    """The external-data files the ONNX file names, relative to its folder as written (``../x`` stays so)."""
    try:
        extra = onnx_files(model_path)[1:]
    except Exception:  # not ONNX (a torch program's artifact names its own files): the backend says what it is
        return []
    return [str(p.relative_to(model_path.parent)) if p.is_relative_to(model_path.parent) else str(p) for p in extra]


def check_backend(name: Any, folder: Path) -> str:
    """``name`` when it is a built-in backend or an opted-in plug-in (``CHIPFIT_BACKENDS``,
    ``chipfit.backends.register_backend``); nothing is imported before this check passes."""
    from chipfit.backends import BUILTIN, PLUGINS_ENV, is_registered

    if not isinstance(name, str) or not name:
        raise ArtifactError(f"Artifact '{folder}': its manifest names no backend (got {name!r}); it is damaged.")
    if is_registered(name):
        return name
    shown = name if len(name) <= 80 else name[:80] + "..."
    raise ArtifactError(
        f"Artifact '{folder}' names backend '{shown}', which is not a built-in backend ({', '.join(BUILTIN)}) nor "
        "an opted-in plug-in. A plug-in backend is imported (running its code) only when trusted: set "
        f"{PLUGINS_ENV}={shown} (comma-separated) or call chipfit.backends.register_backend('{shown}') first."
    )


def _check_native(folder: Path, manifest: dict[str, Any], trust_native: bool) -> None:
    """Refuse a compiled library this home did not build, unless the user trusts native code from elsewhere."""
    from chipfit.provenance import TRUST_ENV, native_trusted, verifies

    options = manifest.get("runtime_options") or {}
    library = options.get("library") if isinstance(options, dict) else None
    if not library or native_trusted(trust_native):
        return
    files = manifest["model"].get("sha256") or {}
    if verifies(files, manifest.get("provenance")):
        return
    raise ArtifactError(
        f"Artifact '{folder}' ships native code ('{library}', a compiled library: loading it runs its code) and "
        "was not built by this chipfit home. If you trust whoever built it, load it with trust_native=True, "
        f"set {TRUST_ENV}=1, or pass --trust-native to chipfit serve."
    )


def load(
    path: str | Path, threads: int | None = None, serving: bool = False, trust_native: bool = False
) -> LoadedModel:
    """Open an artifact folder: check that every file the manifest names is inside the folder and matches its
    sha256, and that the backend is a built-in one or an opted-in plug-in (``$CHIPFIT_BACKENDS``), then
    compile the model with the recorded backend, target and runtime options (``threads`` replaces the recorded
    thread count: a server running several models gives each its share of the CPU quota; ``serving``: pool
    threads sleep when idle instead of spinning, leaving the cores to the server's event loop). Native code
    in the artifact (a compiled library) is loaded only when this chipfit home built the artifact or the user
    trusts it (``trust_native``, ``$CHIPFIT_TRUST_NATIVE=1``): see ``chipfit.provenance``."""
    from chipfit.backends import get_backend

    folder = Path(path)
    manifest = read_manifest(folder)
    model = manifest.get("model")
    if not manifest.get("feasible") or not isinstance(model, dict) or not model.get("file"):
        raise ArtifactError(
            f"Artifact '{folder}' holds no model: no candidate met the constraints. See its report.html and "
            "relax the constraints."
        )
    model_path = verify_files(folder, manifest)
    _check_native(folder, manifest, trust_native)
    name = check_backend(manifest.get("backend"), folder)
    backend = get_backend(name)
    reason = backend.unavailable_reason()
    if reason:
        from chipfit.errors import BackendUnavailableError

        raise BackendUnavailableError(f"Artifact '{folder}' needs backend '{name}': {reason}")
    try:
        options = dict(manifest.get("runtime_options") or {})
        if threads is not None:
            options["threads"] = int(threads)  # every backend's thread count (ONNX Runtime: over intra-op's)
        if serving:
            options["allow_spinning"] = False  # a backend with spinning pool threads turns it off; others ignore it
        target = manifest.get("target") or "cpu"
        if not isinstance(target, str):
            raise ArtifactError(f"Artifact '{folder}': target in {MANIFEST} must be a string, got {target!r}.")
        exe = backend.compile(model_path, target, options)
    except ChipfitError:
        raise
    except ValueError as exc:  # e.g. a module compiled for another architecture
        raise ArtifactError(f"Artifact '{folder}' cannot run here: {exc}.") from None
    except Exception as exc:  # a model file the backend cannot open (its hash matches a damaged manifest)
        first = " ".join(str(exc).split())[:300]
        raise ArtifactError(
            f"Artifact '{folder}': backend '{name}' cannot open '{model_path.name}' ({type(exc).__name__}: {first})."
        ) from None
    return LoadedModel(exe, manifest, folder)
