"""Metrics of the SR literature: per-image PSNR on Y in [0, 255], and per-epoch trackers."""

from landprobe.metrics._psnr import psnr

__all__ = ["psnr"]
