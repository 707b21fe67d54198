"""Loaded by every Python process of the test run (pytest, notebook kernels, accelerate workers).

When ``RAGCOURSE_NETGUARD=1`` it refuses any socket connection or name lookup that leaves this machine,
and appends each attempt to ``$RAGCOURSE_NETGUARD_LOG`` so the test session can fail on it afterwards.
"""

import os

if os.environ.get("RAGCOURSE_NETGUARD") == "1":
    import ipaddress
    import socket
    import traceback

    class NetworkBlocked(ConnectionRefusedError):
        """A connection beyond loopback was attempted during the tests."""

    _LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}

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

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def _check(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if not _is_local(address[0]):
                _record(f"connect to {address!r}")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            _record(f"name lookup of {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    socket.NetworkBlocked = NetworkBlocked
