from __future__ import annotations

from pathlib import Path

import pytest

from chipfit.errors import SpecError
from chipfit.spec import CONSTRAINTS, Spec, load_spec, parse_duration


def test_defaults_and_bounds() -> None:
    spec = load_spec(None, max_p99_ms=20, max_accuracy_drop=0.01)
    assert spec.objective == "latency"
    assert spec.bounds() == {"max_p99_ms": 20, "max_accuracy_drop": 0.01}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_p99_ms", -3, r"--max-p99-ms must be a positive number of milliseconds; got -3"),
        ("max_p50_ms", 0, r"--max-p50-ms must be a positive number of milliseconds; got 0"),
        ("min_throughput", -1, r"--min-throughput must be a positive number"),
        ("max_memory_mb", -5, r"--max-memory-mb must be a positive number of megabytes"),
        ("max_size_mb", 0, r"--max-size-mb must be a positive number of megabytes"),
        ("max_accuracy_drop", 1.5, r"--max-accuracy-drop must be a number from 0 to 1 .*got 1.5"),
        ("min_fidelity", -0.1, r"--min-fidelity must be a number from 0 to 1"),
        (
            "objective",
            "fastest",
            r"--objective must be one of latency, throughput, memory, size, accuracy, cost, energy; got 'fastest'",
        ),
        ("time_budget", "soon", r"--time-budget must be a positive duration such as '90s'"),
        ("metric", "top0", r"--metric must be one of top1, top5"),
        ("fidelity_metric", "l2", r"--fidelity-metric must be one of cosine, agreement, max_rel_error"),
    ],
)
def test_invalid_values_name_the_flag_the_allowed_and_the_given(field: str, value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(None, **{field: value})


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    f = tmp_path / "chipfit.yaml"
    f.write_text("max_p99: 20\n")
    with pytest.raises(SpecError, match=r"Unknown spec key 'max_p99' in .*chipfit.yaml.*Did you mean 'max_p99_ms'"):
        load_spec(f)


def test_yaml_file_and_flag_override(tmp_path: Path) -> None:
    f = tmp_path / "chipfit.yaml"
    f.write_text("max_p99_ms: 20\nobjective: memory\ntime_budget: 10m\nconstraints:\n  min_fidelity: 0.99\n")
    spec = load_spec(f, max_p99_ms=5)
    assert spec.max_p99_ms == 5 and spec.objective == "memory" and spec.time_budget == 600
    assert spec.min_fidelity == 0.99


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("max_p99_ms: -1\n")
    with pytest.raises(SpecError, match=r"'max_p99_ms' in .*bad.yaml must be a positive number"):
        load_spec(f)
    f.write_text("max_p99_ms: [1\n")
    with pytest.raises(SpecError, match=r"not valid YAML"):
        load_spec(f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match=r"must hold a mapping"):
        load_spec(f)
    with pytest.raises(SpecError, match=r"does not exist"):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), (30, 30), ("45", 45)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds  # type: ignore[arg-type]


def test_every_constraint_is_a_spec_field() -> None:
    assert set(CONSTRAINTS) <= set(Spec.model_fields)
