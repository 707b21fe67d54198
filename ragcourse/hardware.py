"""Hardware detection in one place (notebook 00, "Check the runtime")."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """What this runtime offers; every "which dtype / which optimizer" choice reads this."""

    device: str  # "cuda" | "mps" | "cpu"
    gpu_name: str | None
    compute_capability: tuple[int, int] | None
    bf16: bool
    gpu_total_gb: float | None
    gpu_free_gb: float | None
    cpu_cores: int
    torch_threads: int
    ram_gb: float
    in_colab: bool

    def summary(self) -> str:
        if self.device == "cuda":
            cc = ".".join(map(str, self.compute_capability or ()))
            return (f"GPU {self.gpu_name} (compute {cc}, {self.gpu_free_gb:.1f}/{self.gpu_total_gb:.1f} GB free, "
                    f"bf16={'yes' if self.bf16 else 'no'}), {self.cpu_cores} CPU cores")
        return f"{self.device.upper()} only: {self.cpu_cores} cores, torch threads {self.torch_threads}, RAM {self.ram_gb:.0f} GB"


def in_colab() -> bool:
    import sys

    return "google.colab" in sys.modules  # Colab imports it at kernel start


NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere (A100, A10G, RTX 30xx) and newer; a T4 is 7.5, a V100 7.0


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """bf16 in hardware: compute capability 8.0 or newer (notebook 00, "Check the runtime").

    Not ``torch.cuda.is_bf16_supported()``: it returns True on a T4 too, where bf16 is emulated and slow.
    """
    return capability is not None and tuple(capability) >= NATIVE_BF16_CAPABILITY


def detect_hardware() -> Hardware:
    """Look at CUDA, compute capability, bf16 support, free memory and CPU threads."""
    import psutil
    import torch

    cores = os.cpu_count() or 1
    ram_gb = psutil.virtual_memory().total / 2**30
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        capability = tuple(torch.cuda.get_device_capability(0))
        return Hardware(
            device="cuda",
            gpu_name=torch.cuda.get_device_name(0),
            compute_capability=capability,
            bf16=native_bf16(capability),
            gpu_total_gb=total / 2**30,
            gpu_free_gb=free / 2**30,
            cpu_cores=cores,
            torch_threads=torch.get_num_threads(),
            ram_gb=ram_gb,
            in_colab=in_colab(),
        )
    device = "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
    return Hardware(device, None, None, False, None, None, cores, torch.get_num_threads(), ram_gb, in_colab())


def compute_dtype_name(hw: Hardware, requested: str = "auto") -> str:
    """bf16 where the GPU has it natively (compute capability 8.0+), fp16 on older GPUs (T4), fp32 on CPU;
    an explicit choice wins."""
    if requested != "auto":
        return requested
    if hw.device == "cuda":
        return "bfloat16" if hw.bf16 else "float16"
    return "float32"


def torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}: use auto, float32, bfloat16 or float16.") from None


# Torch threads when the config leaves ``training.torch_threads`` null: None keeps torch's own default (one per core).
# One place for this choice; benchmarks/shared_cpu.py measures each setting alone and beside a busy process.
DEFAULT_TORCH_THREADS: int | None = None  # runtime.start applies it when training.torch_threads is null


def set_torch_threads(n: int | None) -> int:
    """Set torch's intra-op threads (None keeps the default) and return the number in use."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


BUSY_CPU_PERCENT = 25.0  # other processes using more than this share of all cores: training here slows down a lot
BUSY_PROBE_SECONDS = 1.0


def cpu_busy_percent(seconds: float = BUSY_PROBE_SECONDS) -> float:
    """How busy *other* processes keep the CPU, in percent of all cores, sampled over ``seconds`` (notebook 00,
    "Check the runtime"). This process's own use is left out, so a kernel that is busy itself does not count."""
    import time

    import psutil

    me = psutil.Process()
    psutil.cpu_percent(None)
    me.cpu_percent(None)
    time.sleep(seconds)
    everything = psutil.cpu_percent(None)  # all processes, as a share of all cores
    mine = me.cpu_percent(None) / (psutil.cpu_count() or 1)  # this process, 100 per busy core
    return max(0.0, everything - mine)


def busy_cpu_warning(busy_percent: float, hw: Hardware) -> str | None:
    """The sentence notebook 00 prints when other processes already load the CPU this course trains on, else None.

    Two processes computing on the same cores each get far less than half of them: benchmarks/shared_cpu.py measures a
    training step and a generation alone and beside a second busy torch process.
    """
    if hw.device != "cpu" or busy_percent <= BUSY_CPU_PERCENT:
        return None
    fix = "close the other notebook kernel or program" + (
        "" if hw.torch_threads <= 1 else ", or set `training.torch_threads: 1` in your config (one core each)")
    return (f"Warning: other processes already keep this CPU {busy_percent:.0f}% busy, so training and generation "
            f"here can run several times slower: {fix}.")


def auto_preset(hw: Hardware | None = None) -> str:
    """The preset that fits this runtime: by GPU memory, or ``cpu-smoke`` without a GPU."""
    hw = hw or detect_hardware()
    if hw.device != "cuda" or hw.gpu_total_gb is None:
        return "cpu-smoke"
    if hw.gpu_total_gb >= 70:
        return "gpu-80gb"
    if hw.gpu_total_gb >= 20 and hw.bf16:
        return "gpu-24gb"
    return "colab-t4"
