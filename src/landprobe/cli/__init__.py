"""The ``landprobe`` command: thin subcommands that parse, call the library and report.

``landprobe demo | reproduce | summarize | probe <kind>``; ``main.py`` holds the parser and
the study's commands, ``probe.py`` the probes of a user's checkpoints.
"""

from landprobe.cli.main import SUBCOMMANDS, build_parser, main

__all__ = ["main", "SUBCOMMANDS", "build_parser"]
