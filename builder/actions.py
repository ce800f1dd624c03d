"""The layer steps: RUN in the sandbox, COPY/ADD and WORKDIR's directory in the mounted root.

Each `*_action` turns an instruction (variables substituted) and the stage's
state into an `_Action`: the key fields (`op`) and the source files behind
them, known before anything runs, so the executor can look the key up; and
a `run` that does the work on a checked-out writable snapshot when the key
missed. Anything an action sets up (cache-mount locks, secret files, a
scratch directory) is released by `close`, hit or miss.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import TYPE_CHECKING, Any

from grammar import Add, Copy, ExecForm, Run, ShellForm
from grammar.scope import PROXY_ARGS

from .errors import BuildError, ContextError, StepFailed
from .executor import _Action

if TYPE_CHECKING:
    from collections import deque

    from grammar.scope import StageScope

    from . import steps
    from .context import BuildContext
    from .executor import Builder, BuildOptions, _Plan, _StageWork, _State
    from .progress import StepInfo

__all__ = ["copy_action", "run_action", "workdir_action"]

_HEREDOC_ONLY = re.compile(r"\s*<<-?\s*(['\"]?)([^\s'\"]+)\1\s*")
_HOSTNAME = "buildkitsandbox"  # what BuildKit names its RUN containers; scripts test for it


def _scratch(builder: Builder) -> str:
    """A directory of this step's own, inside the build's scratch directory (removed with the build)."""
    import tempfile

    return tempfile.mkdtemp(prefix="step-", dir=builder.scratch_root())


def _remove_scratch(scratch: str | None) -> None:
    """Remove a step's scratch directory, if it made one."""
    if scratch:
        import shutil  # here, not at import: a build whose steps all hit never removes a tree

        shutil.rmtree(scratch, ignore_errors=True)


# ---- RUN ---------------------------------------------------------------------


def run_action(builder: Builder, instruction: Run, work: _StageWork, state: _State, defaults: steps.StageDefaults) -> _Action:
    from . import run_mounts

    scope, context, options = work.scope, work.context, work.options
    span = instruction.span
    if instruction.security not in (None, "sandbox"):
        raise BuildError(f"RUN --security={instruction.security}: not supported (only sandbox)", span)
    network = instruction.network or "default"
    if network == "default":
        network = options.network
    if network not in ("none", "host"):
        raise BuildError(f"RUN --network={network}: expected default, none or host", span)
    workdir = state.config.working_dir or "/"
    # a directory for secrets, tmpfs mounts and here-document scripts, only when there are any
    scratch = _scratch(builder) if instruction.mounts or instruction.heredocs else ""
    binds: list[Any] = []  # sandbox.Bind
    argv = _run_argv(instruction, defaults.shell, scratch, binds)
    env = _run_env(state.config.env, scope)
    prepared = run_mounts.prepare(
        instruction.mounts,
        span=span,
        workdir=workdir,
        cache_root=str(builder.store.root / "builder" / "cache-mounts"),
        scratch=scratch,
        context=context,
        secrets=options.secrets,
    )
    key_env = sorted(item for item in env if item.partition("=")[0] not in PROXY_ARGS)
    op = {
        "kind": "run",
        "argv": list(argv),
        "env": key_env,
        "cwd": workdir,
        "user": state.config.user,
        "network": network,
        "mounts": prepared.key,
        "epoch": options.source_date_epoch,
    }
    limits = None
    if options.memory is not None or options.cpus is not None:
        from .cgroups import Limits

        limits = Limits(memory=options.memory, cpus=options.cpus)
    run_env = tuple(env) + tuple(f"{k}={v}" for k, v in prepared.env.items())

    def run(builder: Builder, checkout: Any, info: StepInfo, log: Any, tail: deque[str]) -> Any:
        from .sandbox import ExecRequest

        request = ExecRequest(
            argv=argv,
            rootfs=checkout.mounts,
            env=run_env,
            cwd=workdir,
            user=state.config.user,
            hostname=_HOSTNAME,
            network=network,  # type: ignore[arg-type]
            binds=(*binds, *prepared.binds),
            limits=limits,
        )
        partial = {1: b"", 2: b""}

        def on_output(stream: int, data: bytes) -> None:
            log.write(data)
            builder.output(info, stream, data)
            lines = (partial[stream] + data).split(b"\n")
            partial[stream] = lines.pop()[-4096:]
            tail.extend(line.decode(errors="replace") for line in lines)

        result = builder.sandbox().run(request, on_output=on_output)
        for rest in partial.values():
            if rest:
                tail.append(rest.decode(errors="replace"))
        if result.error is not None:
            tail.append(result.error)
        return result

    def close() -> None:
        prepared.close()
        _remove_scratch(scratch)

    return _Action(op, prepared.files, run, close)


