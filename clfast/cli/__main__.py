"""``python -m clfast.cli ...``: the spelling before ``python -m clfast`` existed, kept working."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())
