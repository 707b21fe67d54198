"""Started with this folder on ``PYTHONPATH`` and ``RAGCOURSE_BENCH_BNB_SCALAR=1``, every Python process (a benchmark
worker, a notebook kernel of ``course_run.py --isa avx2``) dequantizes bitsandbytes' 4-bit weights with the library's
scalar loop, as it does on a CPU without AVX-512 (issue 20; ``benchmarks/cpu_common.py`` explains why no environment
variable can ask for that).

The switch happens when ``bitsandbytes.cextension`` (which opens the native library) has been imported; nothing else
changes, and the dequantized values are the same.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any

BNB_SCALAR_ENV = "RAGCOURSE_BENCH_BNB_SCALAR"
BNB_DEQUANT = [f"cdequantize_blockwise_cpu_{q}_{d}" for q in ("nf4", "fp4") for d in ("fp32", "bf16", "fp16")]
TARGET = "bitsandbytes.cextension"


def force_bnb_scalar_dequant(lib: Any = None) -> int:
    """Route bitsandbytes' CPU 4-bit dequantization to its scalar loop; returns how many functions were wrapped.

    ``dequantizeBlockwise4bitCpu`` takes its AVX-512 branch only when a row holds a multiple of 16 values; its scalar
    branch walks the flat buffer, so calling it with the same weights as rows of 2 values gives the same result.
    """
    if lib is None:
        from bitsandbytes.cextension import lib

    def scalar(original: Any) -> Any:
        def call(A: Any, absmax: Any, out: Any, blocksize: Any, m: Any, n: Any) -> Any:
            return original(A, absmax, out, blocksize, ctypes.c_longlong(m.value * n.value // 2), ctypes.c_longlong(2))

        call.scalar = True  # type: ignore[attr-defined]
        return call

    wrapped = 0
    for name in BNB_DEQUANT:
        fn = getattr(lib, name)
        if not getattr(fn, "scalar", False):
            setattr(lib, name, scalar(fn))  # an instance attribute wins over the library's __getattr__
            wrapped += 1
    return wrapped


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``bitsandbytes.cextension`` as usual, and wraps its library once the module has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            force_bnb_scalar_dequant(module.lib)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get(BNB_SCALAR_ENV) == "1" and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport())
