"""What the user asks for: constraints, an objective and a time budget.

The same names work as CLI flags (``--max-p99-ms 20``), as keys of a YAML spec file (``max_p99_ms: 20``)
and as keyword arguments (``Spec(max_p99_ms=20)``). A ``Spec`` only stores and validates; selection
(``chipfit.search.select``) is what applies it.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from chipfit.errors import SpecError

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_MIN_FIDELITY",
    "MAX_YAML_BYTES",
    "OBJECTIVES",
    "Constraint",
    "Spec",
    "load_spec",
    "parse_duration",
    "read_yaml",
]

Objective = Literal["latency", "throughput", "memory", "size", "accuracy", "cost", "energy"]
OBJECTIVES: tuple[str, ...] = ("latency", "throughput", "memory", "size", "accuracy", "cost", "energy")
FIDELITY_METRICS = ("cosine", "agreement", "max_rel_error")
ACCURACY_METRIC_RE = re.compile(r"^(top[1-9][0-9]*|mse|f1)$")
# A spec or search-space file is a few hundred bytes; anything near this is not one (and bounds parsing time).
MAX_YAML_BYTES = 64 * 1024
_MAX_YAML_DEPTH = 32
# Without --max-accuracy-drop or --min-fidelity, a reduced-precision variant (int8, fp16, bf16) must still keep
# this fidelity (in --fidelity-metric, cosine by default) to the fp32 reference outputs; fp32 variants need none.
DEFAULT_MIN_FIDELITY = 0.99


@dataclass(frozen=True)
class Constraint:
    """One bound: which measured value it reads, whether it is an upper or lower bound, and its unit."""

    name: str
    metric: str  # key in Measurement.metrics (or a derived one: "accuracy_drop")
    kind: Literal["max", "min"]
    unit: str
    allowed: str  # what is allowed, for error messages


CONSTRAINTS: dict[str, Constraint] = {
    c.name: c
    for c in (
        Constraint("max_p50_ms", "p50_ms", "max", "ms", "a positive number of milliseconds"),
        Constraint("max_p99_ms", "p99_ms", "max", "ms", "a positive number of milliseconds"),
        Constraint("min_throughput", "throughput", "min", "inf/s", "a positive number of inferences per second"),
        Constraint("max_memory_mb", "peak_memory_mb", "max", "MB", "a positive number of megabytes"),
        Constraint("max_size_mb", "size_mb", "max", "MB", "a positive number of megabytes"),
        Constraint(
            "max_accuracy_drop", "accuracy_drop", "max", "", "a number from 0 to 1 (absolute drop vs the original)"
        ),
        Constraint("min_fidelity", "fidelity", "min", "", "a number from 0 to 1 (1 = identical outputs)"),
        Constraint("max_cost_per_1m", "usd_per_1m", "max", "$", "a positive number of dollars per 1M inferences"),
        Constraint("max_energy_mj", "energy_mj", "max", "mJ", "a positive number of millijoules per inference"),
    )
}

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, None: 1}


def parse_duration(value: str | float | int | None) -> float | None:
    """Parse '90s', '10m', '2h', '1.5h' or a number of seconds; None stays None."""
    if value is None or isinstance(value, bool):
        return None if value is None else _bad_duration(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        if not m:
            return _bad_duration(value)
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower() if m.group(2) else None]
    if not math.isfinite(seconds) or seconds <= 0:
        return _bad_duration(value)
    return seconds


def _bad_duration(value: object) -> float:
    raise ValueError(f"must be a positive duration such as '90s', '10m' or '2h'; got {value!r}")


class Spec(BaseModel):
    """Constraints, objective and time budget of one run. Every constraint is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_p50_ms: float | None = None
    max_p99_ms: float | None = None
    min_throughput: float | None = None
    max_memory_mb: float | None = None
    max_size_mb: float | None = None
    max_accuracy_drop: float | None = None
    min_fidelity: float | None = None
    max_cost_per_1m: float | None = None
    max_energy_mj: float | None = None
    objective: Objective = "latency"
    time_budget: float | None = None  # seconds for the whole run; parsed from '10m' etc.
    metric: str | None = None  # accuracy metric against labels: top1, top5, mse, f1 (default: inferred)
    fidelity_metric: Literal["cosine", "agreement", "max_rel_error"] = "cosine"

    @field_validator(
        "max_p50_ms", "max_p99_ms", "min_throughput", "max_memory_mb", "max_size_mb", "max_cost_per_1m", "max_energy_mj"
    )
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise ValueError("not positive")
        return v

    @field_validator("max_accuracy_drop", "min_fidelity")
    @classmethod
    def _unit_interval(cls, v: float | None) -> float | None:
        if v is not None and not (0.0 <= v <= 1.0):
            raise ValueError("not in [0, 1]")
        return v

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return parse_duration(v)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and not ACCURACY_METRIC_RE.match(v):
            raise ValueError("unknown metric")
        return v

    def bounds(self) -> dict[str, float]:
        """The constraints that are set, by name."""
        return {name: getattr(self, name) for name in CONSTRAINTS if getattr(self, name) is not None}


