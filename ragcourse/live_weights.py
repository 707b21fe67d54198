"""What a notebook kernel holds between cells: live model weights and large tensors (issue 31; notebook 02, section 4b).

The notebook tests (nbval; the hook in ``conftest.py``) run :func:`probe_json` in the notebook's own kernel after
every cell, silently (:func:`probe_kernel`). It finds every live ``nn.Module``
and tensor through the garbage collector (after a collection: what is still reachable), and counts

* **module bytes**: each unique tensor storage of every module's parameters and buffers once (tied weights, views
  and a ``PeftModel`` around its base are not counted twice), with bitsandbytes' quantization constants;
* **large tensors**: tensors of at least :data:`LARGE_TENSOR_BYTES` outside every module (recorded logits, a cached
  KV, an embedding matrix kept in a variable).

:func:`copies` expresses them in units of one copy of the preset's model (``memory.one_copy_bytes``), and
``memory.planned_live_bytes`` says what the memory plan allows each notebook to hold between cells.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

LARGE_TENSOR_BYTES = 1 << 20  # 1 MiB: a LoRA matrix or a few-token tensor is noise; a logit table or a weight is not
PROBE_EXPRESSION = "__import__('ragcourse.live_weights', fromlist=['probe_json']).probe_json()"


def _storage(t: Any) -> tuple[tuple[str, int], int] | None:
    """((device, address), bytes) of a tensor's storage; None for meta tensors and tensors without storage."""
    try:
        if t.device.type == "meta":
            return None
        s = t.untyped_storage()
        return (str(t.device), s.data_ptr()), s.nbytes()
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def _module_tensors(module: Any) -> list[Any]:
    """The module's own parameters and buffers, and the quantization constants bitsandbytes keeps beside a weight."""
    out = [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
    for t in list(out):
        state = getattr(t, "quant_state", None)
        if state is not None:
            inner = getattr(state, "state2", None)
            out += [
                x
                for x in (
                    getattr(state, "absmax", None),
                    getattr(state, "code", None),
                    getattr(state, "offset", None),
                    getattr(inner, "absmax", None),
                    getattr(inner, "code", None),
                )
                if x is not None and hasattr(x, "untyped_storage")
            ]
        scb = getattr(t, "SCB", None)
        if scb is not None and hasattr(scb, "untyped_storage"):
            out.append(scb)
    return out


def live_bytes(min_tensor_bytes: int = LARGE_TENSOR_BYTES, collect: bool = True, top: int = 6) -> dict[str, Any]:
    """Bytes held by live modules' weights and by large tensors outside them, in this process (see the module
    docstring).

    Nothing is imported: without torch already imported nothing can hold weights, and the answer is zero.
    """
    start = time.perf_counter()
    empty = {
        "module_bytes": 0,
        "large_tensor_bytes": 0,
        "by_device": {},
        "roots": [],
        "large_tensors": [],
        "modules": 0,
    }
    if "torch" not in sys.modules:
        return {**empty, "seconds": time.perf_counter() - start}
    import gc

    import torch

    if collect:
        gc.collect()
    import warnings

    modules, tensors = [], []
    module_type, tensor_type = torch.nn.Module, torch.Tensor
    with warnings.catch_warnings():  # isinstance on a deprecated alias (torch.distributed.reduce_op) warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, module_type):
                modules.append(obj)
            elif isinstance(obj, tensor_type):
                tensors.append(obj)
    owned: dict[tuple[str, int], int] = {}
    children: set[int] = set()
    for m in modules:
        children.update(id(c) for c in m._modules.values() if c is not None)
        for t in _module_tensors(m):
            found = _storage(t)
            if found:
                owned[found[0]] = found[1]
    by_device: dict[str, int] = {}
    for (device, _), n in owned.items():
        by_device[device] = by_device.get(device, 0) + n
    large: dict[tuple[str, int], tuple[int, str]] = {}
    for t in tensors:
        found = _storage(t)
        if found and found[0] not in owned and found[1] >= min_tensor_bytes:
            large[found[0]] = (found[1], f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}")
    roots = []
    for m in modules:
        if id(m) in children:
            continue
        mine: dict[tuple[str, int], int] = {}
        for sub in m.modules():
            for t in _module_tensors(sub):
                found = _storage(t)
                if found:
                    mine[found[0]] = found[1]
        if mine:
            roots.append((sum(mine.values()), type(m).__name__))
    roots.sort(reverse=True)
    largest = sorted(large.values(), reverse=True)
    return {
        "module_bytes": sum(owned.values()),
        "large_tensor_bytes": sum(n for n, _ in large.values()),
        "by_device": by_device,
        "modules": len(modules),
        "roots": [{"module": name, "bytes": n} for n, name in roots[:top]],
        "large_tensors": [{"tensor": what, "bytes": n} for n, what in largest[:top]],
        "seconds": time.perf_counter() - start,
    }


def rss_since_last_call() -> dict[str, int]:
    """This process's resident memory now and its high-water mark since the previous call (Linux; zeros elsewhere).

    The high-water mark is reset after reading (``/proc/self/clear_refs``), so a runner calling this after every cell
    sees each cell's own peak: the moment *inside* a cell when two models coexist, which no count between cells sees.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            fields = {
                line.split(":")[0]: int(line.split()[1]) * 1024
                for line in status
                if line.startswith(("VmRSS:", "VmHWM:"))
            }
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as clear:
            clear.write("5")
    except (OSError, ValueError, IndexError):
        return {"rss_bytes": 0, "peak_rss_bytes": 0}
    return {"rss_bytes": fields.get("VmRSS", 0), "peak_rss_bytes": fields.get("VmHWM", 0)}


def probe_json() -> str:
    """:func:`live_bytes` and :func:`rss_since_last_call` as JSON: what a runner evaluates in the kernel after every
    cell (``user_expressions``, no output)."""
    return json.dumps({**live_bytes(), **rss_since_last_call()})


def read_probe_reply(reply: dict[str, Any]) -> dict[str, Any] | None:
    """The probe's result from a kernel's ``execute_reply`` (``user_expressions["live"]``), or None if it failed."""
    import ast

    value = reply.get("content", {}).get("user_expressions", {}).get("live", {})
    if value.get("status") != "ok":
        return None
    return json.loads(ast.literal_eval(value["data"]["text/plain"]))


def probe_kernel(kc: Any, timeout: float = 120) -> dict[str, Any] | None:
    """Run the probe in the kernel behind the blocking client ``kc`` (jupyter_client) and return its result.

    ``silent=True``: no execution count, no history, nothing on the notebook's output; the runner ignores messages
    whose parent is not its own cell (nbval and nbclient both do).
    """
    msg_id = kc.execute("", silent=True, store_history=False, user_expressions={"live": PROBE_EXPRESSION})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.1))
        if msg["parent_header"].get("msg_id") == msg_id:
            return read_probe_reply(msg)
    return None


def copies(record: dict[str, Any], one_copy_bytes: int) -> float:
    """Live module weights plus large tensors, in copies of the preset's model."""
    return (record["module_bytes"] + record["large_tensor_bytes"]) / one_copy_bytes