def _run_argv(instruction: Run, shell: tuple[str, ...], scratch: str, binds: list[Any]) -> tuple[str, ...]:
    command = instruction.command
    if isinstance(command, ExecForm):
        return tuple(command.argv)
    assert isinstance(command, ShellForm)
    if not instruction.heredocs:
        return (*shell, command.text)
    only = _HEREDOC_ONLY.fullmatch(command.text)
    if only and len(instruction.heredocs) == 1:  # `RUN <<EOF`: the here-document is the script
        body = instruction.heredocs[0].content
        if body.startswith("#!"):  # its own interpreter, as BuildKit runs it: a file, executed
            from .sandbox import Bind

            path = os.path.join(scratch, "script")
            with open(path, "w") as f:
                f.write(body)
            os.chmod(path, 0o755)
            target = f"/run/pybuild-heredoc/{instruction.heredocs[0].name}"
            binds.append(Bind(path, target, readonly=True))
            return (target,)
        return (*shell, body)
    # The shell reads the here-documents itself, from the text as written.
    text = command.text + "\n" + "".join(h.content + h.name + "\n" for h in instruction.heredocs)
    return (*shell, text)


def _run_env(image_env: tuple[str, ...], scope: StageScope) -> tuple[str, ...]:
    """What the command sees: the ARGs in scope, then ENV (which wins); the sandbox adds a PATH when none is set."""
    env = dict(scope.args)
    env.update(item.partition("=")[::2] for item in image_env)
    return tuple(f"{k}={v}" for k, v in env.items())


# ---- WORKDIR -----------------------------------------------------------------


def workdir_action(path: str, options: BuildOptions) -> _Action:
    def make(root: str, _: str | None) -> None:
        from store.inroot import Resolver

        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            parts = tuple(p.encode() for p in path.split("/") if p)
            os.close(Resolver(fd, "WORKDIR", None).open_dir(parts, path, create=True))  # type: ignore[arg-type]
        finally:
            os.close(fd)

    def run(builder: Builder, checkout: Any, info: StepInfo, log: Any, tail: deque[str]) -> None:
        from .mounted import in_mounted_root

        in_mounted_root(checkout.mounts, make)

    return _Action({"kind": "workdir", "path": path, "epoch": options.source_date_epoch}, {}, run)


# ---- COPY and ADD ------------------------------------------------------------


def copy_action(builder: Builder, instruction: Copy | Add, work: _StageWork, state: _State) -> _Action:
    scope, context, options = work.scope, work.context, work.options
    span = instruction.span
    word = type(instruction).__name__.upper()
    if isinstance(instruction, Add):
        if instruction.keep_git_dir or any(_is_git(s) for s in instruction.sources):
            raise BuildError("ADD of a git repository: not supported yet (clone it into the context, then COPY)", span)
        if instruction.checksum and not all(_is_url(s) for s in instruction.sources):
            raise BuildError("ADD --checksum: only for http(s) sources", span)
    workdir = state.config.working_dir or "/"
    parents = bool(getattr(instruction, "parents", False))
    # ADD unpacks local archives; a download only when asked (--unpack), as BuildKit does.
    urls = any(_is_url(s) for s in instruction.sources)
    unpack = isinstance(instruction, Add) and (instruction.unpack is True or (instruction.unpack is None and not urls))
    from_stage = instruction.from_stage if isinstance(instruction, Copy) else None
    op: dict[str, Any] = {
        "kind": word.lower(),
        "sources": list(instruction.sources),
        "dest": _absolute(instruction.dest, workdir),
        "chown": instruction.chown,
        "chmod": instruction.chmod,
        "link": instruction.link,
        "parents": parents,
        "exclude": list(instruction.exclude),
        "unpack": unpack,
        "epoch": options.source_date_epoch,
    }
    scratch = None
    files: dict[str, str] = {}
    source_layers = None
    source_root: Any = context
    matches = None
    if from_stage is not None:
        source_layers, identity = _other_root(builder, from_stage, work.done, work.plan, span)
        op["from"] = identity
    else:
        if instruction.heredocs or urls:
            scratch = _scratch(builder)
            source_root = _inline_sources(instruction, scratch, span, scope)
        try:
            matches = source_root.select(
                [_inline_name(s, instruction) for s in instruction.sources], exclude=instruction.exclude, parents=parents
            )
        except ContextError as exc:
            _remove_scratch(scratch)
            raise ContextError(f"{word}: {exc.message}", span) from None
        op["content"] = source_root.digest(matches)
        files = {e.rel: e.digest or f"{e.kind}:{e.target or ''}:{e.mode:o}" for m in matches for e in m.entries}

    def operation(root: str, mounted_source: str | None) -> None:
        from . import fileops
        from .context import BuildContext

        chmod = fileops.parse_chmod(instruction.chmod) if instruction.chmod else None

        if mounted_source is not None:
            tree = BuildContext(mounted_source)
            selected = tree.select(list(instruction.sources), exclude=instruction.exclude, parents=parents)
            base = mounted_source
        else:
            selected, base = matches, str(source_root.root)
        owner = fileops.resolve_owner(instruction.chown, root) if instruction.chown else None
        spec = fileops.CopySpec(
            dest=instruction.dest, workdir=workdir, owner=owner, chmod=chmod, parents=parents, unpack=unpack, instruction=word
        )
        fileops.copy_into(root, base, selected, spec)

    def run(builder: Builder, checkout: Any, info: StepInfo, log: Any, tail: deque[str]) -> None:
        from .mounted import in_mounted_root

        source = None
        source_checkout = None
        if source_layers is not None:
            source_checkout = builder.store.checkout_layers(source_layers, prefix="source")
            source = source_checkout.mounts
        try:
            in_mounted_root(checkout.mounts, operation, source=source)
        except ContextError as exc:
            raise ContextError(f"{word}: {exc.message}", span) from None
        except StepFailed:
            raise
        except BuildError as exc:
            raise BuildError(f"{word}: {exc.message}", span) from None
        finally:
            if source_checkout is not None:
                source_checkout.remove()

    action = _Action(op, files, run, lambda: _remove_scratch(scratch))
    if instruction.link:
        action.layers = ()  # --link: the files alone, on an empty root, whatever lies below
    return action