_ALLOWED = {
    **{name: c.allowed for name, c in CONSTRAINTS.items()},
    "objective": "one of " + ", ".join(OBJECTIVES),
    "time_budget": "a positive duration such as '90s', '10m' or '2h'",
    "metric": "one of top1, top5 (any topK), mse, f1",
    "fidelity_metric": "one of " + ", ".join(FIDELITY_METRICS),
}


def _label(field: str, source: str | None) -> str:
    if source is None:
        return "--" + field.replace("_", "-")
    return f"'{field}' in {source}"


def _shown(value: object, limit: int = 60) -> str:
    """A value for an error message, never formatted whole: containers are named by type and length."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def build_spec(values: dict[str, Any], source: str | None = None) -> Spec:
    """Validate ``values`` into a Spec; errors name the flag (or the key and file) and the allowed values."""
    for key in values:
        if key not in Spec.model_fields:
            near = difflib.get_close_matches(str(key)[:64], list(Spec.model_fields), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            where = f" in {source}" if source else ""
            name = _shown(key) if not isinstance(key, str) or len(key) > 60 else f"'{key}'"
            raise SpecError(f"Unknown spec key {name}{where}.{hint} Allowed keys: {', '.join(Spec.model_fields)}.")
    for key, value in values.items():  # every field is one scalar: a list or mapping is refused unformatted
        if isinstance(value, (dict, list, tuple, set)):
            raise SpecError(f"{_label(key, source)} must be {_ALLOWED.get(key, 'valid')}; got {_shown(value)}.")
    try:
        return Spec(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        given = values.get(field, err.get("input"))
        raise SpecError(
            f"{_label(field, source)} must be {_ALLOWED.get(field, 'valid')}; got {_shown(given)}."
        ) from None


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (``*name``: a few hundred bytes of them expand to gigabytes) and
    with a bound on nesting (PyYAML composes recursively)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted; write the value out instead of referring to it", mark
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > _MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {_MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_yaml(path: str | Path, what: str = "Spec file", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse a user's YAML file safely: at most ``max_bytes``, plain tags only, no aliases, bounded nesting.

    Errors are :class:`SpecError` naming ``what`` and the file; a missing file is the caller's to report.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise SpecError(f"{what} '{p}' cannot be read ({exc.strerror or exc}). Pass a readable YAML file.") from None
    if len(raw) > max_bytes:
        raise SpecError(
            f"{what} '{p}' is larger than {max_bytes // 1024} KiB; a chipfit YAML file is a few lines. "
            "Pass the right file."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{what} '{p}' is not UTF-8 text. Pass a YAML file.") from None
    loader = None
    try:
        loader = _SafeLoader(text)
        loader.name = p.name  # PyYAML's messages say where: in "spec.yaml", line 3, column 9
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())  # one line: PyYAML's message spans several
        raise SpecError(f"{what} '{p}' is not valid YAML: {problem}. Fix it and retry.") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_spec(path: str | Path | None = None, **overrides: Any) -> Spec:
    """Read a YAML spec file (optional) and apply ``overrides`` (non-None values) on top of it."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SpecError(
                f"Spec file '{p}' does not exist. Pass the path of a YAML file with keys such as max_p99_ms."
            )
        loaded = read_yaml(p, "Spec file") or {}
        if not isinstance(loaded, dict):
            raise SpecError(
                f"Spec file '{p}' must hold a mapping of keys (max_p99_ms: 20, ...); got a {type(loaded).__name__}."
            )
        values.update(_flatten(loaded, str(p)))
        spec_from_file = build_spec(values, source=str(p))  # file errors name the file
        values = spec_from_file.model_dump(exclude_unset=True)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_spec(values)


def _flatten(loaded: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept both a flat file and one with a ``constraints:`` section."""
    out = dict(loaded)
    nested = out.pop("constraints", None)
    if isinstance(nested, dict):
        out.update(nested)
    elif nested is not None:
        raise SpecError(f"'constraints' in {source} must be a mapping (max_p99_ms: 20, ...); got {_shown(nested)}.")
    return out
