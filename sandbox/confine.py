"""
The confinement layer: what a sandboxed child does to itself before it reads input.

Runs inside the child, after its imports, in this order: close descriptors
above 2; rlimits; drop to an unprivileged uid/gid when started as root;
optional namespaces; drop every capability (a child that stays root);
no_new_privs; Landlock where available; the seccomp allowlist.
``pyseccomp`` is imported with this module, since afterwards the child can
open no file. Only the standard library and ``pyseccomp`` are used.

    >>> from sandbox.confine import Limits, confine
    >>> layers = confine(Limits(cpu=2, memory=256 << 20))   # doctest: +SKIP
    >>> layers["seccomp"]
    'errno'
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds
if TYPE_CHECKING:
    from typing import Any

try:  # imported now: once confined, the child can open no file
    import pyseccomp as _sc
    _SECCOMP_MISSING = ""
except Exception as e:  # ImportError, or pyseccomp's RuntimeError "Unable to find libseccomp"
    _sc = None
    _SECCOMP_MISSING = f"{type(e).__name__}: {e}"

__all__ = ["ConfinementError", "Limits", "confine", "ALLOWED_SYSCALLS"]

# What pure computation, exceptions and MemoryError need once the child is
# running (measured on this machine kind); read/write/mmap/mprotect are
# added with argument checks below.
ALLOWED_SYSCALLS = (
    "brk", "munmap", "mremap", "futex", "rt_sigreturn", "rt_sigprocmask",
    "exit", "exit_group", "getrandom", "clock_gettime", "gettimeofday",
)

# madvise only with advice the allocator uses: NORMAL, RANDOM, SEQUENTIAL,
# WILLNEED, DONTNEED, FREE, HUGEPAGE, NOHUGEPAGE. Never HWPOISON or
# SOFT_OFFLINE, which take physical pages away from the whole machine for a
# child that kept root's capabilities.
ALLOWED_MADVISE = (0, 1, 2, 3, 4, 8, 14, 15)

_PROT_EXEC = 0x4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
# landlock_create_ruleset, landlock_add_rule (unused), landlock_restrict_self
_LANDLOCK_SYSCALLS = {"x86_64": (444, 446), "aarch64": (444, 446)}


class ConfinementError(Exception):
    """A confinement layer that is not optional could not be set up."""


class Limits:
    """What the child confines itself to; sent by the host as JSON in argv."""

    def __init__(self, cpu: int = 2, memory: int = 256 << 20, uid: int | None = None,
                 gid: int | None = None, seccomp: bool = True, seccomp_kill: bool = False,
                 landlock: bool = True, namespaces: bool = False, recursion: int = 400) -> None:
        self.cpu, self.memory, self.uid, self.gid = cpu, memory, uid, gid
        self.seccomp, self.seccomp_kill = seccomp, seccomp_kill
        self.landlock, self.namespaces, self.recursion = landlock, namespaces, recursion


def _close_descriptors() -> None:
    # Up to the hard limit of open files, however high the operator raised it.
    os.closerange(3, max(1 << 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _set_rlimits(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu, limits.cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _drop_privileges(limits: Limits) -> str:
    if os.geteuid() != 0 or limits.uid is None:
        return "unchanged"
    gid = limits.gid if limits.gid is not None else limits.uid
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(limits.uid, limits.uid, limits.uid)
    if os.getresuid() != (limits.uid,) * 3 or os.getresgid() != (gid,) * 3:
        raise ConfinementError("could not drop to the sandbox uid/gid")
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    return f"{limits.uid}:{gid}"


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long


def _libc() -> Any:
    return _LIBC


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> str:
    """
    A child that stays root (the sandbox user is root) gives up every capability:
    the system calls seccomp allows then act as for any other user.
    """
    if os.geteuid() != 0:
        return "none held"
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc().capset(ctypes.byref(header), data) != 0:
        raise ConfinementError(f"capabilities: {os.strerror(ctypes.get_errno())}")
    return "dropped"


def _unshare() -> str:
    flags = _CLONE_NEWNET | _CLONE_NEWIPC
    if os.geteuid() != 0:
        flags |= _CLONE_NEWUSER
    if _libc().unshare(flags) != 0:
        return f"unavailable ({os.strerror(ctypes.get_errno())})"
    return "net,ipc" + (",user" if flags & _CLONE_NEWUSER else "")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def _landlock() -> str:
    """Deny every filesystem (and, where known, network and signal) access the ABI knows."""
    numbers = _LANDLOCK_SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return "unavailable (architecture)"
    create, restrict = numbers
    libc = _libc()
    abi = libc.syscall(create, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return f"unavailable ({os.strerror(ctypes.get_errno())})"
    fs_bits = {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)
    attr = _RulesetAttr((1 << fs_bits) - 1, 0b11 if abi >= 4 else 0,
                        0b11 if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    fd = libc.syscall(create, ctypes.byref(attr), size, 0)
    if fd < 0:
        return f"unavailable ({os.strerror(ctypes.get_errno())})"
    try:
        if libc.syscall(restrict, fd, 0) != 0:
            return f"unavailable ({os.strerror(ctypes.get_errno())})"
    finally:
        os.close(fd)
    return f"abi {abi}"


def _no_new_privs() -> None:
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")


def _seccomp(limits: Limits) -> str:
    sc = _sc
    if sc is None:
        raise ConfinementError(f"seccomp: {_SECCOMP_MISSING}")
    deny = sc.KILL_PROCESS if limits.seccomp_kill else sc.ERRNO(errno.EPERM)
    try:
        f = sc.SyscallFilter(deny)
        f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        for name in ALLOWED_SYSCALLS:
            f.add_rule(sc.ALLOW, name)
        f.add_rule(sc.ALLOW, "read", sc.Arg(0, sc.EQ, 0))
        f.add_rule(sc.ALLOW, "write", sc.Arg(0, sc.EQ, 1))
        f.add_rule(sc.ALLOW, "write", sc.Arg(0, sc.EQ, 2))
        # Closing stdout once the reply is written (nothing can open a new fd 1).
        f.add_rule(sc.ALLOW, "close", sc.Arg(0, sc.EQ, 1))
        for advice in ALLOWED_MADVISE:
            f.add_rule(sc.ALLOW, "madvise", sc.Arg(2, sc.EQ, advice))
        f.add_rule(sc.ALLOW, "mmap", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
        f.add_rule(sc.ALLOW, "mprotect", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
        # glibc falls back from clone3 to clone only on ENOSYS; clone is denied.
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        f.load()
    except OSError as e:
        raise ConfinementError(f"seccomp: {e}")
    return "kill" if limits.seccomp_kill else "errno"


def confine(limits: Limits) -> dict[str, str]:
    """
    Confine the calling process for good; return which layers are in force.

    Raises :class:`ConfinementError` when a required layer (rlimits, the uid
    drop, no_new_privs, seccomp) fails; Landlock and namespaces are optional
    and reported as unavailable. ``Limits(seccomp=False)`` behaves as if
    libseccomp were missing (used to test the fail-closed path).
    """
    layers: dict[str, str] = {}
    _close_descriptors()
    try:
        _set_rlimits(limits)
        layers["uid"] = _drop_privileges(limits)
    except OSError as e:
        raise ConfinementError(f"rlimits or uid drop: {e}")
    if limits.namespaces:
        layers["namespaces"] = _unshare()
    layers["capabilities"] = _drop_capabilities()
    _no_new_privs()
    layers["no_new_privs"] = "1"
    if limits.landlock:
        layers["landlock"] = _landlock()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
    except OSError as e:
        raise ConfinementError(f"rlimits: {e}")
    if not limits.seccomp:
        raise ConfinementError("seccomp: switched off (libseccomp treated as missing)")
    layers["seccomp"] = _seccomp(limits)
    sys.setrecursionlimit(limits.recursion)
    return layers
