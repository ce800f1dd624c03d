"""The seccomp filter every container's command runs under: a deny list, in the spirit of Docker's profile.

Containers keep most system calls, as Docker's default profile does; the
filter refuses (EPERM) those that reach kernel surface a build never needs
and exploits keep finding: the key rings (keyctl, add_key, request_key),
bpf, userfaultfd, perf_event_open, kernel modules and kexec, the mount API
and namespace calls (unshare, setns, pivot_root, mount, umount2, the new
mount API), clone with CLONE_NEWUSER (nested user namespaces: the way into
CVE-2022-0185 and its kind), file handles (open_by_handle_at: "shocker"),
io_uring, and the clock, swap, reboot, accounting and syslog calls Docker's
capability set already denies. clone3 gets ENOSYS, so that C libraries fall
back to clone, whose flags the filter can see. System calls of another ABI
(32-bit x86, x32) are refused outright: their numbers differ, a deny list
written for one ABI would let them through.

`filter_program()` builds the classic BPF program (pure); builder._linux
installs it after no_new_privs, just before exec.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["DENIED", "filter_program", "supported"]

# x86_64 system call numbers.
DENIED = {
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "userfaultfd": 323,
    "perf_event_open": 298, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "kexec_load": 246, "kexec_file_load": 320, "unshare": 272, "setns": 308, "pivot_root": 155,
    "mount": 165, "umount2": 166, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "open_by_handle_at": 304, "name_to_handle_at": 303,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "swapon": 167, "swapoff": 168,
    "reboot": 169, "acct": 163, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159, "syslog": 103, "lookup_dcookie": 212, "quotactl": 179, "iopl": 172, "ioperm": 173,
}  # fmt: skip
_CLONE, _CLONE3 = 56, 435
_CLONE_NEWUSER = 0x10000000
_X32_BIT = 0x40000000
_AUDIT_ARCH_X86_64 = 0xC000003E

# Classic BPF, as seccomp reads it: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16


def supported() -> bool:
    """Whether this machine's ABI is the one the deny list is written for."""
    return os.uname().machine == "x86_64"


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def filter_program() -> bytes:
    """The filter's instructions, packed; see the module docstring for what it refuses."""
    eperm = _RET_ERRNO | errno.EPERM
    denied = sorted(set(DENIED.values()))
    tail = [
        _insn(_RET_K, _RET_ALLOW),
        _insn(_RET_K, eperm),  # deny: -1 from the end
        _insn(_RET_K, _RET_ERRNO | errno.ENOSYS),  # clone3: -0 from the end
    ]
    # Each check jumps forward to "deny" or falls through; offsets count instructions skipped.
    checks: list[tuple[int, int, str]] = []  # (code, k, target)
    checks.append((_JGE_K, _X32_BIT, "deny"))
    checks.append((_JEQ_K, _CLONE3, "enosys"))
    checks += [(_JEQ_K, nr, "deny") for nr in denied]
    body: list[bytes] = []
    count = len(checks)
    # after the checks: clone's flags (3 instructions), then the tail
    for index, (code, k, target) in enumerate(checks):
        remaining = count - index - 1  # checks after this one
        to_allow = remaining + 3  # the clone block comes before the tail
        skip = to_allow + (1 if target == "deny" else 2)
        body.append(_insn(code, k, jt=skip, jf=0))
    clone_block = [
        _insn(_JEQ_K, _CLONE, jt=0, jf=2),  # not clone: to allow
        _insn(_LD_W_ABS, _OFFSET_ARG0),  # its flags (low 32 bits)
        _insn(_JSET_K, _CLONE_NEWUSER, jt=1, jf=0),  # a new user namespace: to deny
    ]
    head = [
        _insn(_LD_W_ABS, _OFFSET_ARCH),
        _insn(_JEQ_K, _AUDIT_ARCH_X86_64, jt=1, jf=0),
        _insn(_RET_K, _RET_ERRNO | errno.ENOSYS),  # another ABI
        _insn(_LD_W_ABS, _OFFSET_NR),
    ]
    return b"".join(head + body + clone_block + tail)
