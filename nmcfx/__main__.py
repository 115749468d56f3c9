"""``python -m nmcfx`` is the ``nmcfx`` command (used where the entry point is not on PATH)."""

import sys

from nmcfx.cli import main

sys.exit(main())
