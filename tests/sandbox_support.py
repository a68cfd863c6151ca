"""
Payloads for the sandbox tests: each one returns something only if it gets through.

``ESCAPES`` run with the language layer on and must be refused by it (not by
the OS layer). ``BREACHES`` run with the language layer switched off (full
builtins; os, socket, subprocess, ctypes, mmap ... imported before
confinement) and must be denied by the OS layer; ``parent`` is the host's pid.
System call numbers are x86_64's.
"""

from __future__ import annotations

_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _checked(call: str) -> str:
    """A libc call through ctypes that raises OSError when it fails."""
    return (_LIBC + f"r = {call}\nif r != 0:\n    raise OSError(ctypes.get_errno(), 'denied')\n"
            "_return('BREACH')")


def _eperm(call: str) -> str:
    """A raw system call that must fail with EPERM (the seccomp answer), else 'BREACH'."""
    return (_LIBC + "libc.syscall.restype = ctypes.c_long\n"
            f"r = {call}\nif r == -1 and ctypes.get_errno() == 1:\n"
            "    raise PermissionError(1, 'denied')\n_return(['BREACH', r, ctypes.get_errno()])")


ESCAPES: list[str] = [
    # subclass walks
    "_return(().__class__.__bases__[0].__subclasses__())",
    "_return([].__class__.__mro__[1].__subclasses__())",
    "_return(str.mro()[-1].__subclasses__())",
    "_return(object.__subclasses__())",
    "_return([x for x in ().__class__.__bases__])",
    "lst = []\n_return(lst.__class__.__base__.__subclasses__())",
    # __globals__ and friends
    "def f(): pass\n_return(f.__globals__)",
    "_return((lambda: 0).__globals__)",
    "_return((lambda: 0).__code__)",
    "f = lambda: None\n_return(f.__closure__)",
    "_return(sorted.__globals__['__builtins__'])",
    "_return(random.seed.__globals__)",
    "_return(len.__self__)",
    "_return(math.sqrt.__self__)",
    "x = [].append\n_return(x.__self__)",
    "_return(_return.__self__)",
    "_return(dict.__dict__)",
    "_return(random.__dict__)",
    # frame walks through generators and tracebacks
    "def g():\n    yield 1\n_return(g().gi_frame.f_globals)",
    "def g():\n    yield 1\n_return(g().gi_frame.f_back)",
    "def g():\n    yield 1\n_return(g().gi_code.co_consts)",
    "g = (x for x in [1])\n_return(g.gi_frame.f_builtins)",
    "try:\n    1/0\nexcept Exception as e:\n    _return(e.__traceback__.tb_frame.f_globals)",
    "import sys\n_return(sys._getframe().f_back)",
    "async def f(): pass\n_return(f().cr_frame)",
    # format-string attribute access, string.Formatter
    "_return('{0.__class__.__base__}'.format(1))",
    "_return(str.format('{0.__class__}', 1))",
    "f = 'x'.format\n_return(f('{0.__class__}', 1))",
    "_return('{a.__class__}'.format_map({'a': 1}))",
    "import string\n_return(string.Formatter().format('{0.__class__}', 1))",
    "from string import Formatter\n_return(Formatter().format('{0.__class__}', 1))",
    "_return(f'{().__class__}')",
    # computed dunder names
    "_return(getattr((), '__cl' + 'ass__'))",
    "name = '__cl' + 'ass__'\n_return(vars(())[name])",
    "_return(dir(()))",
    # decorators and metaclasses
    "def deco(f):\n    return f.__code__\n@deco\ndef g(): pass\n_return(g)",
    "@_return\ndef g(): pass",
    "class Meta(type): pass\nclass A(metaclass=Meta): pass\n_return(A)",
    "class A: pass\n_return(A.__subclasses__())",
    # except*
    "try:\n    raise ExceptionGroup('g', [ValueError(1)])\n"
    "except* ValueError as eg:\n    _return(eg.exceptions[0].__traceback__)",
    # guard shadowing
    "_getattr_ = lambda o, n: o\n_return(().__class__)",
    "_getiter_ = iter\n_return(1)",
    "_write_ = lambda o: o\nmath.pi = 4\n_return(math.pi)",
    "_return(__builtins__)",
    "_return(_getattr_)",
    "x = _return\n_return(x.__self__)",
    # import, open, eval, exec, compile and other missing builtins
    "import os\n_return(os.listdir('/'))",
    "from os import system\n_return(system('id'))",
    "__import__('os')",
    "_return(open('/etc/passwd').read())",
    "with open('/etc/passwd') as f:\n    _return(f.read())",
    "_return(eval('1+1'))",
    "exec('_return(1)')",
    "_return(compile('1', 'x', 'eval'))",
    "_return(globals())",
    "_return(locals())",
    "_return(type(()).__bases__)",
    "_return(breakpoint())",
    "_return(input())",
    # writing to shared objects
    "math.pi = 4\n_return(math.pi)",
    "del math.pi\n_return(1)",
    "setattr(math, 'pi', 4)\n_return(math.pi)",
    # review: more frames, types and modules reached another way
    "def g():\n    yield 1\n_return(g().gi_yieldfrom)",
    "async def f():\n    yield 1\n_return(f().ag_frame)",
    "async def f(): pass\n_return(f().cr_await)",
    "_return(str.mro()[-1].__subclasses__())",
    "o = int.mro()[-1]\n_return(o.__subclasses__())",
    "_return(Exception.mro()[1].__subclasses__())",
    "try:\n    1/0\nexcept Exception as e:\n    _return(e.with_traceback(None).__traceback__)",
    "_return(random.Random)",
    "_return(random._inst)",
    "_return(random.seed.__self__)",
    "_return(random.seed.__func__.__globals__)",
    "_return(math.sqrt.__module__)",
    "_return(getattr(math, 'sqrt'))",
    "_return(vars(math))",
    "_return(type('A', (), {}))",
    "_return(type(1))",
    "_return(super())",
    "_return(next(iter([1])))",
    "_return('{0.real.__class__}'.format_map({0: 1}))",
    "f = str.format_map\n_return(f('{a.__class__}', {'a': 1}))",
    "_return(str.format_map('{a}', {'a': 1}))",
    "print('x', file=math)\n_return(printed)",
    "_print_ = None",
    "printed = 1",
    "_return(sorted([1], key=lambda x: x.__class__))",
    "x = [1]\n_return(x.__class__)",
    "_return([].__class__.__base__)",
    "_return(isinstance.__self__)",
    "_return(_return.__self__.__class__)",
    "def f(*, _getattr_=None): pass",
    "lambda _x: _x",
    "_return({**{'a': 1}}.__class__)",
    "_return(memoryview(b'x'))",
    "_return(bytearray(10))",
    "_return(pow(2, 10**9, 7))",
    "_return(hash(1))",
    "_return(id(1))",
    "raise SystemExit(0)",
]

