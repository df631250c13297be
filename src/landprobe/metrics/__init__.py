"""Metrics of the SR literature: per-image PSNR on Y in [0, 255], and per-epoch trackers."""

from landprobe.metrics._psnr import psnr
from landprobe.metrics._trackers import DEFAULT_STAGES, EmpiricalErrorTracker, PSNRTracker

__all__ = ["psnr", "PSNRTracker", "EmpiricalErrorTracker", "DEFAULT_STAGES"]
