"""A device farm on Ray: nodes that advertise their catalogue target, and a driver that sends each candidate to a
node of its target to be measured by the same isolated worker a local fit uses (``chipfit.measure``)."""

from __future__ import annotations

from chipfit.farm.nodes import FarmError, FarmNode, farm_nodes

__all__ = ["FarmError", "FarmNode", "farm_nodes"]
