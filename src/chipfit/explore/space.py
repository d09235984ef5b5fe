"""The search space file of ``chipfit explore``: which trainable, which metric, the resource ASHA allots
(epochs, steps), and the hyperparameters to sample.

    trainable: trainable.py:train          # a Python file (relative to this YAML) and a function in it
    metric: accuracy                       # what ctx.report() reports
    direction: maximize                    # or minimize
    resource: {min: 1, max: 27}            # per trial; ASHA's rungs are min·η^k up to max
    reduction_factor: 3                    # η
    sampler: tpe                           # optional: tpe (default) or random
    pruner: asha                           # optional: asha (default) or hyperband (Optuna's HyperbandPruner)
    seconds_per_unit: 2.0                  # optional estimate, for --preview and the can-it-afford check
    deploy:                                # optional; needed for --max-p99-ms / delivering the winner
      model: trainable.py:model            # config -> untrained torch.nn.Module (checked before training)
      inputs: {x: [1, 64]}                 # example input shapes (batch first), float32
      data: trainable.py:eval_data         # optional: evaluation arrays (with labels) for the winner's fit
      spec: {max_accuracy_drop: 0.01}      # optional: more `fit` spec keys for the winner's fit
    params:
      hidden: {type: int, low: 16, high: 256, log: true}
      lr: {type: float, low: 0.0001, high: 0.1, log: true}
      act: {type: categorical, choices: [relu, tanh]}
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipfit.errors import SpecError

__all__ = ["ExploreSpace", "load_space"]

_TYPES = ("int", "float", "categorical")
RECIPES = ("chipfit:finetune", "chipfit:distill")  # built-in trainables (explore/recipes.py)


@dataclass(frozen=True)
class ExploreSpace:
    path: Path
    trainable: str  # "file.py:function"
    metric: str
    direction: str
    min_resource: int
    max_resource: int
    reduction_factor: int
    params: dict[str, dict[str, Any]]
    seconds_per_unit: float | None = None
    sampler: str = "tpe"
    pruner: str = "asha"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def rungs(self) -> list[int]:
        """Resource at each ASHA rung: min·η^k while ≤ max (the last trains to max)."""
        out, r = [], self.min_resource
        while r < self.max_resource:
            out.append(r)
            r *= self.reduction_factor
        return [*out, self.max_resource]

    def sample(self, trial: Any) -> dict[str, Any]:
        """The config of an Optuna trial (the same names can be suggested again inside the trainable)."""
        cfg = {}
        for name, p in self.params.items():
            if p["type"] == "int":
                cfg[name] = trial.suggest_int(name, int(p["low"]), int(p["high"]), log=bool(p.get("log", False)))
            elif p["type"] == "float":
                cfg[name] = trial.suggest_float(name, float(p["low"]), float(p["high"]), log=bool(p.get("log", False)))
            else:
                cfg[name] = trial.suggest_categorical(name, list(p["choices"]))
        return cfg

    @property
    def deploy(self) -> dict[str, Any]:
        return dict(self.extra.get("deploy") or {})

    def load_trainable(self) -> Callable[..., Any]:
        if self.trainable in RECIPES:
            import chipfit.explore.recipes as recipes

            return getattr(recipes, self.trainable.split(":")[1])  # type: ignore[no-any-return]
        return self.load_function(self.trainable, "trainable", default="train")

    def load_function(self, ref: str, key: str = "trainable", default: str = "") -> Callable[..., Any]:
        """``file.py:function`` relative to the space file."""
        file, _, func = str(ref).partition(":")
        func = func or default
        path = (self.path.parent / file).resolve()
        spec = importlib.util.spec_from_file_location(f"chipfit_trainable_{path.stem}", path)
        if spec is None or spec.loader is None or not path.is_file():
            raise SpecError(f"'{key}' in {self.path}: '{path}' is not a Python file. Fix the path.")
        module = sys.modules.get(spec.name)
        if module is None or getattr(module, "__file__", None) != str(path):
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        fn = getattr(module, func, None)
        if not callable(fn):
            raise SpecError(f"'{key}' in {self.path}: {path.name} has no function '{func}'. Write 'file.py:name'.")
        return fn  # type: ignore[no-any-return]


def _bad(path: Path, what: str) -> SpecError:
    return SpecError(f"Search space {path}: {what}")


def _check_deploy(p: Path, deploy: Any) -> None:
    if deploy is None:
        return
    if not isinstance(deploy, dict) or "model" not in deploy or "inputs" not in deploy:
        raise _bad(p, "'deploy' needs 'model' (file.py:function, config -> nn.Module) and 'inputs' ({name: shape}).")
    if not isinstance(deploy.get("spec", {}), dict):
        raise _bad(p, "'deploy.spec' must be a mapping of fit spec keys, e.g. {max_accuracy_drop: 0.01}.")
    inputs = deploy["inputs"]
    ok = (
        isinstance(inputs, dict)
        and inputs
        and all(isinstance(v, list) and v and all(isinstance(d, int) and d >= 1 for d in v) for v in inputs.values())
    )
    if not ok:
        raise _bad(
            p,
            f"'deploy.inputs' must map input names to shapes with the batch first, e.g. {{x: [1, 64]}}; "
            f"got {inputs!r}.",
        )


def load_space(path: str | Path) -> ExploreSpace:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"Search space file '{p}' does not exist. Pass a YAML file (see examples/explore/space.yaml).")
    from chipfit.spec import read_yaml

    doc = read_yaml(p, "Search space file")  # bounded, no aliases: formatting a value below cannot explode
    if not isinstance(doc, dict):
        raise _bad(p, "must be a mapping with trainable, metric, resource and params.")
    for key in ("trainable", "metric", "resource", "params"):
        if key not in doc:
            raise _bad(p, f"'{key}' is missing. Required: trainable, metric, resource, params.")
    direction = str(doc.get("direction", "maximize"))
    if direction not in ("maximize", "minimize"):
        raise _bad(p, f"'direction' must be maximize or minimize, got {direction!r}.")
    res = doc["resource"]
    if not isinstance(res, dict) or not all(isinstance(res.get(k), int) and res[k] >= 1 for k in ("min", "max")):
        raise _bad(p, "'resource' needs integer min and max ≥ 1, e.g. {min: 1, max: 27}.")
    if res["min"] > res["max"]:
        raise _bad(p, f"'resource' min {res['min']} is larger than max {res['max']}.")
    eta = doc.get("reduction_factor", 3)
    if not isinstance(eta, int) or eta < 2:
        raise _bad(p, f"'reduction_factor' must be an integer ≥ 2, got {eta!r}.")
    params = doc["params"]
    if not isinstance(params, dict) or not params:
        raise _bad(p, "'params' must map names to {type: int|float|categorical, ...}.")
    for name, spec in params.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in _TYPES:
            raise _bad(p, f"param '{name}': type must be one of {', '.join(_TYPES)}.")
        if kind == "categorical" and not spec.get("choices"):
            raise _bad(p, f"param '{name}': categorical needs a non-empty 'choices' list.")
        if kind != "categorical" and not ("low" in spec and "high" in spec and spec["low"] < spec["high"]):
            raise _bad(p, f"param '{name}': {kind} needs low < high.")
    _check_deploy(p, doc.get("deploy"))
    if str(doc["trainable"]).startswith("chipfit:") and doc["trainable"] not in RECIPES:
        raise _bad(p, f"'trainable' {doc['trainable']!r} is not a built-in recipe; use one of {', '.join(RECIPES)}.")
    for recipe in ("finetune", "distill"):
        if doc["trainable"] == f"chipfit:{recipe}" and not isinstance(doc.get(recipe), dict):
            raise _bad(p, f"'trainable: chipfit:{recipe}' needs a '{recipe}:' section (see the README).")
    refs = [("trainable", doc["trainable"])] if doc["trainable"] not in RECIPES else []
    refs += [
        (f"deploy.{k}", doc["deploy"][k])
        for k in ("model", "data")
        if isinstance(doc.get("deploy"), dict) and isinstance(doc["deploy"].get(k), str)
    ]
    for key, ref in refs:  # checked before anything is spent: a missing file would fail every trial
        file = (p.parent / str(ref).partition(":")[0]).resolve()
        if not file.is_file():
            raise _bad(p, f"'{key}': {file} does not exist. Write 'file.py:function', relative to the space file.")
    if str(doc.get("sampler", "tpe")) not in ("tpe", "random"):
        raise _bad(p, f"'sampler' must be tpe or random, got {doc['sampler']!r}.")
    if str(doc.get("pruner", "asha")) not in ("asha", "hyperband"):
        raise _bad(p, f"'pruner' must be asha or hyperband, got {doc['pruner']!r}.")
    spu = doc.get("seconds_per_unit")
    if spu is not None and not (isinstance(spu, (int, float)) and spu > 0 and math.isfinite(spu)):
        raise _bad(p, f"'seconds_per_unit' must be a positive number of seconds, got {spu!r}.")
    known = {
        "trainable",
        "metric",
        "direction",
        "resource",
        "reduction_factor",
        "params",
        "seconds_per_unit",
        "sampler",
        "pruner",
    }
    known -= {"deploy"}  # kept in extra, read through ExploreSpace.deploy
    return ExploreSpace(
        path=p.resolve(),
        trainable=str(doc["trainable"]),
        metric=str(doc["metric"]),
        direction=direction,
        min_resource=int(res["min"]),
        max_resource=int(res["max"]),
        reduction_factor=int(eta),
        params=params,
        seconds_per_unit=float(spu) if spu is not None else None,
        sampler=str(doc.get("sampler", "tpe")),
        pruner=str(doc.get("pruner", "asha")),
        extra={k: v for k, v in doc.items() if k not in known},
    )
