"""pybuild's build engine and command line: recipe (grammar) + layer store (store).

    from builder import build
    result = build("fixtures/demo", tags=["demo"])      # see builder.api

Names resolve on first use: `pybuild` imports this package on every start,
and `pybuild parse` must not pay for the engine.
"""

from __future__ import annotations

import importlib

__all__ = ["BuildError", "BuildResult", "StepFailed", "StepRecord", "build"]

_WHERE = {
    "build": "api",
    "BuildResult": "executor",
    "StepRecord": "executor",
    "BuildError": "errors",
    "StepFailed": "errors",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'builder' has no attribute {name!r}")
    return getattr(importlib.import_module(f"builder.{module}"), name)
