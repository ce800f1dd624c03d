"""The library API: `build()`, for build scripts, as `pybuild build` does it from the command line.

    from builder import build

    result = build("app/", tags=["app:dev"], build_args={"VERSION": "1.2"},
                   progress=lambda event: print(event))
    print(result.digest, result.image_id)
    for step in result.steps:
        print(step.number, step.text, "CACHED" if step.cached else "; ".join(step.reasons),
              f"{step.duration:.2f}s", step.layer, step.size)

Errors are raised, never printed: grammar.RecipeError for the recipe,
builder.errors.BuildError (StepFailed, ContextError, BaseImageError) for the
build, store.StoreError for the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BuildError

if TYPE_CHECKING:
    from store.images import Store

    from .executor import BuildResult
    from .outputs import Output
    from .progress import Progress
    from .run_mounts import Secret

__all__ = ["build", "default_recipe"]


def default_recipe(context: str | os.PathLike[str]) -> Path:
    """`<context>/Recipefile`, or `<context>/Dockerfile` when there is no Recipefile."""
    recipe = Path(context) / "Recipefile"
    if not recipe.exists() and (Path(context) / "Dockerfile").exists():
        return Path(context) / "Dockerfile"
    return recipe


def build(
    context: str | os.PathLike[str] = ".",
    *,
    recipe: str | os.PathLike[str] | None = None,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    tags: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    no_cache: bool = False,
    no_cache_filter: Iterable[str] = (),
    secrets: Mapping[str, Secret] | None = None,
    memory: int | None = None,
    cpus: float | None = None,
    network: str = "host",
    source_date_epoch: int | None = None,
    platform: str | None = None,
    outputs: Iterable[Output] = (),
    progress: Progress | None = None,
) -> BuildResult:
    """Build `recipe` (default: the context's Recipefile) with `context`; return the image and step records.

    `source_date_epoch` (or SOURCE_DATE_EPOCH in `build_args` or the
    environment) makes the image reproducible: layer mtimes are clamped and
    timestamps fixed. `outputs` are written after the image is in the store.
    """
    import grammar
    from store.images import Store

    from .context import BuildContext
    from .executor import Builder, BuildOptions
    from .outputs import export

    context_dir = Path(context)
    if not context_dir.is_dir():
        raise BuildError(f"build context {os.fspath(context)!r}: not a directory")
    recipe_path = Path(recipe) if recipe is not None else default_recipe(context_dir)
    try:
        parsed = grammar.parse_file(recipe_path)
    except FileNotFoundError:
        raise BuildError(f"recipe {os.fspath(recipe_path)!r}: no such file") from None
    if source_date_epoch is None and "SOURCE_DATE_EPOCH" in os.environ and "SOURCE_DATE_EPOCH" not in (build_args or {}):
        try:
            source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            raise BuildError(f"SOURCE_DATE_EPOCH={os.environ['SOURCE_DATE_EPOCH']}: not a number of seconds") from None
    the_store = store if isinstance(store, Store) else Store(store)
    stat_cache = the_store.root / "builder" / "contexts" / f"{_digest(os.path.abspath(context_dir))}.json"
    stat_cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    build_context = BuildContext.open(context_dir, recipe=recipe_path, stat_cache=stat_cache)
    options = BuildOptions(
        target=target,
        build_args=dict(build_args or {}),
        tags=tuple(tags),
        labels=dict(labels or {}),
        no_cache=no_cache,
        no_cache_filter=tuple(no_cache_filter),
        secrets=dict(secrets or {}),
        memory=memory,
        cpus=cpus,
        network=network,
        source_date_epoch=source_date_epoch,
        platform=platform,
    )
    result = Builder(the_store, progress=progress).build(parsed, build_context, options, recipe_path=str(recipe_path))
    outputs = list(outputs)
    if outputs:
        from .outputs import export

        for output in outputs:
            export(the_store, result, output)
    return result


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:24]
