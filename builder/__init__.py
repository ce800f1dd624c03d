"""pybuild's build engine and command line: recipe (grammar) + layer store (store).

Only `builder.cli` exists so far; the engine arrives with the build issue.
Nothing is imported eagerly here, because `pybuild` imports this package on
every start.
"""
