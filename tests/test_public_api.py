from __future__ import annotations

import importlib

import chipfit


def test_all_names_resolve() -> None:
    for name in chipfit.__all__:
        assert getattr(chipfit, name) is not None, name
    assert callable(chipfit.fit) and callable(chipfit.load_model) and callable(chipfit.runtime.load)


def test_module_all_lists_are_real() -> None:
    for mod in (
        "chipfit.spec",
        "chipfit.data",
        "chipfit.model",
        "chipfit.store",
        "chipfit.package",
        "chipfit.pipeline",
        "chipfit.errors",
        "chipfit.search.select",
        "chipfit.measure",
    ):
        m = importlib.import_module(mod)
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"


def test_errors_are_chipfit_errors_with_exit_code_2() -> None:
    from chipfit import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ChipfitError) and cls.exit_code == 2
