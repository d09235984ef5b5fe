"""The deployable artifact: the winning model, manifest.json, results.jsonl and report.html in one folder,
written atomically (a staging folder renamed into place), and ``load`` that reopens it exactly as measured.
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

from chipfit.errors import ArtifactError, OutputError
from chipfit.fsutil import atomic_dir, sha256_file
from chipfit.model import onnx_files
from chipfit.result import FitResult, batch_profile, constraints_table

if TYPE_CHECKING:
    from chipfit.search.driver import SearchContext

__all__ = ["LoadedModel", "check_writable", "load", "write_artifact"]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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


def load(path: str | Path, threads: int | None = None, serving: bool = False) -> LoadedModel:
    """Open an artifact folder: check the model files against the manifest's hashes, then compile the model
    with the recorded backend, target and runtime options (``threads`` replaces the recorded thread count:
    a server running several models gives each its share of the CPU quota; ``serving``: pool threads sleep
    when idle instead of spinning, leaving the cores to the server's event loop)."""
    from chipfit.backends import get_backend

    folder = Path(path)
    mf = folder / MANIFEST
    if not mf.is_file():
        raise ArtifactError(
            f"'{folder}' is not a chipfit artifact: {MANIFEST} is missing. Pass the --out folder of `chipfit fit`."
        )
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"'{mf}' is not valid JSON ({exc}); the artifact is damaged. Run `chipfit fit` again."
        ) from None
    model = manifest.get("model", {})
    if not manifest.get("feasible") or not model.get("file"):
        raise ArtifactError(
            f"Artifact '{folder}' holds no model: no candidate met the constraints. See its report.html and "
            "relax the constraints."
        )
    for name, digest in model["sha256"].items():
        f = folder / name
        if not f.is_file():
            raise ArtifactError(f"Artifact '{folder}' lacks '{name}', which its manifest lists.")
        actual = sha256_file(f)
        if actual != digest:
            raise ArtifactError(
                f"'{f}' does not match the sha256 in {MANIFEST} (expected {digest[:12]}…, got {actual[:12]}…): "
                "the model was changed after it was measured. Re-run `chipfit fit` to produce a fresh artifact."
            )
    backend = get_backend(manifest["backend"])
    reason = backend.unavailable_reason()
    if reason:
        from chipfit.errors import BackendUnavailableError

        raise BackendUnavailableError(f"Artifact '{folder}' needs backend '{manifest['backend']}': {reason}")
    try:
        options = dict(manifest.get("runtime_options") or {})
        if threads is not None:
            options["threads"] = int(threads)  # every backend's thread count (ONNX Runtime: over intra-op's)
        if serving:
            options["allow_spinning"] = False  # a backend with spinning pool threads turns it off; others ignore it
        exe = backend.compile(folder / model["file"], manifest.get("target") or "cpu", options)
    except ValueError as exc:  # e.g. a module compiled for another architecture
        raise ArtifactError(f"Artifact '{folder}' cannot run here: {exc}.") from None
    return LoadedModel(exe, manifest, folder)
