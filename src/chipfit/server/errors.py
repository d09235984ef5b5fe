"""The service's errors: each a ChipfitError (the CLI prints it and exits 2) with the HTTP status the API answers
it with, and a message that names the input and the fix. Pages catch them too."""

from __future__ import annotations

from chipfit.errors import ChipfitError

__all__ = [
    "Conflict",
    "Invalid",
    "NotFound",
    "PaymentRequired",
    "ServiceError",
    "TooLarge",
    "UnsupportedType",
]


class ServiceError(ChipfitError):
    status = 400


class NotFound(ServiceError):
    """Unknown id, or another team's (both answer 404: a team cannot tell them apart)."""

    status = 404


class PaymentRequired(ServiceError):
    status = 402


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413


class UnsupportedType(ServiceError):
    status = 415


class Invalid(ServiceError):
    """A well-formed request whose content cannot be used: a corrupt model, bad data, a bad spec."""

    status = 422
