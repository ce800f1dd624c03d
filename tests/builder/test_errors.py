"""Builder errors: one line for the user, with what to change when the machine is the cause."""

from __future__ import annotations

from builder.errors import StepFailed, with_environment_hint
from grammar import Span


def test_environment_hints_say_what_to_change() -> None:
    assert "kernel.unprivileged_userns_clone=1" in with_environment_hint("unshare: Operation not permitted")
    assert "modprobe overlay" in with_environment_hint("mount: No such device: /run/pybuild/x/root")
    assert with_environment_hint("pivot_root: Busy") == "pivot_root: Busy"


def test_a_failed_step_renders_its_location_output_and_log() -> None:
    error = StepFailed("RUN failed: exit status 2 (step #3 [0 3/3])", Span("Recipefile", 4, 1, 4, 20),
                       output=("make: *** no rule",), log="/store/builder/logs/b/3.log")  # fmt: skip
    assert error.render().splitlines() == [
        "Recipefile:4:1: error: RUN failed: exit status 2 (step #3 [0 3/3])",
        "  output (last 1 lines):",
        "    make: *** no rule",
        "  full log: /store/builder/logs/b/3.log",
    ]
