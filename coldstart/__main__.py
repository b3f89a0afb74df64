"""`python -m coldstart` (what `accelerate launch -m coldstart` runs)."""

import sys

from .cli import main

sys.exit(main())
