"""The test run makes no network connection beyond loopback: in pytest, in child processes and in kernels."""

import os
import socket
import subprocess
import sys

import pytest

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
            "except ConnectionRefusedError as e:\n    print('BLOCKED', e)", timeout=60,
            output_hook=lambda msg: outputs.append(msg))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert "BLOCKED" in text and "LEAK" not in text


outputs: list = []


def test_hub_is_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "OPENAI_API_KEY" not in os.environ
