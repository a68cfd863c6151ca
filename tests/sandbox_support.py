"""
Payloads for the sandbox tests: each one returns something only if it gets through.

``ESCAPES`` run with the language layer on and must be refused by it (not by
the OS layer). ``BREACHES`` run with the language layer switched off (full
builtins; os, socket, subprocess, ctypes, mmap ... imported before
confinement) and must be denied by the OS layer; ``parent`` is the host's pid.
"""

from __future__ import annotations

_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _checked(call: str) -> str:
    """A libc call through ctypes that raises OSError when it fails."""
    return (_LIBC + f"r = {call}\nif r != 0:\n    raise OSError(ctypes.get_errno(), 'denied')\n"
            "_return('BREACH')")


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
]
