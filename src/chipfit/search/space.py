"""The candidate space: recipe of passes × backend × backend options × target × batch size."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chipfit.model import Model

__all__ = ["Candidate", "SpaceOptions", "build_space"]


@dataclass(frozen=True)
class Candidate:
    """One configuration to measure. ``reference`` marks the backend's plain default session on the model as
    given: the baseline for accuracy drop and the source of the reference outputs for fidelity."""

    backend: str
    passes: tuple[dict[str, Any], ...] = ()
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    target: str = "cpu"
    batch: int = 1
    reference: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "passes": [dict(p) for p in self.passes],
            "options": dict(self.options),
            "target": self.target,
            "batch": self.batch,
            "reference": self.reference,
        }

    def config_dict(self) -> dict[str, Any]:
        """Everything but the batch size: candidates with equal configs share a latency-per-batch profile."""
        d = self.to_dict()
        d.pop("batch")
        d.pop("reference")
        return d

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def config_id(self) -> str:
        return hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def pass_label(self) -> str:
        if not self.passes:
            return "default" if not self.options else "as given"
        return "+".join(
            p["name"] + ("(" + ",".join(str(v) for v in p.get("params", {}).values()) + ")" if p.get("params") else "")
            for p in self.passes
        )

    def option_label(self) -> str:
        if not self.options:
            return "backend defaults"
        o = self.options
        parts = []
        if "intra_op_num_threads" in o:
            parts.append(f"{o['intra_op_num_threads']}t")
        if "execution_mode" in o:
            parts.append(str(o["execution_mode"])[:3])
        parts += [
            f"{k}={v}"
            for k, v in o.items()
            if k not in ("intra_op_num_threads", "execution_mode", "inter_op_num_threads", "graph_optimization_level")
        ]
        return " ".join(parts)

    def label(self) -> str:
        return f"{self.pass_label()} · {self.backend} {self.option_label()} · b{self.batch}"


@dataclass(frozen=True)
class SpaceOptions:
    """Which dimensions to explore; None means the backend's full set for this machine."""

    backends: tuple[str, ...] = ("onnxruntime",)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: tuple[int, ...] | None = None
    opt_levels: tuple[str, ...] | None = None  # "none" = the model as given, or basic / extended / all
    execution_modes: tuple[str, ...] | None = None
    target: str = "cpu"


def _keep_variant(variant: list[dict[str, Any]], levels: tuple[str, ...] | None) -> bool:
    if levels is None:
        return True
    level = next((p["params"]["level"] for p in variant if p["name"] == "ort_graph_opt"), "none")
    return level in levels


def _keep_options(opt: dict[str, Any], space: SpaceOptions) -> bool:
    """Filters apply to the options a backend has; a backend without thread options is not filtered by them."""
    if space.threads is not None and "intra_op_num_threads" in opt and opt["intra_op_num_threads"] not in space.threads:
        return False
    mode = opt.get("execution_mode")
    return space.execution_modes is None or mode is None or mode in space.execution_modes


def build_space(model: Model, space: SpaceOptions, cpus: int) -> list[Candidate]:
    """Every candidate for ``model``: first the reference, then batch 1 for each config, then larger batches.

    Batch sizes above 1 need a dynamic batch dimension; with a fixed one, only the model's own batch runs.
    """
    from chipfit.backends import get_backend

    batches = sorted(set(space.batch_sizes)) if model.dynamic_batch else [_fixed_batch(model)]
    out: list[Candidate] = []
    for name in space.backends:
        opts = get_backend(name).option_space(model, cpus)
        if opts.reference_options is not None and not out:  # the default session, the reference at batch 1
            out.extend(
                Candidate(name, (), dict(opts.reference_options), space.target, b, reference=i == 0)
                for i, b in enumerate(batches)
            )
        has_levels = any(p["name"] == "ort_graph_opt" for v in opts.variants for p in v)
        for variant in opts.variants:
            if has_levels and not _keep_variant(variant, space.opt_levels):
                continue
            for opt in opts.options:
                if _keep_options(opt, space):
                    out.extend(Candidate(name, tuple(variant), dict(opt), space.target, b) for b in batches)
    return sorted(out, key=lambda c: (not c.reference, c.batch))  # stable: backend order kept per batch


def _fixed_batch(model: Model) -> int:
    dim = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else 1
    return dim if isinstance(dim, int) and dim > 0 else 1
