"""Training-time monitoring: the landscape recorded at the end of epochs, in any training loop."""

from landprobe.monitor.landscape import LandscapeMonitor, MonitorHistory

__all__ = ["LandscapeMonitor", "MonitorHistory"]
