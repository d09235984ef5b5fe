"""What a server serves: named models, each with versions (``name@2``), one active. Loading a new version
starts its batcher beside the old one and then switches the active pointer, so requests in flight finish on
the version they started on and none is dropped; ``rollback`` switches back (old versions stay loaded).

A cascade artifact (``chipfit cascade``) is served as one model: the fast model answers the rows whose
confidence reaches the threshold; the others go on to the accurate model, each through its own batcher."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipfit.errors import ArtifactError
from chipfit.serve.batcher import AdaptiveBatcher
from chipfit.serve.payload import InputSpec

__all__ = ["Registry", "Served", "parse_model_arg"]


def parse_model_arg(arg: str) -> tuple[str | None, int | None, Path]:
    """``DIR``, ``NAME=DIR`` or ``NAME@VERSION=DIR``."""
    name, version = None, None
    if "=" in arg:
        label, _, path = arg.partition("=")
        name, _, v = label.partition("@")
        if v:
            if not v.isdigit():
                raise ArtifactError(f"'{arg}': the version after @ must be a number (name@2=DIR).")
            version = int(v)
        return name or None, version, Path(path)
    return None, None, Path(arg)


def _specs(manifest: dict[str, Any]) -> tuple[list[InputSpec], list[str]]:
    src = manifest["model"]["source"]
    specs = [InputSpec(i["name"], np.dtype(i["dtype"]), tuple(i["shape"])) for i in src["inputs"]]
    return specs, [o["name"] for o in src["outputs"]]


def _runner(loaded: Any, manifest: dict[str, Any]) -> tuple[Any, int | None]:
    """A feeds -> outputs callable, and the compiled batch when the model takes only one (padded to it)."""
    src = manifest["model"]["source"]
    fixed = None
    compiled = (manifest.get("runtime_options") or {}).get("batch")  # recorded by backends that specialize it
    if compiled is not None:
        fixed = int(compiled)
    elif not src.get("dynamic_batch", True):
        first = src["inputs"][0]["shape"][0]
        fixed = int(first) if isinstance(first, int) else None
    if fixed is None:
        return loaded.run, None
    size = fixed

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feeds.values())))
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            chunk = {k: v[start : start + size] for k, v in feeds.items()}
            m = len(next(iter(chunk.values())))
            if m < size:  # pad the last chunk to the compiled batch
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], size - m, axis=0)]) for k, v in chunk.items()}
            parts.append([o[:m] for o in loaded.run(chunk)])
        return [np.concatenate(col) for col in zip(*parts, strict=True)]

    return run, fixed


def _warm_up(run: Any, specs: list[InputSpec], batch: int) -> None:
    """A few runs before serving: first runs allocate and are slow, and must not teach the batcher."""
    for b in (1, batch, 1, 1):
        feeds = {
            s.name: np.zeros([b] + [d if isinstance(d, int) else 1 for d in s.shape[1:]], dtype=s.dtype) for s in specs
        }
        run(feeds)


@dataclass
class Served:
    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    inputs: list[InputSpec]
    outputs: list[str]
    backend: str
    slo_s: float
    batchers: dict[str, AdaptiveBatcher]
    closers: list[Any] = field(default_factory=list)
    cascade: dict[str, Any] | None = None

    @property
    def max_rows(self) -> int:
        """The most rows one request may send: what every batcher it goes through can queue."""
        return min(b.max_queue for b in self.batchers.values())

    def info(self, active: bool) -> dict[str, Any]:
        b = next(iter(self.batchers.values()))
        return {
            "name": self.name,
            "version": self.version,
            "active": active,
            "kind": "cascade" if self.cascade else "model",
            "backend": self.backend,
            "slo_p99_ms": self.slo_s * 1e3,
            "max_batch": b.max_batch,
            "max_rows": self.max_rows,
            "inputs": [{"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)} for s in self.inputs],
            "outputs": self.outputs,
            "path": str(self.path),
            "cascade": {k: self.cascade[k] for k in ("threshold", "fast_share", "output")} if self.cascade else None,
        }

    async def predict(
        self, feeds: dict[str, np.ndarray], rows: int, deadline_s: float | None, started: float | None = None
    ) -> dict[str, Any]:
        """The outputs; the deadline (``deadline_s``, else the SLO) runs from ``started``, else now."""
        if self.cascade is None:
            return await self.batchers["model"].submit(feeds, rows, deadline_s, started)  # type: ignore[no-any-return]
        clock = self.batchers["fast"].clock
        t0 = clock() if started is None else started
        fast = await self.batchers["fast"].submit(feeds, rows, deadline_s, t0)
        conf = confidence(fast[self.cascade["output"]])
        unsure = np.flatnonzero(conf < self.cascade["threshold"])
        self.cascade["counter"](rows - len(unsure), rows)
        if len(unsure) == 0:
            return fast  # type: ignore[no-any-return]
        left = None if deadline_s is None else max(0.0, deadline_s - (clock() - t0))
        acc = await self.batchers["accurate"].submit({k: v[unsure] for k, v in feeds.items()}, len(unsure), left)
        out = {k: np.array(v, copy=True) for k, v in fast.items()}
        for k in out:
            out[k][unsure] = acc[k]
        return out

    def close(self) -> None:
        for b in self.batchers.values():
            b.close()
        for c in self.closers:
            c()


def confidence(out: np.ndarray) -> np.ndarray:
    """Max class probability per row: softmax of logits, or the row itself when it already sums to 1."""
    x = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    if np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x.max(axis=1)  # type: ignore[no-any-return]
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z.max(axis=1) / z.sum(axis=1)  # type: ignore[no-any-return]


class Registry:
    def __init__(
        self,
        slo_s: float,
        max_batch: int,
        threads: int | None = None,
        max_queue: int | None = None,
        metrics: Any = None,
    ) -> None:
        self.slo_s, self.max_batch, self.threads, self.max_queue = slo_s, max_batch, threads, max_queue
        self.metrics = metrics
        self.models: dict[str, dict[int, Served]] = {}
        self.active: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _batcher(self, path: Path, name: str, version: int, role: str) -> tuple[AdaptiveBatcher, Any, dict[str, Any]]:
        from chipfit.package import load

        loaded = load(path, threads=self.threads, serving=True)
        try:
            manifest = loaded.manifest
            run, fixed = _runner(loaded, manifest)
            try:
                _warm_up(run, _specs(manifest)[0], min(self.max_batch, 8))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                raise  # a malformed manifest: load() says so
            except Exception as exc:
                first = " ".join(str(exc).split())[:300]
                raise ArtifactError(
                    f"Artifact '{path}': the model fails on inputs of the signature its manifest records "
                    f"({type(exc).__name__}: {first}); the artifact is damaged."
                ) from None
            cap = min(self.max_batch, fixed * 8) if fixed else self.max_batch
            hook = self.metrics.batch_hook(name, version) if self.metrics else None
            b = AdaptiveBatcher(
                run,
                list(loaded.output_names),
                self.slo_s,
                manifest.get("batch_profile"),
                cap,
                self.max_queue,
                hook,
                f"{name}@{version}-{role}",
            )
        except BaseException:
            loaded.close()
            raise
        return b, loaded.close, manifest

    def load(self, path: str | Path, name: str | None = None, version: int | None = None) -> Served:
        """Load an artifact (or a cascade) as ``name@version`` and make it the active version. A manifest is
        checked as ``chipfit.package.load`` checks it (files inside the folder, hashes, built-in backends); one
        that lacks what a server needs (the model's signature) is an ``ArtifactError``, never a traceback."""
        folder = Path(path)
        try:
            return self._load(folder, name, version)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ArtifactError(
                f"Artifact '{folder}': its manifest is malformed ({type(exc).__name__}: {exc}); it is damaged. "
                "Run `chipfit fit` (or `chipfit cascade`) again."
            ) from None

    def _load(self, folder: Path, name: str | None, version: int | None) -> Served:
        from chipfit.package import inside, read_manifest

        top = read_manifest(folder)
        name = name or folder.resolve().name
        with self._lock:
            version = version or max(self.models.get(name, {0: None}), default=0) + 1  # type: ignore[arg-type]
        if top.get("kind") == "cascade":
            fast_dir, acc_dir = inside(folder, top["fast"], "fast"), inside(folder, top["accurate"], "accurate")
            fast, c1, m_fast = self._batcher(fast_dir, name, version, "fast")
            try:
                acc, c2, _ = self._batcher(acc_dir, name, version, "accurate")
            except BaseException:
                fast.close()
                c1()
                raise
            inputs, outputs = _specs(m_fast)
            counter = self.metrics.cascade_hook(name, version) if self.metrics else (lambda a, n: None)
            served = Served(
                name,
                version,
                folder,
                top,
                inputs,
                outputs,
                f"cascade({m_fast['backend']})",
                self.slo_s,
                {"fast": fast, "accurate": acc},
                [c1, c2],
                {**top, "counter": counter},
            )
        else:
            b, close, manifest = self._batcher(folder, name, version, "model")
            inputs, outputs = _specs(manifest)
            served = Served(
                name, version, folder, manifest, inputs, outputs, manifest["backend"], self.slo_s, {"model": b}, [close]
            )
        with self._lock:
            old = self.models.setdefault(name, {}).get(version)
            self.models[name][version] = served
            self.history.setdefault(name, []).append(version)
            self.active[name] = version  # one assignment: new requests go to the new version from here on
        if old is not None:
            old.close()
        return served

    def get(self, ref: str) -> Served:
        name, _, v = ref.partition("@")
        versions = self.models.get(name)
        if not versions:
            raise KeyError(f"no model '{name}'; served: {sorted(self.models)}")
        if v:
            if not v.isdigit() or int(v) not in versions:
                raise KeyError(f"model '{name}' has no version {v!r}; versions: {sorted(versions)}")
            return versions[int(v)]
        return versions[self.active[name]]

    def rollback(self, name: str) -> Served:
        """Make the version active before the current one the active one again."""
        with self._lock:
            hist = self.history.get(name) or []
            if len(hist) < 2:
                raise KeyError(f"model '{name}' has no earlier version to roll back to")
            hist.pop()
            self.active[name] = hist[-1]
            return self.models[name][hist[-1]]

    def describe(self) -> list[dict[str, Any]]:
        return [s.info(self.active.get(n) == v) for n, vs in sorted(self.models.items()) for v, s in sorted(vs.items())]

    def close(self) -> None:
        for vs in self.models.values():
            for s in vs.values():
                s.close()
