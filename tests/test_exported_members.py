"""Each package's public surface is deliberate: `__all__` lists exactly its public names."""

from __future__ import annotations

import importlib
import types

import pytest


@pytest.mark.parametrize("name", ["grammar", "store"])
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    for exported in module.__all__:  # a package may resolve its names on first use (store does)
        getattr(module, exported)
    public = {n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    public -= {"annotations", "TYPE_CHECKING"}
    assert sorted(module.__all__) == sorted(public)
