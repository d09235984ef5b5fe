"""Regression tests for untrusted input (issue 14): model files, data, specs, manifests, server requests."""
