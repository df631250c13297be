"""Integrations with training frameworks, each an optional extra in a module of its own.

- :mod:`landprobe.integrations.lightning`: :class:`~landprobe.integrations.lightning.LandscapeCallback`,
  the :class:`~landprobe.LandscapeMonitor` as a Lightning callback (``pip install landprobe[lightning]``).

Neither ``import landprobe`` nor ``import landprobe.integrations`` imports a framework; the
framework is imported with the integration's module.

Example:
    >>> import landprobe.integrations
    >>> landprobe.integrations.MODULES
    ('lightning',)
"""

#: The integration modules (``landprobe.integrations.<name>``), each needing its framework.
MODULES = ("lightning",)

__all__ = ["MODULES"]
