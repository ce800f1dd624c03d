"""The seccomp deny list, installed for real in a forked child that then tries the calls it refuses."""

from __future__ import annotations

import ctypes
import errno
import json
import os

import pytest

from builder import _linux as linux
from builder.seccomp import DENIED, filter_program, supported

pytestmark = pytest.mark.skipif(not supported(), reason=f"the deny list is written for x86_64, not {os.uname().machine}")

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def errno_of(number: int, *args: int) -> int:
    """Make system call `number` with harmless arguments; 0 when it got through the filter, else its errno."""
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if result == -1 else 0


def under_the_filter(probe: object) -> dict[str, int]:
    """Run `probe()` (-> dict) in a child process with the filter installed; its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        try:
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            linux.seccomp_filter(filter_program())
            os.write(w, json.dumps(probe()).encode())  # type: ignore[operator]
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_the_denied_calls_get_eperm_and_others_go_through() -> None:
    def probe() -> dict[str, int]:
        out = {name: errno_of(number, -1, 0, 0, 0) for name, number in DENIED.items()}
        out["getpid"] = errno_of(39)
        out["clone3"] = errno_of(435, 0, 0)
        return out

    seen = under_the_filter(probe)
    assert {name: seen[name] for name in DENIED} == {name: errno.EPERM for name in DENIED}
    assert seen["getpid"] == 0
    assert seen["clone3"] == errno.ENOSYS  # so that a C library falls back to clone, whose flags it sees


def test_clone_into_a_new_user_namespace_is_refused_but_fork_works() -> None:
    def probe() -> dict[str, int]:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        newuser = errno_of(56, 0x10000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUSER | SIGCHLD)
        return {"fork": os.waitstatus_to_exitcode(status), "clone_newuser": newuser}

    assert under_the_filter(probe) == {"fork": 7, "clone_newuser": errno.EPERM}


def test_x32_calls_are_refused() -> None:
    assert under_the_filter(lambda: {"x32 getpid": errno_of(0x40000000 | 39)}) == {"x32 getpid": errno.EPERM}
