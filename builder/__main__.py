"""`python -m builder`: the same entry point as the `pybuild` command."""

from builder.cli import console

console()