BREACHES: list[str] = [
    # files
    "_return(open('/etc/passwd').read())",
    "import os\n_return(os.open('/etc/hostname', os.O_RDONLY))",
    "import os\n_return(os.listdir('/'))",
    "import os\n_return(os.stat('/etc/passwd').st_size)",
    "import os\n_return(os.open('/tmp/procpool-sandbox-breach', os.O_WRONLY | os.O_CREAT))",
    "import os\n_return(os.readlink('/proc/self/exe'))",
    "import os\nos.mkdir('/tmp/procpool-sandbox-breach-dir')\n_return('BREACH')",
    "import os\n_return(os.open('/proc/self/mem', os.O_RDWR))",
    "import os\nos.chdir('/tmp')\n_return('BREACH')",
    "import os\nos.chroot('/tmp')\n_return('BREACH')",
    "import ctypes\nctypes.CDLL('libuuid.so.1')\n_return('BREACH')",
    # sockets
    "import socket\nsocket.socket()\n_return('BREACH')",
    "import socket\nsocket.socket(socket.AF_UNIX)\n_return('BREACH')",
    "import socket\n_return(len(socket.socketpair()))",
    "import socket\nsocket.create_connection(('127.0.0.1', 5432), 1)\n_return('BREACH')",
    "import socket\n_return(socket.gethostbyname('localhost'))",
    # fork and exec
    "import os\n_return(os.fork())",
    "import subprocess\n_return(subprocess.run(['id'], capture_output=True).stdout.decode())",
    "import os\nos.execv('/bin/sh', ['sh', '-c', 'id'])",
    "import os\nr = os.system('true')\nif r != 0:\n    raise OSError(r, 'system')\n_return(r)",
    "import os\n_return(os.posix_spawn('/bin/true', ['true'], {}))",
    _checked("libc.syscall(57)"),  # raw fork
    # PROT_EXEC memory
    "import mmap\nmmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
    "_return('BREACH')",
    _checked("libc.mprotect(ctypes.c_void_p((ctypes.addressof("
             "ctypes.create_string_buffer(16384)) + 4095) & ~4095), 4096, 7)"),
    "import os\n_return(os.memfd_create('x'))",
    # threads
    "import threading\nthreading.Thread(target=print).start()\n_return('BREACH')",
    "import _thread\n_return(_thread.start_new_thread(print, ()))",
    # signalling the parent
    "import os\nos.kill(parent, 0)\n_return('BREACH')",
    "import os, signal\nos.kill(parent, signal.SIGCONT)\n_return('BREACH')",
    _checked("libc.ptrace(16, parent, 0, 0)"),  # PTRACE_ATTACH
    # raising limits
    "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1000, 1000))\n_return('BREACH')",
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n_return('BREACH')",
    "import os\nos.nice(-5)\n_return('BREACH')",
    # setuid, unshare and other privileged moves
    "import os\nos.setuid(0)\n_return(os.getuid())",
    "import os\nos.setgid(0)\n_return('BREACH')",
    "import os\nos.setresuid(0, 0, 0)\n_return('BREACH')",
    _checked("libc.unshare(0x10000000)"),  # CLONE_NEWUSER
    _checked("libc.unshare(0x40000000)"),  # CLONE_NEWNET
    "import os\nos.setsid()\n_return('BREACH')",
    "import fcntl\nfcntl.ioctl(0, 0x5412, b'x')\n_return('BREACH')",  # TIOCSTI
    "import os\n_return(os.dup(1))",
    "import os\n_return(os.pipe())",
    # a non-native (x32) system call number: killed, not answered
    _checked("libc.syscall(0x40000000 | 39)"),
    # review: files by other routes, /proc/self, raw system calls
    "import io\n_return(io.open('/etc/hostname').read())",
    "import os\n_return(os.open('/proc/self/cmdline', os.O_RDONLY))",
    "import os\n_return(os.open('/proc/self/environ', os.O_RDONLY))",
    "import os\n_return(os.listdir('/proc/self/fd'))",
    "import os\n_return(os.getcwd())",
    _eperm("libc.syscall(437, -100, b'/etc/passwd', ctypes.create_string_buffer(24), 24)"),
    _eperm("libc.syscall(332, -100, b'/etc/passwd', 0, 0x7ff, ctypes.create_string_buffer(256))"),
    _eperm("libc.syscall(21, b'/etc/passwd', 0)"),  # access
    _eperm("libc.syscall(101, 16, parent, 0, 0)"),  # ptrace(PTRACE_ATTACH)
    _eperm("libc.syscall(310, parent, 0, 1, 0, 1, 0)"),  # process_vm_readv
    _eperm("libc.syscall(157, 15, b'x', 0, 0, 0)"),  # prctl(PR_SET_NAME)
    _eperm("libc.syscall(157, 38, 0, 0, 0, 0)"),  # prctl(PR_SET_NO_NEW_PRIVS)
    _eperm("libc.syscall(135, 0x0400000)"),  # personality(READ_IMPLIES_EXEC)
    _eperm("libc.syscall(62, parent, 9)"),  # kill(parent, SIGKILL)
    _eperm("libc.syscall(62, -1, 0)"),  # kill(-1)
    _eperm("libc.syscall(234, parent, parent, 9)"),  # tgkill
    _eperm("libc.syscall(434, parent, 0)"),  # pidfd_open
    _eperm("libc.syscall(302, 0, 0, 0, 0)"),  # prlimit64
    _eperm("libc.syscall(160, 0, ctypes.create_string_buffer(16))"),  # setrlimit
    _eperm("libc.syscall(319, b'x', 0)"),  # memfd_create
    _eperm("libc.syscall(323, 0)"),  # userfaultfd
    _eperm("libc.syscall(425, 8, ctypes.create_string_buffer(120))"),  # io_uring_setup
    _eperm("libc.syscall(321, 0, 0, 0)"),  # bpf
    _eperm("libc.syscall(250, 0, 0, 0, 0, 0)"),  # keyctl
    _eperm("libc.syscall(298, 0, 0, -1, -1, 0)"),  # perf_event_open
    _eperm("libc.syscall(53, 1, 1, 0, ctypes.create_string_buffer(8))"),  # socketpair
    _eperm("libc.syscall(22, ctypes.create_string_buffer(8))"),  # pipe
    _eperm("libc.syscall(290, 0, 0)"),  # eventfd2
    _eperm("libc.syscall(33, 1, 0)"),  # dup2 over stdin
    _eperm("libc.syscall(33, 0, 1)"),  # dup2 over stdout
    _eperm("libc.syscall(33, 0, 2)"),  # dup2 over stderr
    _eperm("libc.syscall(16, 0, 0x5412, b'x')"),  # ioctl(TIOCSTI) on 0, 1, 2
    _eperm("libc.syscall(16, 1, 0x5412, b'x')"),
    _eperm("libc.syscall(16, 2, 0x5412, b'x')"),
    _eperm("libc.syscall(72, 1, 1031, 1 << 20)"),  # fcntl(F_SETPIPE_SZ)
    _eperm("libc.syscall(56, 17, 0, 0, 0, 0)"),  # clone(SIGCHLD)
    _eperm("libc.syscall(56, 0x50f00, 0, 0, 0, 0)"),  # clone, thread flags
    _eperm("libc.syscall(58)"),  # vfork
    _checked("libc.syscall(435, 0, 0)"),  # clone3: ENOSYS
    _eperm("libc.syscall(9, 0, 4096, 7, 0x22, -1, 0)"),  # mmap RWX
    _eperm("libc.syscall(10, ctypes.addressof(ctypes.create_string_buffer(8192)) & ~4095, "
           "4096, 5)"),  # mprotect PROT_EXEC
    _eperm("libc.syscall(329, 0, 4096, 7, -1)"),  # pkey_mprotect
    _eperm("libc.syscall(28, 0, 4096, 100)"),  # madvise(MADV_HWPOISON)
    _eperm("libc.syscall(28, 0, 4096, 101)"),  # madvise(MADV_SOFT_OFFLINE)
    _eperm("libc.syscall(105, 0)"),  # setuid
    _eperm("libc.syscall(308, 0, 0)"),  # setns
    _eperm("libc.syscall(165, 0, b'/', 0, 0, 0)"),  # mount
    _eperm("libc.syscall(317, 1, 0, 0)"),  # seccomp(): a filter of its own
    _eperm("libc.syscall(444, 0, 0, 1)"),  # landlock_create_ruleset
    _eperm("libc.syscall(203, 0, 8, ctypes.byref(ctypes.c_ulong(1)))"),  # sched_setaffinity
    _eperm("libc.syscall(141, 0, 0, -20)"),  # setpriority
    _eperm("libc.syscall(35, ctypes.byref(ctypes.c_long(1)), 0)"),  # nanosleep
]
