"""Build progress: the events a build reports, in order, to one callback.

    BuildStarted         the plan: how many steps, which stages
    StepStarted          a layer step begins, after its cache lookup missed, and why
    StepOutput           bytes a RUN step wrote (stdout 1, stderr 2), as they come
    StepCommitting       a layer step's files are being written as a layer (bytes so far)
    StepFinished         a step is done: cached or built, why it missed, what it cost
    BuildWarning         something the user should know (unused build args...)
    BuildFinished        the image, and whether it was already up to date

A step is named `#N` (1-based over the whole build) and `[stage k/m]` within
its stage, as BuildKit's plain log does. The callback is called from the
thread that runs the step: a renderer for several parallel stages must be
thread-safe. Events are `grammar.record`s (immutable, cheap to define:
every build imports this module). No rendering here: builder.commands.build_output draws bars,
plain lines or JSON.

    def show(event):
        if isinstance(event, StepFinished) and not event.cached:
            print(event.step.text, "missed:", "; ".join(event.reasons))

    build(".", progress=show)
"""

from __future__ import annotations

from collections.abc import Callable

from grammar.record import record

__all__ = [
    "BuildFinished",
    "BuildStarted",
    "BuildWarning",
    "Event",
    "Progress",
    "StepCommitting",
    "StepFinished",
    "StepInfo",
    "StepOutput",
    "StepStarted",
]


@record
class StepInfo:
    """Which step: `number` of `total` in the build, `index` of `count` in `stage`, its text and location."""

    number: int
    total: int
    stage: str
    index: int
    count: int
    text: str
    location: str

    @property
    def name(self) -> str:
        return f"#{self.number} [{self.stage} {self.index}/{self.count}] {self.text}"


@record
class BuildStarted:
    steps: int
    stages: tuple[str, ...]


@record
class StepStarted:
    """A layer step whose cache missed starts; `reasons` say why it missed."""

    step: StepInfo
    reasons: tuple[str, ...] = ()


@record
class StepOutput:
    step: StepInfo
    stream: int
    data: bytes


@record
class StepCommitting:
    """`written` bytes of the step's layer tar so far: 0 first, then every few MiB, and at the end."""

    step: StepInfo
    written: int


@record
class StepFinished:
    """`layer_step`: RUN, COPY, ADD or WORKDIR (a step with a cache key); the others only change the config.

    `cached`: a layer step whose result was reused; `reasons`: why its cache missed.
    """

    step: StepInfo
    layer_step: bool
    cached: bool
    reasons: tuple[str, ...] = ()
    duration: float = 0.0
    cpu_time: float | None = None  # RUN only: the sandboxed process's user + system seconds
    max_rss: int | None = None  # RUN only: its peak memory, bytes
    layer: str | None = None  # the layer blob's digest, None for no layer
    size: int = 0  # the layer blob's size


@record
class BuildWarning:
    message: str


@record
class BuildFinished:
    image: str  # the manifest digest
    image_id: str  # the config digest, Docker's image id
    up_to_date: bool
    duration: float


Event = BuildStarted | StepStarted | StepOutput | StepCommitting | StepFinished | BuildWarning | BuildFinished
Progress = Callable[[Event], None]