def _absolute(dest: str, workdir: str) -> str:
    """`dest` against the working directory, its trailing slash (it means "a directory") kept."""
    path = posixpath.normpath(posixpath.join(workdir, dest))
    return path + "/" if dest.endswith("/") and path != "/" else path


def _other_root(builder: Builder, name: str, done: dict[int, _State], plan: _Plan, span: Any) -> tuple[Any, str]:
    """The layers and the cache identity of `COPY --from=name`: an earlier stage, or an image."""
    wanted = name.lower()
    for index in plan.needed:
        stage = plan.stages[index]
        if index in done and (stage.name == wanted or str(index) == wanted):
            state = done[index]
            return state.layers, f"stage:{state.key}:{[str(d) for _, d in state.layers]}"
    from store.checkout import image_layers
    from store.errors import NotFound

    try:
        image = builder.store.image(name)
    except NotFound:
        raise BuildError(f"COPY --from={name}: no stage or image of that name in the store", span) from None
    return image_layers(image), f"image:{image.manifest_descriptor.digest}"


def _is_git(source: str) -> bool:
    """A git source as BuildKit recognises one: git@host:path, git://, or an http(s) URL ending in .git."""
    return source.startswith(("git@", "git://")) or (_is_url(source) and source.split("#")[0].endswith(".git"))


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _inline_name(source: str, instruction: Copy | Add) -> str:
    """Where a here-document or URL source lies in the scratch directory: its own name."""
    for heredoc in instruction.heredocs:
        if _HEREDOC_ONLY.fullmatch(source) and _HEREDOC_ONLY.fullmatch(source).group(2) == heredoc.name:  # type: ignore[union-attr]
            return heredoc.name
    if _is_url(source):
        return _url_name(source)
    return source


def _url_name(url: str) -> str:
    from urllib.parse import urlsplit

    name = os.path.basename(urlsplit(url).path.rstrip("/"))
    return name or "index.html"


def _inline_sources(instruction: Copy | Add, scratch: str, span: Any, scope: StageScope) -> BuildContext:
    """A context of the instruction's here-documents and downloads, for sources that are not context paths."""
    from grammar.shell import ShellLexer

    from .context import BuildContext

    root = os.path.join(scratch, "inline")
    os.mkdir(root)
    # BuildKit expands an unquoted delimiter's body like a word, keeping quotes and escapes as written.
    lexer = ShellLexer(scope.lexer.escape, raw_quotes=True, raw_escapes=True)
    for heredoc in instruction.heredocs:
        content = heredoc.content
        if heredoc.chomp:
            content = "".join(line.lstrip("\t") for line in content.splitlines(keepends=True))
        if heredoc.expand:
            content = lexer.expand(content, scope.variables())
        path = os.path.join(root, heredoc.name)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, 0o644)  # whatever the builder's umask
    for source in instruction.sources:
        if _is_url(source):
            from .download import download

            checksum = instruction.checksum if isinstance(instruction, Add) else None
            download(source, os.path.join(root, _url_name(source)), checksum=checksum, span=span)
        elif not _HEREDOC_ONLY.fullmatch(source):
            raise BuildError(f"{source}: a context path cannot be mixed with here-documents or URLs here", span)
    return BuildContext(root)
