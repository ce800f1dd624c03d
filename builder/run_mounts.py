"""RUN --mount: cache, bind, tmpfs and secret mounts turned into sandbox binds, and into cache-key fields.

    type=cache   a directory under `<store>/builder/cache-mounts/` that outlives
                 builds, keyed by `id` (default: the target). sharing=shared lets
                 parallel steps use it at once, locked makes them take turns
                 (an flock held while the step runs), private gives a step that
                 finds it busy a fresh instance of its own.
    type=bind    a directory or file of the build context (read-only unless rw;
                 with rw, writes go to a throwaway copy).
    type=tmpfs   an empty directory for the step alone.
    type=secret  a secret given to the build (`--secret id=ID,src=FILE|env=VAR`),
                 as a read-only file (default /run/secrets/ID) or, with env=NAME,
                 as an environment variable. Its content reaches no layer, no
                 log and no cache key; only its id and target do.

`prepare(specs, ...)` checks every field (an unknown or unsupported one fails
the build, naming it) and returns `Prepared`: the binds, extra environment,
key fields and a `close()` that releases locks and throwaway directories.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
from typing import TYPE_CHECKING, Any

from grammar.record import record

from .errors import BuildError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from grammar import MountSpec, Span

    from .context import BuildContext
    from .sandbox import Bind

__all__ = ["Prepared", "Secret", "prepare"]

_FIELDS = {
    "cache": {"type", "target", "dst", "destination", "id", "sharing", "ro", "readonly", "mode", "uid", "gid"},
    "bind": {"type", "target", "dst", "destination", "source", "src", "ro", "readonly", "rw", "readwrite"},
    "tmpfs": {"type", "target", "dst", "destination"},
    "secret": {"type", "target", "dst", "destination", "id", "required", "mode", "uid", "gid", "env"},
}
_NOT_YET = {
    "from": "mounting from another stage or image is not supported yet",
    "size": "tmpfs size limits are not supported yet",
}


@record
class Secret:
    """A build secret: the file `path` holds it, or the environment variable `env` of the build."""

    id: str
    path: str | None = None
    env: str | None = None

    def read(self) -> bytes:
        if self.path is not None:
            with open(self.path, "rb") as f:
                return f.read(1 << 20)
        return os.environ.get(self.env or self.id, "").encode()


class Prepared:
    """What `prepare` made of a step's mounts: binds, secret variables, key fields, bound files."""

    def __init__(self) -> None:
        self.binds: list[Bind] = []
        self.env: dict[str, str] = {}  # secrets as variables: never in the key
        self.key: list[dict[str, Any]] = []
        self.files: dict[str, str] = {}  # bound context files, for --explain-cache
        self._cleanup: list[Callable[[], None]] = []

    def close(self) -> None:
        while self._cleanup:
            self._cleanup.pop()()


def prepare(
    specs: tuple[MountSpec, ...],
    *,
    span: Span,
    workdir: str,
    cache_root: str,
    scratch: str,
    context: BuildContext,
    secrets: Mapping[str, Secret],
) -> Prepared:
    """The sandbox binds, secret variables and key fields of RUN's `--mount`s; `close()` it after the run."""
    out = Prepared()
    try:
        for spec in specs:
            kind, fields, target = _checked(spec, span, workdir)
            if kind == "cache":
                _cache(fields, target, out, span, cache_root)  # type: ignore[arg-type]
            elif kind == "bind":
                _bind(fields, target, out, span, scratch, context)  # type: ignore[arg-type]
            elif kind == "tmpfs":
                import tempfile

                from .sandbox import Bind

                out.binds.append(Bind(tempfile.mkdtemp(prefix="tmpfs-", dir=scratch), target))  # type: ignore[arg-type]
                out.key.append({"type": "tmpfs", "target": target})
            else:
                _secret(fields, target, out, span, scratch, secrets)
    except BaseException:
        out.close()
        raise
    return out


def _checked(spec: MountSpec, span: Span, workdir: str) -> tuple[str, dict[str, str | None], str | None]:
    """The mount's type, its fields (names lower-cased) and its absolute target; BuildError naming what is wrong."""
    kind = spec.kind
    fields = {k.lower(): v for k, v in spec.fields}
    where = f"--mount=type={kind}"
    if kind not in _FIELDS:
        raise BuildError(f"{where}: mount type not supported (cache, bind, tmpfs and secret are)", span)
    for name, value in fields.items():
        if name in _NOT_YET:
            raise BuildError(f"{where}: {name}={value}: {_NOT_YET[name]}", span)
        if name not in _FIELDS[kind]:
            raise BuildError(f"{where}: unknown option {name!r}", span)
    target = fields.get("target") or fields.get("dst") or fields.get("destination")
    if kind == "secret" and not target and not fields.get("env"):
        target = f"/run/secrets/{fields.get('id') or ''}"
    if target is not None:
        target = posixpath.normpath(posixpath.join(workdir, target))
    elif kind != "secret":
        raise BuildError(f"{where}: a target is required", span)
    return kind, fields, target


