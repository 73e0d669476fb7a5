"""`python -m hfpipes` is the `hfpipes` command (and what `accelerate launch -m hfpipes ...` runs)."""

import sys

from .cli import main

sys.exit(main())
