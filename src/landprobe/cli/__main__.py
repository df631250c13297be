"""``python -m landprobe.cli`` (and ``torchrun ... -m landprobe.cli``)."""

import sys

from landprobe.cli.main import main

sys.exit(main())
