"""The exceptions chipfit raises.

Every error a user can cause derives from :class:`ChipfitError`; its message names the input, what was
expected, what was got, and the fix. The CLI prints it without a traceback and exits with ``exit_code``.

::

    ChipfitError                      exit 2: bad input or environment, nothing measured or written
    ├── ModelError                    a model file or object that cannot be ingested
    ├── DataError                     evaluation / calibration data that does not fit the model
    ├── SpecError                     an impossible or malformed spec (flags or YAML)
    ├── OutputError                   an --out directory that cannot be written
    ├── BackendUnavailableError       a backend whose library or device is missing (names the extra)
    ├── ArtifactError                 a delivered artifact that is incomplete or fails its hash check
    └── StoreError                    a results store that cannot be opened

A candidate that fails while being measured is *not* an exception: it becomes a ``Measurement`` with
status ``failed`` / ``timeout`` / ``oom`` and the run goes on.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "ChipfitError",
    "DataError",
    "ModelError",
    "OutputError",
    "SpecError",
    "StoreError",
]


class ChipfitError(Exception):
    """Base of every error chipfit raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ModelError(ChipfitError):
    """A model that cannot be read, checked or exported."""


class DataError(ChipfitError):
    """Data whose names, shapes, dtypes, values or labels do not fit the model."""


class SpecError(ChipfitError):
    """A spec (constraints, objective, budget) that is malformed or impossible."""


class OutputError(ChipfitError):
    """An output location that cannot be written."""


class BackendUnavailableError(ChipfitError):
    """A backend that cannot run here; the message names what to install or which device is missing."""


class ArtifactError(ChipfitError):
    """A delivered artifact that is incomplete, or whose files do not match the manifest's hashes."""


class StoreError(ChipfitError):
    """A results store that cannot be opened or written."""
