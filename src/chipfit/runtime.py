"""Run a delivered artifact: ``chipfit.runtime.load(DIR).run({"input": array})``."""

from chipfit.package import LoadedModel, load

__all__ = ["LoadedModel", "load"]
