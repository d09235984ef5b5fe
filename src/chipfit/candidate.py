"""A candidate: one configuration to measure (recipe of passes × backend × backend options × target × batch).

Core interface: the search builds candidates, the store keys results by them, the measurement worker runs
them, and later the farm and the team service ship them; so it lives below all of those.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate"]


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
    # not part of the identity: how the search treats the candidate
    skip: str | None = field(default=None, compare=False)  # measured never: the reason (e.g. no fast fp16)
    option_sweep: bool = field(default=False, compare=False)  # a non-default runtime option of its variant

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

    def variant_key(self) -> str:
        return json.dumps([self.backend, list(self.passes)], sort_keys=True)

    def pass_label(self) -> str:
        if not self.passes:
            return "default" if not self.options else "as given"
        return "+".join(_step_label(p) for p in self.passes)

    def option_label(self) -> str:
        if not self.options:
            return "backend defaults"
        o = self.options
        parts = []
        threads = o.get("intra_op_num_threads", o.get("threads"))
        if threads is not None:
            parts.append(f"{threads}t")
        if "execution_mode" in o:
            parts.append(str(o["execution_mode"])[:3])
        if "tune_trials" in o:
            parts.append(f"tuned {o['tune_trials']}" if o["tune_trials"] else "untuned")
        hidden = {"intra_op_num_threads", "threads", "execution_mode", "inter_op_num_threads"}
        hidden |= {"graph_optimization_level", "tune_trials", "tune_time_s"}
        parts += [str(v) if k in ("mode", "hint") else f"{k}={v}" for k, v in o.items() if k not in hidden]
        return " ".join(parts)

    def label(self) -> str:
        target = "" if self.target == "cpu" else f" @{self.target}"
        return f"{self.pass_label()} · {self.backend}{target} {self.option_label()} · b{self.batch}"


def _step_label(step: dict[str, Any]) -> str:
    params = step.get("params", {})
    parts = []
    for k, v in params.items():
        if k == "exclude":
            parts.append(f"{len(v)} fp32")
        elif isinstance(v, bool):
            parts.append({"per_channel": "pc", "reduce_range": "rr", "keep_io_types": "io32"}.get(k, k) if v else "")
        else:
            parts.append(str(v))
    text = ",".join(p for p in parts if p)
    return step["name"] + (f"({text})" if text else "")
