"""Hardware: what this machine is (detect) and, later, the catalogue of targets."""

from chipfit.hardware.detect import cpu_quota, environment_fingerprint, local_machine

__all__ = ["cpu_quota", "environment_fingerprint", "local_machine"]
