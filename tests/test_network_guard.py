"""The test run makes no network connection beyond loopback: in pytest, in child processes and in kernels.

One test per route out (issue 17, row 12). Two guards stand in the way (conftest.py): the network namespace
(tests/netguard/netns.py), which nothing gets past, and the Python-level guard (tests/netguard/sitecustomize.py),
which these tests check on its own in-process routes. Routes only the namespace closes (a child started with
``python -I`` or an empty environment) are expected failures where the machine allows no namespace: the guard's
documented limit, reported as such.
"""

import _socket
import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "netguard"))
import netns  # noqa: E402

STATE = os.environ.get("RAGCOURSE_NETNS_STATE", "unknown")
needs_namespace = pytest.mark.xfail(
    STATE != "isolated",
    strict=True,
    reason=f"no network namespace here ({STATE}): the Python guard cannot reach this route",
)

OUTSIDE = ("192.0.2.1", 80)  # TEST-NET-1: never routed, so a leak would hang, not succeed


@pytest.fixture
def private_log(tmp_path, monkeypatch):
    log = tmp_path / "net.log"
    monkeypatch.setenv("RAGCOURSE_NETGUARD_LOG", str(log))  # keep these deliberate attempts out of the session log
    return log


def test_guard_blocks_in_process(private_log):
    with pytest.raises(ConnectionRefusedError, match="network access blocked"):
        socket.create_connection(OUTSIDE, timeout=1)
    with pytest.raises(ConnectionRefusedError, match="name lookup"):
        socket.getaddrinfo("huggingface.co", 443)
    assert "192.0.2.1" in private_log.read_text()


@pytest.mark.parametrize(
    "route",
    ["_socket connect", "UDP sendto", "_socket UDP sendto", "gethostbyname", "_socket getaddrinfo", "getnameinfo"],
)
def test_guard_blocks_every_python_route(private_log, route):
    attempts = {
        "_socket connect": lambda: _socket.socket().connect(OUTSIDE),
        "UDP sendto": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53)),
        "_socket UDP sendto": lambda: _socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53)),
        "gethostbyname": lambda: socket.gethostbyname("pypi.org"),
        "_socket getaddrinfo": lambda: _socket.getaddrinfo("huggingface.co", 443),
        "getnameinfo": lambda: socket.getnameinfo(OUTSIDE, 0),
    }
    with pytest.raises(ConnectionRefusedError, match="network access blocked"):
        attempts[route]()
    assert private_log.read_text().count("--- pid") == 1


def test_udp_and_names_on_loopback_still_work(private_log):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"ping", s.getsockname())
        assert s.recv(8) == b"ping"
    assert socket.getaddrinfo("localhost", 80)
    socket.getfqdn(socket.gethostname())  # torch.distributed's rendezvous does this: this machine's own name is local
    assert not private_log.exists()


@needs_namespace
def test_run_is_in_a_loopback_only_namespace():
    assert netns.interfaces() == ["lo"]


CHILD = (
    "import socket\n"
    "s = socket.socket(); s.settimeout(2); print('connect', s.connect_ex(('192.0.2.1', 80)))\n"
    "try:\n    socket.getaddrinfo('pypi.org', 443); print('dns LEAK')\n"
    "except OSError as e:\n    print('dns failed', type(e).__name__)\n"
)


@needs_namespace
@pytest.mark.parametrize("how", ["python -I", "python -E", "empty environment"])
def test_children_that_skip_the_python_guard_cannot_leave(how):
    args = {
        "python -I": ([sys.executable, "-I", "-c", CHILD], os.environ.copy()),
        "python -E": ([sys.executable, "-E", "-c", CHILD], os.environ.copy()),
        "empty environment": ([sys.executable, "-c", CHILD], {}),
    }[how]
    res = subprocess.run(args[0], env=args[1], capture_output=True, text=True, timeout=60)
    assert (
        "network access blocked" not in res.stdout + res.stderr
    )  # the Python guard was not loaded: the namespace held
    code = int(res.stdout.split("connect ")[1].split()[0])
    assert code != 0 and "dns failed" in res.stdout, res.stdout + res.stderr


def test_loopback_still_works(private_log):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()
    assert not private_log.exists()


def test_guard_reaches_child_processes(private_log):
    code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode != 0 and "network access blocked" in res.stderr


def test_guard_reaches_notebook_kernels(private_log):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        reply = kc.execute_interactive(
            "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=1); print('LEAK')\n"
            "except ConnectionRefusedError as e:\n    print('BLOCKED', e)",
            timeout=60,
            output_hook=lambda msg: outputs.append(msg),
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert "BLOCKED" in text and "LEAK" not in text
    assert reply["content"]["status"] == "ok", reply["content"]  # the cell ran to its end: the block was caught


outputs: list = []


def test_hub_is_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "OPENAI_API_KEY" not in os.environ