def _flag(fields: Mapping[str, str | None], *names: str) -> bool:
    for name in names:
        if name in fields:
            return fields[name] in (None, "", "true", "1")
    return False


def _number(fields: Mapping[str, str | None], name: str, default: int, span: Span, base: int = 10) -> int:
    text = fields.get(name)
    if text is None:
        return default
    try:
        return int(text, base)
    except ValueError:
        raise BuildError(f"--mount {name}={text}: not a number", span) from None


def _cache(fields: Mapping[str, str | None], target: str, out: Prepared, span: Span, cache_root: str) -> None:
    cache_id = fields.get("id") or target
    sharing = fields.get("sharing") or "shared"
    if sharing not in ("shared", "private", "locked"):
        raise BuildError(f"--mount=type=cache: sharing={sharing}: expected shared, private or locked", span)
    mode = _number(fields, "mode", 0o755, span, 8)
    uid, gid = _number(fields, "uid", 0, span), _number(fields, "gid", 0, span)
    base = os.path.join(cache_root, hashlib.sha256(cache_id.encode()).hexdigest()[:32])
    os.makedirs(base, mode=0o700, exist_ok=True)
    instance = 0
    while True:  # private: the first instance no other step holds; locked: wait for the first
        path = os.path.join(base, str(instance))
        lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if sharing == "shared":
            os.close(lock)
            break
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (fcntl.LOCK_NB if sharing == "private" else 0))
        except BlockingIOError:
            os.close(lock)
            instance += 1
            continue
        out._cleanup.append(lambda fd=lock: os.close(fd))
        break
    try:
        os.mkdir(path)
    except FileExistsError:  # made by an earlier step, or by a parallel one just now
        pass
    else:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    readonly = _flag(fields, "ro", "readonly")
    from .sandbox import Bind

    out.binds.append(Bind(path, target, readonly=readonly))
    out.key.append({"type": "cache", "target": target, "id": cache_id, "ro": readonly})


def _bind(
    fields: Mapping[str, str | None], target: str, out: Prepared, span: Span, scratch: str, context: BuildContext
) -> None:
    import shutil
    import tempfile

    source = fields.get("source") or fields.get("src") or "."
    from .errors import ContextError

    try:
        (match,) = context.select([source])
    except ContextError as exc:
        raise ContextError(f"--mount=type=bind: {exc}", span) from None
    path = os.path.join(context.root, match.rel) if match.rel else str(context.root)
    writable = _flag(fields, "rw", "readwrite")
    if writable:  # the step may write; nothing it writes may reach the context
        copy = os.path.join(tempfile.mkdtemp(prefix="bind-", dir=scratch), "copy")
        if match.kind == "dir":
            shutil.copytree(path, copy, symlinks=True)
        else:
            shutil.copy2(path, copy, follow_symlinks=False)
        path = copy
    from .sandbox import Bind

    out.binds.append(Bind(path, target, readonly=not writable))
    out.key.append({"type": "bind", "target": target, "source": match.rel, "rw": writable, "content": context.digest([match])})
    out.files.update({f"{e.rel}": e.digest or e.kind for e in match.entries})


def _secret(
    fields: Mapping[str, str | None],
    target: str | None,
    out: Prepared,
    span: Span,
    scratch: str,
    secrets: Mapping[str, Secret],
) -> None:
    import tempfile

    secret_id = fields.get("id") or (posixpath.basename(target) if target else "")
    secret = secrets.get(secret_id)
    required = _flag(fields, "required")
    out.key.append({"type": "secret", "id": secret_id, "target": target, "env": fields.get("env")})
    if secret is None:
        if required:
            raise BuildError(f"--mount=type=secret: secret {secret_id!r} is required: pass --secret id={secret_id},src=FILE", span)
        return
    value = secret.read()
    if fields.get("env"):
        out.env[str(fields["env"])] = value.decode(errors="replace")
    if target is None:
        return
    directory = tempfile.mkdtemp(prefix="secret-", dir=scratch)
    path = os.path.join(directory, "secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    os.chown(path, _number(fields, "uid", 0, span), _number(fields, "gid", 0, span))
    os.chmod(path, _number(fields, "mode", 0o400, span, 8))
    os.chmod(directory, 0o755)
    from .sandbox import Bind

    out.binds.append(Bind(path, target, readonly=True))
