"""Argument parsing shared by the CLI's commands: comma lists and the constraint options."""

from __future__ import annotations

from typing import Annotated

import typer

from chipfit.errors import ChipfitError

MaxCost = Annotated[
    float | None,
    typer.Option(
        help="Bound on dollars per million inferences at the measured throughput ($/hour of the target ÷ rate).",
        rich_help_panel="Constraints",
    ),
]
Predict = Annotated[
    bool,
    typer.Option(
        help="Measure in order of predicted latency and skip candidates predicted to miss a latency bound by "
        "a wide margin (listed with the prediction).",
        rich_help_panel="Measurement",
    ),
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="DANGEROUS: load model files that hold pickles or other code (a .pt2 with pickled weights, a "
        "torch.save'd module, an old-format checkpoint). Loading such a file RUNS CODE FROM IT: use only for "
        "files from someone you trust. Off by default; no server route ever honours it.",
    ),
]
MaxEnergy = Annotated[
    float | None,
    typer.Option(
        help="Bound on energy per inference (mJ): measured by RAPL/NVML counters where readable, else modelled.",
        rich_help_panel="Constraints",
    ),
]


def ints(value: str | None, flag: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        out = ()
    if not out or any(v < 1 for v in out):
        raise ChipfitError(
            f"{flag} must be a comma-separated list of positive integers such as '1,8,32'; got {value!r}."
        )
    return out


def words(value: str | None, flag: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    if value is None:
        return None
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in out if v not in allowed]
    if not out or bad:
        raise ChipfitError(f"{flag} must be a comma-separated list of {', '.join(allowed)}; got {value!r}.")
    return out


def passes_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.strip() == "none":
        return ()
    return words(value, "--passes", ("transformer_fusion", "int8_dynamic", "int8_static", "nncf_int8", "fp16"))
