"""`python -m builder`: the same entry point as the `pybuild` command."""

import sys

from builder.cli import main

sys.exit(main())
