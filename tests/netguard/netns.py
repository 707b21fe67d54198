"""Move the test process into a network namespace of its own, where only loopback exists (Linux).

Called by the root ``conftest.py`` before pytest starts any thread or child, so every child inherits it: notebook
kernels, ``accelerate`` workers, ``transformers serve``, a child started with ``python -I``/``-E`` or an empty
environment, code that uses ``_socket`` or raw system calls, C libraries, DNS. In the namespace there is no route
off the machine (a connect fails with ``ENETUNREACH`` at once); ``lo`` is brought up so loopback servers work.

How: ``unshare(CLONE_NEWNET)`` as root; otherwise ``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` with the current uid and
gid mapped to themselves (unprivileged user namespaces), then ``lo`` up by ``ioctl(SIOCSIFFLAGS)`` while this process
still holds the namespace's capabilities.

Limits: where neither call is allowed (a container without ``CAP_SYS_ADMIN`` and with user namespaces off, macOS,
Windows), :func:`isolate` returns why and the run relies on the Python-level guard of ``sitecustomize.py`` alone, whose
own limits its docstring states. ``RAGCOURSE_NETNS=off`` skips the namespace (e.g. to debug a test with a proxy).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import sys
import threading

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1


def interfaces() -> list[str]:
    """The network interfaces this process sees (``/sys/class/net`` follows the process's network namespace)."""
    return [name for _, name in socket.if_nameindex()]


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def isolate() -> str:
    """Enter a loopback-only network namespace; returns ``"isolated"`` or why not (a short reason)."""
    if os.environ.get("RAGCOURSE_NETNS", "").lower() in ("off", "0", "no"):
        return "off (RAGCOURSE_NETNS=off)"
    if not sys.platform.startswith("linux"):
        return f"not available on {sys.platform}"
    if interfaces() == ["lo"]:
        return "isolated"  # already inside one (a child of an isolated run, or started under `unshare -n`)
    if threading.active_count() > 1:
        return "not entered: threads were already running"
    try:
        if os.geteuid() == 0:
            _unshare(CLONE_NEWNET)
        else:
            uid, gid = os.getuid(), os.getgid()
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _loopback_up()
    except OSError as err:
        return f"not allowed here ({err.strerror or err}): the Python-level guard alone"
    seen = interfaces()
    return "isolated" if seen == ["lo"] else f"entered, but it shows {seen}"
