"""The build engine: a recipe, a build context and a store in; an image (and its cache) out.

Lifecycle of one build (`Builder.build`):

1. Plan: FROM lines are expanded with the global ARGs, stages are named,
   and the stages the target needs (through FROM and `COPY --from`) are
   kept, the others skipped. Independent stages build in parallel.
2. Each stage starts from its base (a store image, `scratch`, or an earlier
   stage's result), runs the base image's ONBUILD triggers, then walks its
   instructions with grammar.scope substituting variables.
3. Config instructions only change the image config (builder.steps). RUN,
   COPY, ADD and WORKDIR's directory are *layer steps*: each has a cache key
   (builder.cachekey) over its parent's key and what changes its result. A
   key with a cache record reuses its layer, running nothing. A miss
   checks out the parent layers as a writable snapshot, runs the command in
   the sandbox or the file operation in the mounted root (builder.mounted),
   and turns the upper directory into a layer (an empty one adds none).
4. The image config and manifest are written, unless an identical image
   (same keys, same config) is already in the store: then the build is up to
   date and exports nothing. Tags point at it.

Vocabulary: a stage's *state* is its layers, config and history so far, and
the key of its last layer step. Why a step missed is found by comparing it
with the same step of the closest earlier build of the same recipe
(builder.records): the command text, an environment value, a context file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from grammar import (
    Add,
    Arg,
    Cmd,
    Copy,
    From,
    Instruction,
    Maintainer,
    Run,
    Shell,
    Workdir,
)
from grammar.record import record
from grammar.scope import GlobalScope, StageScope
from store.descriptor import Descriptor, MediaType
from store.digest import Digest
from store.errors import StoreError
from store.image import (
    ContainerConfig,
    HistoryEntry,
    ImageConfig,
    Manifest,
    canonical_json,
    host_platform,
)

from . import steps
from .cachekey import step_key
from .errors import BaseImageError, BuildError, StepFailed
from .progress import (
    BuildFinished,
    BuildStarted,
    BuildWarning,
    StepCommitting,
    StepFinished,
    StepInfo,
    StepOutput,
    StepStarted,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from grammar import Recipe, Stage
    from store.images import Store

    from .context import BuildContext
    from .progress import Event, Progress
    from .run_mounts import Secret
    from .sandbox import ExecResult

__all__ = ["BuildOptions", "BuildResult", "Builder", "StepRecord"]

Layer = tuple[Descriptor, Digest]
_SCRATCH = "scratch"
_TAIL_LINES = 15
_COMMIT_REPORT = 8 << 20  # bytes of layer between two StepCommitting events
_NOTHING: Mapping[str, Any] = MappingProxyType({})


@record
class BuildOptions:
    """How to build: everything `pybuild build` takes but the recipe and context."""

    target: str | None = None
    build_args: Mapping[str, str] = _NOTHING
    tags: tuple[str, ...] = ()
    labels: Mapping[str, str] = _NOTHING
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    secrets: Mapping[str, Secret] = _NOTHING
    memory: int | None = None
    cpus: float | None = None
    network: str = "host"
    source_date_epoch: int | None = None
    platform: str | None = None


@record
class StepRecord:
    """What one step of a build did: cached or built, why it missed, and what it cost."""

    number: int
    stage: str
    text: str
    location: str
    layer_step: bool  # RUN, COPY, ADD, WORKDIR: a step with a cache key
    cached: bool
    reasons: tuple[str, ...]
    duration: float
    cpu_time: float | None = None
    max_rss: int | None = None
    layer: str | None = None
    size: int = 0


@record
class BuildResult:
    """The image (manifest digest, Docker's image id), its config, and a record of every step."""

    manifest: Descriptor
    image_id: str
    config: ImageConfig
    steps: tuple[StepRecord, ...]
    up_to_date: bool
    tags: tuple[str, ...]
    log_dir: str | None = None

    @property
    def digest(self) -> str:
        return str(self.manifest.digest)

    @property
    def cached_steps(self) -> int:
        """Layer steps whose result came from the cache."""
        return sum(1 for s in self.steps if s.layer_step and s.cached)

    @property
    def built_steps(self) -> int:
        """Layer steps that ran."""
        return sum(1 for s in self.steps if s.layer_step and not s.cached)


@record
class _State:
    """A stage's result so far."""

    layers: tuple[Layer, ...]
    config: ContainerConfig
    history: tuple[HistoryEntry, ...]
    key: str | None
    platform: tuple[str, str, str | None]  # os, architecture, variant
    author: str | None = None
    all_cached: bool = True


@record
class _StageWork:
    """What every step of one stage reads: the plan, the build context and options, the stages built
    before it, its variables in scope, and whether its cache is to be ignored."""

    plan: _Plan
    context: BuildContext
    options: BuildOptions
    done: dict[int, _State]
    scope: StageScope
    no_cache: bool


@record
class _Plan:
    stages: list[Stage]
    names: list[str]  # display name of each stage
    bases: list[str]  # expanded FROM image of each stage
    deps: list[set[int]]
    needed: list[int]
    target: int


class Builder:
    """Builds recipes into one store; see the module docstring. One build at a time per instance."""

    def __init__(self, store: Store, *, progress: Progress | None = None) -> None:
        self.store = store
        self._progress = progress
        self._emit_lock = threading.Lock()
        self._sandboxes: list[Any] = []
        self._local = threading.local()
        self._scratch: tuple[str, int] | None = None
        self._cancelled = False  # set when a stage fails: the others stop at their next step

    # ---- the build ---------------------------------------------------------

    def build(self, recipe: Recipe, context: BuildContext, options: BuildOptions, *, recipe_path: str) -> BuildResult:
        from .records import BuildRecord, previous_record

        started = time.monotonic()
        self._cancelled = False
        options = self._with_epoch(options)
        globals_ = GlobalScope(recipe.global_args, options.build_args)
        plan = self._plan(recipe, globals_, options)
        self._numbering(plan)
        previous = previous_record(self.store.root, recipe_path, context.root, plan.names[plan.target])
        self._record = BuildRecord.new(self.store.root, recipe_path, context.root, plan.names[plan.target])
        self._previous = previous
        self._records: list[StepRecord] = []
        self._emit(BuildStarted(self._total, tuple(plan.names[i] for i in plan.needed)))
        with self.store.metadata.lease(ttl=24 * 3600) as lease:
            self._lease = lease
            try:
                states = self._build_stages(recipe, plan, globals_, context, options)
            finally:
                self._close_sandboxes()
                self._remove_scratch()
                context.save()
            final = states[plan.target]
            for name in globals_.unused_build_args():
                self._emit(BuildWarning(f"build argument {name!r} is not declared by any ARG of the stages built"))
            manifest, config_descriptor, config, up_to_date = self._image(final, options)
            if options.tags:
                self.store.tags.set_many([(tag, manifest) for tag in options.tags])
            else:  # a dangling image, as Docker keeps one: found by its id, listed as <none>
                self.store.tags.add_untagged(manifest)
        self._record.save()
        records = tuple(sorted(self._records, key=lambda r: r.number))
        image_id = str(config_descriptor.digest)  # Docker's image id: the config's digest
        self._emit(BuildFinished(str(manifest.digest), image_id, up_to_date, time.monotonic() - started))
        return BuildResult(
            manifest=manifest,
            image_id=image_id,
            config=config,
            steps=records,
            up_to_date=up_to_date,
            tags=options.tags,
            log_dir=self._record.log_dir,
        )

    @staticmethod
    def _with_epoch(options: BuildOptions) -> BuildOptions:
        text = options.build_args.get("SOURCE_DATE_EPOCH") if options.source_date_epoch is None else None
        if text is None:
            return options
        try:
            return options._replace(source_date_epoch=int(text))
        except ValueError:
            raise BuildError(f"SOURCE_DATE_EPOCH={text}: not a number of seconds") from None

    # ---- planning ------------------------------------------------------------

    def _plan(self, recipe: Recipe, globals_: GlobalScope, options: BuildOptions) -> _Plan:
        stages = list(recipe.stages)
        if not stages:
            raise BuildError("the recipe has no FROM instruction")
        names = [s.name or str(s.index) for s in stages]
        index_of = {s.name: s.index for s in stages if s.name}
        bases, deps = [], []
        for stage in stages:
            base = globals_.expand_from(stage.base)
            self._check_platform(base, options)
            image = base.image
            found: set[int] = set()
            ref = index_of.get(image.lower())
            if ref is not None and ref < stage.index:
                found.add(ref)
            for instruction in stage.instructions:
                source = _from_reference(instruction)
                if source is None:
                    continue
                expanded = _expand_plain(source, globals_)
                other = index_of.get(expanded.lower(), int(expanded) if expanded.isdigit() else None)
                if other is not None:
                    if other >= stage.index:
                        raise BuildError(
                            f"--from={source}: stage {expanded!r} is not defined before this one", instruction.span
                        )
                    found.add(other)
            bases.append(image)
            deps.append(found)
        if options.target is None:
            target = len(stages) - 1
        else:
            target = index_of.get(options.target.lower(), -1)
            if target < 0:
                known = ", ".join(s.name for s in stages if s.name) or "none"
                raise BuildError(f"target stage {options.target!r} not found (stages: {known})")
        needed: set[int] = set()
        todo = [target]
        while todo:
            index = todo.pop()
            if index not in needed:
                needed.add(index)
                todo.extend(deps[index])
        return _Plan(stages, names, bases, deps, sorted(needed), target)

    @staticmethod
    def _check_platform(base: From, options: BuildOptions) -> None:
        architecture, variant = host_platform()
        host = f"linux/{architecture}" + (f"/{variant}" if variant else "")
        for wanted in (base.platform, options.platform):
            if wanted and wanted not in (host, f"linux/{architecture}"):
                raise BuildError(
                    f"--platform={wanted}: only this host's platform ({host}) can be built here", base.span
                )

    def _numbering(self, plan: _Plan) -> None:
        self._steps_of: dict[int, int] = {}
        number = 0
        for index in plan.needed:
            self._steps_of[index] = number
            number += 1 + len(plan.stages[index].instructions)
        self._total = number
        self._plan_ref = plan

    # ---- stages --------------------------------------------------------------

    def _build_stages(
        self, recipe: Recipe, plan: _Plan, globals_: GlobalScope, context: BuildContext, options: BuildOptions
    ) -> dict[int, _State]:
        states: dict[int, _State] = {}
        pending = list(plan.needed)
        running: dict[Any, int] = {}
        pool = None
        try:
            while pending or running:
                ready = [i for i in pending if plan.deps[i] <= states.keys()]
                for index in ready:
                    pending.remove(index)
                if len(ready) == 1 and not running:  # nothing to overlap with: build it in this thread
                    states[ready[0]] = self._build_stage(recipe, plan, ready[0], globals_, context, options, dict(states))
                    continue
                if pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    pool = ThreadPoolExecutor(max_workers=min(8, len(plan.needed)), thread_name_prefix="stage")
                for index in ready:
                    future = pool.submit(self._build_stage, recipe, plan, index, globals_, context, options, dict(states))
                    running[future] = index
                if not running:
                    raise BuildError("the stages depend on each other in a cycle")
                from concurrent.futures import FIRST_COMPLETED, wait

                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    states[index] = future.result()  # the first failure ends the build
        except BaseException:
            self._cancelled = True  # the other stages stop at their next step
            for future in running:
                future.cancel()
            with self._emit_lock:
                sandboxes = list(self._sandboxes)
            for sandbox in sandboxes:
                sandbox.cancel()  # and what they run now is killed
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        return states

    def _build_stage(
        self,
        recipe: Recipe,
        plan: _Plan,
        index: int,
        globals_: GlobalScope,
        context: BuildContext,
        options: BuildOptions,
        done: dict[int, _State],
    ) -> _State:
        stage = plan.stages[index]
        name = plan.names[index]
        count = 1 + len(stage.instructions)
        first = self._steps_of[index]
        info = self._info(first + 1, name, 1, count, f"FROM {plan.bases[index]}", stage.base.span)
        started = time.monotonic()
        state, triggers = self._base(plan, index, done, options)
        self._finish(info, cached=False, layer_step=False, duration=time.monotonic() - started)
        scope = StageScope(globals_, image_env=[tuple(e.partition("=")[::2]) for e in state.config.env])  # type: ignore[misc]
        defaults = steps.StageDefaults(shell=state.config.shell or steps.DEFAULT_SHELL, cmd_inherited=True)
        no_cache = options.no_cache or name in options.no_cache_filter or (stage.name or "") in options.no_cache_filter
        work = _StageWork(plan, context, options, done, scope, no_cache)
        for trigger in triggers:
            trigger_info = self._info(first + 1, name, 1, count, f"ONBUILD {trigger.expression}", trigger.span)
            state, defaults = self._step(trigger.trigger, work, state, defaults, trigger_info)
        for position, instruction in enumerate(stage.instructions, start=2):
            text = _instruction_text(recipe, instruction)
            step = self._info(first + position, name, position, count, text, instruction.span)
            state, defaults = self._step(instruction, work, state, defaults, step)
        return state

    def _base(
        self, plan: _Plan, index: int, done: dict[int, _State], options: BuildOptions
    ) -> tuple[_State, list[Any]]:
        stage = plan.stages[index]
        image = plan.bases[index]
        architecture, variant = host_platform()
        ref = next((i for i in plan.deps[index] if plan.stages[i].name == image.lower()), None)
        if ref is not None:
            parent = done[ref]
            triggers = _triggers(parent.config.on_build, stage.base)
            return parent._replace(config=parent.config._replace(on_build=())), triggers
        if image.lower() == _SCRATCH:
            return _State((), ContainerConfig(), (), None, ("linux", architecture, variant)), []
        from store.checkout import image_layers
        from store.errors import NotFound

        try:
            found = self.store.image(image)
        except NotFound:
            raise BaseImageError(
                f"base image {image!r} is not in the store (pull or import it first: pybuild load, pybuild import)",
                stage.base.span,
            ) from None
        config = found.config
        key = step_key(None, {"kind": "from", "image": str(found.manifest_descriptor.digest)})
        state = _State(
            layers=image_layers(found),
            config=config.config._replace(on_build=()),
            history=config.history,
            key=key,
            platform=(config.os, config.architecture, config.variant),
            author=None,
        )
        return state, _triggers(config.config.on_build, stage.base)

    # ---- one step --------------------------------------------------------------

    def _step(
        self, raw: Instruction, work: _StageWork, state: _State, defaults: steps.StageDefaults, info: StepInfo
    ) -> tuple[_State, steps.StageDefaults]:
        if self._cancelled:
            raise BuildError("cancelled: another stage failed")
        started = time.monotonic()
        instruction = work.scope.apply(raw)
        now = self._now(work.options)
        if isinstance(instruction, Arg):
            self._finish(info, cached=False, layer_step=False, duration=time.monotonic() - started)
            return state, defaults
        if isinstance(instruction, (Run, Copy, Add, Workdir)):
            if isinstance(instruction, Workdir):
                config = steps.configure(state.config, instruction, defaults)
                state = state._replace(config=config)
            state = self._layer_step(instruction, work, state, defaults, info, now, started)
            return state, defaults
        config = steps.configure(state.config, instruction, defaults)
        if isinstance(instruction, Shell):
            defaults = defaults._replace(shell=tuple(instruction.argv))
        if isinstance(instruction, Cmd):
            defaults = defaults._replace(cmd_inherited=False)
        author = instruction.name if isinstance(instruction, Maintainer) else state.author
        entry = HistoryEntry(created=now, created_by=steps.created_by(instruction, shell=defaults.shell), empty_layer=True)
        state = state._replace(config=config, history=(*state.history, entry), author=author)
        self._finish(info, cached=False, layer_step=False, duration=time.monotonic() - started)
        return state, defaults

    def _layer_step(
        self,
        instruction: Run | Copy | Add | Workdir,
        work: _StageWork,
        state: _State,
        defaults: steps.StageDefaults,
        info: StepInfo,
        now: str,
        started: float,
    ) -> _State:
        no_cache = work.no_cache
        action = self._action(instruction, work, state, defaults)
        # A --link layer does not depend on what lies below it: its key has no parent, so it
        # is reused when an earlier step changes; the stage's key chain goes on through it.
        parent = None if action.layers == () else state.key
        key = step_key(parent, action.op)
        chain = key if parent is not None else step_key(state.key, {"kind": "link", "layer": key})
        if isinstance(instruction, Workdir):
            created_by = f"WORKDIR {state.config.working_dir}"
        else:
            created_by = steps.created_by(instruction, shell=defaults.shell)
        hit = None if no_cache else self._lookup(key)
        if hit is not None:
            layer, created = hit
            action.close()
            self._record.add(info, key, parent, action.op, action.files, cached=True, produces=chain)
            self._finish(info, cached=True, duration=time.monotonic() - started, layer=layer)
            return self._with_layer(state, layer, chain, created, created_by)
        reasons = ("--no-cache",) if no_cache else tuple(self._explain(info, key, parent, action.op, action.files))
        self._emit(StepStarted(info, reasons))
        log = self._record.log(info.number)
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            below = state.layers if action.layers is None else action.layers
            checkout = self.store.checkout_layers(below, prefix="build")
            try:
                result = action.run(self, checkout, info, log, tail)
                if result is not None and not result.ok:
                    raise StepFailed(
                        f"{info.text.split(' ', 1)[0]} failed: {result.describe()} (step #{info.number} [{info.stage} {info.index}/{info.count}])",
                        instruction.span,
                        output=tuple(line for line in tail if line.strip()),
                        log=log.name,
                    )
                layer = self._commit(checkout, work.options, info)
            except BaseException:
                with contextlib.suppress(Exception):
                    checkout.remove()
                raise
        finally:
            log.close()
            action.close()
        self._record.add(info, key, parent, action.op, action.files, cached=False, produces=chain)
        self._put(key, layer, now)
        self._finish(
            info,
            cached=False,
            reasons=reasons,
            duration=time.monotonic() - started,
            cpu_time=result.cpu_time if result is not None else None,
            max_rss=result.max_rss if result is not None else None,
            layer=layer,
        )
        return self._with_layer(state, layer, chain, now, created_by)._replace(all_cached=False)

    def _with_layer(self, state: _State, layer: Layer | None, key: str, created: str, created_by: str) -> _State:
        entry = HistoryEntry(created=created, created_by=created_by, empty_layer=layer is None)
        layers = state.layers if layer is None else (*state.layers, layer)
        return state._replace(layers=layers, history=(*state.history, entry), key=key)

    def _commit(self, checkout: Any, options: BuildOptions, info: StepInfo) -> Layer | None:
        if not any(os.scandir(checkout.upper_dir)):
            checkout.remove()
            return None
        written = reported = 0

        def progress(count: int) -> None:
            nonlocal written, reported
            written += count
            if written - reported >= _COMMIT_REPORT:
                reported = written
                self._emit(StepCommitting(info, written))

        self._emit(StepCommitting(info, 0))
        committed = checkout.commit(source_date_epoch=options.source_date_epoch, lease=self._lease, progress=progress)
        self._emit(StepCommitting(info, written))
        return committed.layer.descriptor, committed.layer.diff_id

    # ---- cache records -----------------------------------------------------

    def _lookup(self, key: str) -> tuple[Layer | None, str] | None:
        record = self.store.metadata.get_cache(key)
        if record is None:
            return None
        data = record.record
        try:
            created = str(data["created"])
            if data.get("layer") is None:
                return None, created
            descriptor = Descriptor.from_json(data["layer"])
            diff_id = Digest.parse(data["diff_id"])
        except (KeyError, TypeError, ValueError, StoreError):
            return None  # a record of another version, or damaged: build again
        if not self.store.content.exists(descriptor.digest):
            return None
        self._lease.add_blob(descriptor.digest)
        return (descriptor, diff_id), created

    def _put(self, key: str, layer: Layer | None, created: str) -> None:
        if layer is None:
            self.store.metadata.put_cache(key, {"layer": None, "created": created})
            return
        descriptor, diff_id = layer
        self.store.metadata.put_cache(
            key, {"layer": descriptor.to_json(), "diff_id": str(diff_id), "created": created}, refs=[descriptor]
        )

    def _explain(self, info: StepInfo, key: str, parent: str | None, op: dict[str, Any], files: dict[str, str]) -> list[str]:
        if self._previous is None:
            return ["no earlier build of this recipe and target in this store"]
        return self._previous.explain(info, key, parent, op, files, self._record)

    # ---- actions ---------------------------------------------------------------

    def _action(
        self, instruction: Run | Copy | Add | Workdir, work: _StageWork, state: _State, defaults: steps.StageDefaults
    ) -> _Action:
        from .actions import copy_action, run_action, workdir_action

        if isinstance(instruction, Run):
            return run_action(self, instruction, work, state, defaults)
        if isinstance(instruction, Workdir):
            return workdir_action(state.config.working_dir, work.options)
        return copy_action(self, instruction, work, state)

    def scratch_root(self) -> str:
        """This build's directory for its steps' throwaway files (secrets, tmpfs mounts, downloads).

        It holds a lock while the build runs; a build killed with SIGKILL
        leaves one unlocked, which the next build sweeps.
        """
        import tempfile

        with self._emit_lock:
            if self._scratch is None:
                from .namespace_sandbox import default_state_root

                base = default_state_root().parent / "builds"
                os.makedirs(base, mode=0o700, exist_ok=True)
                _sweep_scratch(base)
                root = tempfile.mkdtemp(prefix="build-", dir=base)
                lock = os.open(os.path.join(root, ".lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._scratch = (root, lock)
            return self._scratch[0]

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            import shutil

            root, lock = self._scratch
            self._scratch = None
            shutil.rmtree(root, ignore_errors=True)
            os.close(lock)

    def sandbox(self) -> Any:
        """This thread's sandbox (one per stage thread: runs of one sandbox are sequential)."""
        sandbox = getattr(self._local, "sandbox", None)
        if sandbox is None:
            from .namespace_sandbox import NamespaceSandbox

            sandbox = NamespaceSandbox()
            self._local.sandbox = sandbox
            with self._emit_lock:
                self._sandboxes.append(sandbox)
            for warning in sandbox.warnings:
                self._emit(BuildWarning(warning))
        return sandbox

    def _close_sandboxes(self) -> None:
        with self._emit_lock:
            sandboxes, self._sandboxes = self._sandboxes, []
        for sandbox in sandboxes:
            sandbox.close()

    # ---- the image -------------------------------------------------------------

    def _image(self, final: _State, options: BuildOptions) -> tuple[Descriptor, Descriptor, ImageConfig, bool]:
        """The image's manifest and config (descriptors, and the config itself), and whether it was there already."""
        from store.content import read_blob, write_blob
        from store.image import parse_config

        config = final.config
        if options.labels:
            config = config._replace(labels={**config.labels, **options.labels})
        os_, architecture, variant = final.platform
        image_key = step_key(
            final.key,
            {
                "kind": "image",
                "config": config.to_json(),
                "history": [h.to_json() for h in final.history if h.created is not None] if options.source_date_epoch is not None else [h.created_by for h in final.history],
                "layers": [str(d.digest) for d, _ in final.layers],
                "platform": [os_, architecture, variant],
                "author": final.author,
                "epoch": options.source_date_epoch,
            },
        )
        record = self.store.metadata.get_cache(f"image:{image_key}")
        if record is not None and final.all_cached:
            with contextlib.suppress(Exception):
                manifest = Descriptor.from_json(record.record["manifest"])
                config_descriptor = Descriptor.from_json(record.record["config"])
                if self.store.content.exists(manifest.digest) and self.store.content.exists(config_descriptor.digest):
                    self._lease.add_blob(manifest.digest)
                    parsed = parse_config(read_blob(self.store.content, config_descriptor), config_descriptor)
                    return manifest, config_descriptor, parsed, True
        created = self._now(options)
        image_config = ImageConfig(
            architecture=architecture,
            os=os_,
            variant=variant,
            diff_ids=tuple(d for _, d in final.layers),
            config=config,
            history=final.history,
            created=created,
            author=final.author,
        )
        config_descriptor = write_blob(self.store.content, canonical_json(image_config), MediaType.CONFIG)
        self._lease.add_blob(config_descriptor.digest)
        manifest_doc = Manifest(config=config_descriptor, layers=tuple(d for d, _ in final.layers))
        manifest = write_blob(self.store.content, canonical_json(manifest_doc), MediaType.MANIFEST)
        self._lease.add_blob(manifest.digest)
        self.store.metadata.put_cache(
            f"image:{image_key}",
            {"manifest": manifest.to_json(), "config": config_descriptor.to_json()},
            refs=[manifest, config_descriptor, *(d for d, _ in final.layers)],
        )
        return manifest, config_descriptor, image_config, False

    # ---- progress --------------------------------------------------------------

    def _info(self, number: int, stage: str, index: int, count: int, text: str, span: Any) -> StepInfo:
        return StepInfo(number, self._total, stage, index, count, text, f"{span.file}:{span.line}")

    def _finish(
        self,
        info: StepInfo,
        *,
        cached: bool,
        duration: float,
        layer_step: bool = True,
        reasons: tuple[str, ...] = (),
        cpu_time: float | None = None,
        max_rss: int | None = None,
        layer: Layer | None = None,
    ) -> None:
        digest = str(layer[0].digest) if layer else None
        size = layer[0].size if layer else 0
        self._emit(StepFinished(info, layer_step, cached, reasons, duration, cpu_time, max_rss, digest, size))
        record = StepRecord(
            info.number, info.stage, info.text, info.location, layer_step, cached, reasons, duration, cpu_time, max_rss, digest, size
        )
        with self._emit_lock:
            self._records.append(record)

    def _emit(self, event: Event) -> None:
        if self._progress is not None:
            with self._emit_lock:
                self._progress(event)

    def output(self, info: StepInfo, stream: int, data: bytes) -> None:
        self._emit(StepOutput(info, stream, data))

    @staticmethod
    def _now(options: BuildOptions) -> str:
        """SOURCE_DATE_EPOCH, else now, as the config's RFC 3339 UTC time (whole seconds)."""
        epoch = options.source_date_epoch
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


class _Action:
    """A layer step ready to run: its key fields (`op`), the files behind them, `run` and `close`."""

    def __init__(
        self,
        op: dict[str, Any],
        files: dict[str, str],
        run: Callable[[Builder, Any, StepInfo, Any, deque[str]], ExecResult | None],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.op = op
        self.files = files
        self.layers: tuple[Layer, ...] | None = None  # the root to work on, when not the stage's own layers
        self.run = run
        self.close = close


def _instruction_text(recipe: Recipe, instruction: Instruction) -> str:
    span = instruction.span
    lines = [recipe.source.line(n).strip() for n in range(span.line, min(span.end_line, span.line + 3) + 1)]
    text = " ".join(line.rstrip("\\").strip() for line in lines if line)
    return text if len(text) <= 120 else text[:119] + "…"


def _from_reference(instruction: Instruction) -> str | None:
    if isinstance(instruction, Copy) and instruction.from_stage:
        return instruction.from_stage
    return None


def _expand_plain(word: str, globals_: GlobalScope) -> str:
    if "$" not in word:
        return word
    return globals_.lexer.expand(word, globals_.values)


def _triggers(on_build: tuple[str, ...], where: From) -> list[Any]:
    """The base image's ONBUILD triggers as instructions, located at the FROM that runs them."""
    if not on_build:
        return []
    from grammar import Onbuild, parse
    from grammar.errors import RecipeError

    out = []
    for expression in on_build:
        try:
            (stage,) = parse(f"FROM scratch\n{expression}\n", where.span.file).stages
            (trigger,) = stage.instructions
        except (RecipeError, ValueError) as exc:
            raise BuildError(f"ONBUILD trigger {expression!r} of the base image: {exc}", where.span) from None
        out.append(Onbuild(where.span, _relocated(trigger, where), expression))
    return out


def _sweep_scratch(base: str | os.PathLike[str]) -> None:
    """Remove the scratch directories of builds that died (their lock is free)."""
    import shutil

    for entry in os.scandir(base):
        try:
            lock = os.open(os.path.join(entry.path, ".lock"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue  # being made right now, or not ours
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(lock)


def _relocated(instruction: Instruction, where: From) -> Instruction:
    return instruction._replace(span=where.span)  # type: ignore[union-attr]
