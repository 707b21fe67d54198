"""Loaded by every Python process of the test run (pytest, notebook kernels, accelerate workers).

When ``RAGCOURSE_NETGUARD=1`` it refuses any connection, datagram or name lookup that leaves this machine, and appends
each attempt to ``$RAGCOURSE_NETGUARD_LOG`` so the test session can fail on it afterwards.

This is the second line. The first is the network namespace the root ``conftest.py`` enters (``netns.py``): there no
route leaves the machine, whatever the code does. Where the machine does not allow one, this guard is all there is,
and it covers only what Python code reaches through the ``socket`` and ``_socket`` modules:

- covered: TCP/UDP ``connect``/``connect_ex``, UDP ``sendto``/``sendmsg``, name lookups (``getaddrinfo``,
  ``gethostbyname[_ex]``, ``gethostbyaddr``, ``getnameinfo``), in ``socket`` and in ``_socket`` (its ``socket`` class
  is replaced by a guarded subclass), in this process and in every child that keeps ``PYTHONPATH`` (kernels, workers);
- not covered: a child started with ``python -I``/``-E`` or without the environment (it never loads this file),
  C extensions and libraries that open sockets themselves (libcurl, gRPC, a DNS resolver in C), ``os.system``/
  non-Python programs, and objects created before this file ran. tests/test_network_guard.py checks each route.
"""

import os

if os.environ.get("RAGCOURSE_NETGUARD") == "1":
    import _socket
    import ipaddress
    import socket
    import traceback

    class NetworkBlocked(ConnectionRefusedError):
        """A connection beyond loopback was attempted during the tests."""

    # This machine's own name too: torch.distributed looks it up (socket.getfqdn) and /etc/hosts answers it locally.
    _LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "", socket.gethostname()}
    _INET = (socket.AF_INET, socket.AF_INET6)

    def _is_local(host) -> bool:
        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode()
        host = str(host).strip("[]")
        if host in _LOCAL_NAMES:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False  # a name that needs DNS
        return ip.is_loopback or ip.is_unspecified

    def _record(what: str) -> None:
        log = os.environ.get("RAGCOURSE_NETGUARD_LOG")
        if log:
            stack = "".join(traceback.format_stack(limit=12)[:-2])
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"--- pid {os.getpid()}: {what}\n{stack}\n")
        raise NetworkBlocked(f"network access blocked during tests: {what}")

    def _check(sock, address, verb: str = "connect to") -> None:
        if sock.family in _INET and isinstance(address, tuple) and not _is_local(address[0]):
            _record(f"{verb} {address!r}")

    def _guard_methods(cls, base) -> None:
        """Guard ``cls``'s connect/connect_ex/sendto/sendmsg, calling ``base``'s originals."""
        connect, connect_ex, sendto, sendmsg = base.connect, base.connect_ex, base.sendto, base.sendmsg

        def g_connect(self, address):
            _check(self, address)
            return connect(self, address)

        def g_connect_ex(self, address):
            _check(self, address)
            return connect_ex(self, address)

        def g_sendto(self, data, *args):
            _check(self, args[-1] if args else None, "datagram to")
            return sendto(self, data, *args)

        def g_sendmsg(self, buffers, *args):
            if len(args) >= 3:
                _check(self, args[2], "datagram to")
            return sendmsg(self, buffers, *args)

        cls.connect, cls.connect_ex, cls.sendto, cls.sendmsg = g_connect, g_connect_ex, g_sendto, g_sendmsg

    def _guard_lookup(module, name: str, host_arg: int = 0) -> None:
        original = getattr(module, name, None)
        if original is None:
            return

        def lookup(*args, **kwargs):
            host = args[host_arg] if len(args) > host_arg else kwargs.get("host")
            if name == "getnameinfo" and isinstance(host, tuple):
                host = host[0]
            if not _is_local(host):
                _record(f"name lookup of {host!r} ({name})")
            return original(*args, **kwargs)

        setattr(module, name, lookup)

    _guard_methods(socket.socket, socket.socket)

    class _GuardedRawSocket(_socket.socket):
        """``_socket.socket`` for code that skips the ``socket`` module."""

    _guard_methods(_GuardedRawSocket, _socket.socket)
    _socket.socket = _socket.SocketType = _GuardedRawSocket
    for _module in (socket, _socket):
        for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
            _guard_lookup(_module, _name)
    socket.NetworkBlocked = NetworkBlocked
