"""Landscape probes built on one evaluation engine."""

from landprobe.probes.landscape import LandscapeProbe
from landprobe.probes.results import Curve

__all__ = ["LandscapeProbe", "Curve"]
