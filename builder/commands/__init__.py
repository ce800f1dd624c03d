"""pybuild's commands: what each accepts, and where its code lives.

Importing this package costs nothing beyond builder.argv: a command's module
is imported only when that command runs, so `pybuild parse` does not pay for
the store and `pybuild images` does not pay for the grammar.
"""

from __future__ import annotations

import importlib

from ..argv import Option, Positional, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..console import Console

__all__ = ["COMMANDS", "Command"]


class Command:
    """A subcommand: its `spec` and the `module:function` that runs it."""

    def __init__(self, spec: Spec, target: str) -> None:
        self.spec = spec
        self.target = target

    def run(self, args: dict[str, object], console: Console) -> int:
        module, _, function = self.target.partition(":")
        return importlib.import_module(module).__dict__[function](args, console)  # type: ignore[no-any-return]


def _spec(name: str, summary: str, options: list[Option] = (), positionals: list[Positional] = (), **kw: bool) -> Spec:  # type: ignore[assignment]
    return Spec(f"pybuild {name}", summary, list(options), list(positionals), **kw)


_STORE = Option("--store", help="the image store directory (default: $PYBUILD_STORE or the user's)", takes_value=True, metavar="DIR")
_JSON = Option("--json", help="print JSON instead of a table")


COMMANDS: dict[str, Command] = {
    "build": Command(
        _spec(
            "build",
            "build an image from a recipe and a build context (also: pybuild -f Recipefile CONTEXT)",
            [
                Option("-f", "--file", help="the recipe (default: CONTEXT/Recipefile, else CONTEXT/Dockerfile)", takes_value=True, metavar="FILE"),
                Option("-t", "--tag", help="name the image", repeat=True, metavar="NAME"),
                Option("--target", help="build this stage and what it needs, not the last stage", takes_value=True, metavar="STAGE"),
                Option("--build-arg", help="set a build argument (KEY=VALUE, or KEY to pass ours)", repeat=True, metavar="ARG"),
                Option("--label", help="add a label to the image (KEY=VALUE)", repeat=True, metavar="LABEL"),
                Option("--no-cache", help="build every step again"),
                Option("--no-cache-filter", help="build this stage's steps again", repeat=True, metavar="STAGE"),
                Option("--explain-cache", help="after the build, list every rebuilt step and why its cache missed"),
                Option("--progress", help="auto (default), plain, json, tty or quiet", takes_value=True, metavar="MODE"),
                Option("-q", "--quiet", help="print only the image id"),
                Option("-o", "--output", help="also write type=oci|docker|tar,dest=FILE or type=local,dest=DIR", repeat=True, metavar="OUTPUT"),
                Option("--iidfile", help="write the image id to this file", takes_value=True, metavar="FILE"),
                Option("--secret", help="a secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR", repeat=True, metavar="SECRET"),
                Option("--memory", "-m", help="memory limit of each RUN step (e.g. 512m)", takes_value=True, metavar="SIZE"),
                Option("--cpus", help="CPU quota of each RUN step, in cores", takes_value=True, metavar="N"),
                Option("--network", help="default network of RUN steps: default (host), none or host", takes_value=True, metavar="MODE"),
                Option("--platform", help="the target platform (only this host's is supported)", takes_value=True, metavar="PLATFORM"),
                _STORE,
            ],
            [Positional("context", help="the build context directory")],
        ),
        "builder.commands.build:run",
    ),
    "parse": Command(
        _spec(
            "parse",
            "check a recipe and print its stages, or its syntax tree with --json",
            [
                Option(
                    "--json",
                    help="print the syntax tree as BuildKit's parser builds it (one object per instruction), "
                    "without pybuild's own checks",
                )
            ],
            [Positional("file", help="the recipe to parse (- for standard input)")],
        ),
        "builder.commands.parse:run",
    ),
    "run": Command(
        _spec(
            "run",
            "run a command in a new container from an image",
            [
                Option("--rm", help="remove the container's writable layer when it exits (the default)"),
                Option("--keep", help="keep the writable layer and print where it is"),
                Option("-e", "--env", help="set an environment variable (KEY=VALUE, or KEY to pass ours)", repeat=True, metavar="ENV"),
                Option("-v", "--volume", help="bind-mount HOST:CONTAINER[:ro|rw]", repeat=True, metavar="VOLUME"),
                Option("-w", "--workdir", help="the working directory in the container", takes_value=True, metavar="DIR"),
                Option("-u", "--user", help="USER[:GROUP], names or numeric ids", takes_value=True, metavar="USER"),
                Option("--entrypoint", help="override the image's ENTRYPOINT", takes_value=True, metavar="CMD"),
                Option("--hostname", help="the container's host name", takes_value=True, metavar="NAME"),
                Option("--memory", "-m", help="memory limit (e.g. 256m, 1g)", takes_value=True, metavar="SIZE"),
                Option("--memory-swap", help="memory plus swap limit (-1: unlimited swap)", takes_value=True, metavar="SIZE"),
                Option("--cpus", help="CPU quota in cores (e.g. 0.5)", takes_value=True, metavar="N"),
                Option("--pids-limit", help="maximum number of processes", takes_value=True, metavar="N"),
                Option("--network", help="none (default: only loopback) or host", takes_value=True, metavar="MODE", default="none"),
                Option("--timeout", help="kill the container after this many seconds", takes_value=True, metavar="SECONDS"),
                Option("-i", "--interactive", help="keep standard input open"),
                Option("-t", "--tty", help="allocate a pseudo-terminal"),
                _STORE,
            ],
            [Positional("image", help="the image"), Positional("command", help="the command and its arguments", many=True, optional=True)],
            interspersed=False,
        ),
        "builder.commands.run:run",
    ),
    "images": Command(
        _spec("images", "list the images in the store", [_JSON, _STORE]), "builder.commands.images:images"
    ),
    "inspect": Command(
        _spec(
            "inspect",
            "show an image's manifest, config and layers",
            [Option("--json", help="print one JSON object"), _STORE],
            [Positional("image", help="a tag, digest, image id or unique prefix")],
        ),
        "builder.commands.images:inspect",
    ),
    "history": Command(
        _spec("history", "show how an image was built, layer by layer", [_STORE], [Positional("image", help="the image")]),
        "builder.commands.images:history",
    ),
    "tag": Command(
        _spec(
            "tag",
            "give an image another name",
            [_STORE],
            [Positional("source", help="the image"), Positional("target", help="the new name[:tag]")],
        ),
        "builder.commands.images:tag",
    ),
    "rmi": Command(
        _spec(
            "rmi",
            "remove image names (by digest or id: all of that image's names)",
            [_STORE],
            [Positional("images", help="the images", many=True)],
        ),
        "builder.commands.images:rmi",
    ),
    "save": Command(
        _spec(
            "save",
            "write images to an OCI archive, an OCI layout directory or a Docker archive",
            [
                Option("-o", "--output", help="the file (or directory for oci-dir) to write (default: standard output)", takes_value=True, metavar="FILE"),
                Option("--format", help="oci (default), oci-dir or docker", takes_value=True, metavar="FORMAT", default="oci"),
                Option("--compression", help="recompress layers: gzip, zstd or none", takes_value=True, metavar="KIND"),
                _STORE,
            ],
            [Positional("images", help="the images to save", many=True)],
        ),
        "builder.commands.transfer:save",
    ),
    "load": Command(
        _spec(
            "load",
            "load images from an OCI archive, OCI layout directory or Docker archive",
            [Option("-i", "--input", help="the archive or directory (default: standard input)", takes_value=True, metavar="FILE"), _STORE],
        ),
        "builder.commands.transfer:load",
    ),
    "import": Command(
        _spec(
            "import",
            "make a one-layer image from a root filesystem tarball (plain, gzip or zstd), like docker import",
            [_STORE],
            [Positional("rootfs", help="the tarball (- for standard input)"), Positional("name", help="NAME[:TAG]")],
        ),
        "builder.commands.transfer:import_",
    ),
    "du": Command(
        _spec("du", "show how much space images take, shared and unique", [_JSON, _STORE]), "builder.commands.images:du"
    ),
    "prune": Command(
        _spec(
            "prune",
            "delete blobs that no image, kept build cache or running build needs",
            [
                Option("--dry-run", help="report what would be freed, delete nothing"),
                Option("--cache", help="drop the build cache records too"),
                _STORE,
            ],
        ),
        "builder.commands.maintenance:prune",
    ),
    "store": Command(
        _spec(
            "store",
            "check the store: `pybuild store verify` re-hashes every blob and checks every image",
            [_STORE],
            [Positional("action", help="verify")],
        ),
        "builder.commands.maintenance:store",
    ),
}
