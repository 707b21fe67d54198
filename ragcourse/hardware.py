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
    cpu_isa: str = "unknown"  # the kernel set torch runs on this CPU (``cpu_kernels``): AVX512, AVX2, ...
    cpu_bf16: bool = False  # bf16 matrix instructions torch can use (AVX512-BF16 or AMX)

    def summary(self) -> str:
        if self.device == "cuda":
            cc = ".".join(map(str, self.compute_capability or ()))
            return (
                f"GPU {self.gpu_name} (compute {cc}, {self.gpu_free_gb:.1f}/{self.gpu_total_gb:.1f} GB free, "
                f"bf16={'yes' if self.bf16 else 'no'}), {self.cpu_cores} CPU cores"
            )
        return (
            f"{self.device.upper()} only: {self.cpu_cores} cores ({self.cpu_isa} kernels, "
            f"bf16 {'in hardware' if self.cpu_bf16 else 'emulated'}), torch threads {self.torch_threads}, "
            f"RAM {self.ram_gb:.0f} GB"
        )


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
    kernels = cpu_kernels()
    return Hardware(
        device,
        None,
        None,
        False,
        None,
        None,
        cores,
        torch.get_num_threads(),
        ram_gb,
        in_colab(),
        cpu_isa=kernels.isa,
        cpu_bf16=kernels.bf16,
    )


# -- the CPU: which kernels it gives torch, and what the course runs on it (issue 20) ----------------------------

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware; without them bf16 is emulated, slowly


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``); empty where there is no such file."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@dataclass(frozen=True)
class CpuKernels:
    """What torch computes with on this CPU: its vector kernel set and whether bf16 matmuls run in hardware."""

    isa: str  # torch.backends.cpu.get_cpu_capability(): AVX512, AVX2, DEFAULT... (ATEN_CPU_CAPABILITY lowers it)
    bf16: bool


def cpu_kernels(
    flags: frozenset[str] | None = None, capability: str | None = None, onednn_max_isa: str | None = None
) -> CpuKernels:
    """Torch's kernel set here, and bf16 in hardware: an AVX512-BF16 or AMX flag, AVX-512 kernels in use, and oneDNN
    (torch's bf16 GEMM) not held below them by ``ONEDNN_MAX_CPU_ISA``. benchmarks/cpu_phases.py measures why it
    matters: emulated bf16 matmuls run at a small fraction of fp32's speed, real ones several times faster."""
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags() if flags is None else flags
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL") if onednn_max_isa is None else onednn_max_isa).upper()
    onednn_allows = onednn in ("ALL", "DEFAULT") or "BF16" in onednn or "AMX" in onednn
    bf16 = capability.upper().startswith("AVX512") and bool(flags & set(BF16_CPU_FLAGS)) and onednn_allows
    return CpuKernels(isa=capability.upper(), bf16=bf16)


def cpu_recipe(hw: Hardware, load_in_4bit: bool, four_bit_compute: str = "auto", model_dtype: str = "auto") -> str:
    """One line for notebook 00: how this CPU trains and answers.

    Every CPU computes in :func:`compute_dtype_name`'s fp32, even one with bf16 in hardware, where bf16 matmuls are
    faster (``benchmarks/results/cpu_phases.md``): a whole course run with the 4-bit layers and the answers in bf16
    (2026-12-02) left notebook 06's paired interval for tuned + RAG vs base + RAG touching zero, so the course's
    promise would hold on some CPUs and not others. ``model.torch_dtype: bfloat16`` opts in.
    """
    answer = compute_dtype_name(hw, model_dtype)
    train = (
        f"4-bit NF4 base, {compute_dtype_name(hw, four_bit_compute)} compute"
        if load_in_4bit
        else f"{compute_dtype_name(hw, model_dtype)} base"
    )
    weights = f"the 4-bit weights unpacked once to {answer}" if load_in_4bit else f"{answer} weights"
    return (
        f"This CPU runs torch's {hw.cpu_isa} kernels, bf16 {'in hardware' if hw.cpu_bf16 else 'emulated'}: "
        f"training on a {train}; answering with {weights}, {generation_batch('cpu')} prompts at a time; "
        f"{wait_sentence()}."
    )


# How many prompts ``models.generate`` answers at once. On a GPU 8 (the memory plan's evaluation phase counts on it).
# On a CPU, where every decoding step pays a fixed cost, the whole cpu-smoke test split (31 prompts) goes in one batch:
# the same greedy answers in less time (2026-12-02, 2 cores: 35 s instead of 49 s for the base model from unpacked
# weights, 53 s instead of 70 s for the adapter on the 4-bit base; the course:
# benchmarks/results/course_compare_cpu-smoke.md).
GENERATION_BATCH = {"cuda": 8, "cpu": 32}


def generation_batch(device: str) -> int:
    """:data:`GENERATION_BATCH` for a torch device type ("cuda", "cpu", "mps": Apple's GPU shares host memory like a
    CPU)."""
    return GENERATION_BATCH["cuda" if device == "cuda" else "cpu"]


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


# How OpenMP's idle threads wait between parallel regions. OpenMP reads it once, when torch loads, so
# ``import ragcourse`` sets it (unless the environment already chooses: OMP_WAIT_POLICY or GOMP_SPINCOUNT) before
# anything imports torch.
# libgomp, torch's OpenMP, spins about 300,000 rounds (a few ms) by default, then sleeps; OMP_WAIT_POLICY=PASSIVE sleeps
# at once. benchmarks/results/shared_cpu.md measures each: the long default spin collapses beside a second busy process;
# sleeping at once costs every one of the thousands of small parallel regions of an answer a wake-up, so it is slow
# alone; a short spin (GOMP_SPINCOUNT, a few tens of microseconds) was faster than PASSIVE alone in every measurement
# and ties it on the benchmark's summed cost, though training beside a busy process was slower (notebook 00's busy-CPU
# warning says how to switch to PASSIVE).
DEFAULT_GOMP_SPINCOUNT = "3000"


def apply_wait_policy(environ: "os._Environ[str] | dict[str, str] | None" = None) -> str:
    """Set ``GOMP_SPINCOUNT`` to the course default unless the user chose how threads wait; return
    :func:`wait_policy`."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = DEFAULT_GOMP_SPINCOUNT
    return wait_policy(environ)


def wait_policy(environ: "os._Environ[str] | dict[str, str] | None" = None) -> str:
    """How this process's OpenMP threads wait: ``PASSIVE``, ``ACTIVE``, ``GOMP_SPINCOUNT=N`` (libgomp reads a spin
    count before the policy) or ``DEFAULT`` (libgomp's own: spinning a few ms)."""
    environ = os.environ if environ is None else environ
    if environ.get("GOMP_SPINCOUNT"):
        return f"GOMP_SPINCOUNT={environ['GOMP_SPINCOUNT']}"
    return environ.get("OMP_WAIT_POLICY", "default").upper()


def wait_sentence(policy: str | None = None) -> str:
    """The few words notebook 00's CPU line says about :func:`wait_policy`."""
    policy = policy or wait_policy()
    if policy == "PASSIVE":
        return "OpenMP threads sleep at once while they wait (OMP_WAIT_POLICY=PASSIVE)"
    if policy.startswith("GOMP_SPINCOUNT="):
        return f"OpenMP threads spin briefly, then sleep while they wait ({policy})"
    return f"OpenMP threads spin for milliseconds while they wait (OMP_WAIT_POLICY={policy})"


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


def busy_cpu_warning(busy_percent: float, hw: Hardware, policy: str | None = None) -> str | None:
    """The sentence notebook 00 prints when other processes already load the CPU this course trains on, else None.

    Two processes computing on the same cores each get far less than half of them: benchmarks/shared_cpu.py measures a
    training step and a generation alone and beside a second busy torch process. With OpenMP's threads sleeping at once
    while they wait (``OMP_WAIT_POLICY=PASSIVE``) that costs about 2x; the course's short spin, a little more (it is
    faster alone); libgomp's long default spin, several times more. So a run that is not PASSIVE is told how to get it.
    """
    if hw.device != "cpu" or busy_percent <= BUSY_CPU_PERCENT:
        return None
    fix = "close the other notebook kernel or program"
    if (policy or wait_policy()) != "PASSIVE" and hw.torch_threads > 1:
        fix += (
            ", or restart this kernel with OMP_WAIT_POLICY=PASSIVE set and GOMP_SPINCOUNT unset (libgomp reads a "
            "spin count first) before torch is imported (before `import ragcourse`, which otherwise sets a short "
            "spin) so that idle threads sleep at once instead of spinning against the other process"
        )
    return (
        f"Warning: other processes already keep this CPU {busy_percent:.0f}% busy, so training and generation "
        f"here can run several times slower: {fix}."
    )


# -- a GPU preset without a usable GPU: say why, once, instead of falling back to the CPU (issue 31) -------------------

NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"  # Linux: there when the NVIDIA kernel driver is loaded
# The oldest Linux driver each CUDA major version runs on (NVIDIA's "CUDA minor version compatibility" table): an older
# driver makes torch.cuda.is_available() quietly return False.
MIN_DRIVER_FOR_CUDA = {11: (450, 80), 12: (525, 60), 13: (580, 65)}
TORCH_BUILDS = "https://pytorch.org/get-started/locally/"  # the pip command for each CUDA version


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version (``"550.54.15"``; ``"unknown"`` when its file says none), or None without a driver:
    read from :data:`NVIDIA_DRIVER_FILE`, else from ``nvidia-smi`` (WSL and containers without the /proc file)."""
    import re
    import subprocess

    try:
        with open(NVIDIA_DRIVER_FILE, encoding="utf-8") as f:
            found = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", f.read())
        return found[1] if found else "unknown"
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def cuda_unusable_reason(
    torch_version: str, torch_cuda: str | None, driver: str | None, visible_devices: str | None = None
) -> str:
    """Why torch sees no CUDA GPU here, with the fix, in one clause (notebook 00, "Check the runtime"): no NVIDIA
    driver, a CPU-only torch, GPUs hidden by ``CUDA_VISIBLE_DEVICES``, or a driver too old for torch's CUDA build."""
    if driver is None:
        return (
            "no NVIDIA GPU here (no NVIDIA driver answers): choose the cpu-smoke preset, or a GPU runtime "
            "(Colab: Runtime > Change runtime type > T4 GPU)"
        )
    if torch_cuda is None:
        return (
            f"torch {torch_version} is a CPU-only build, though NVIDIA driver {driver} is present: install a CUDA "
            f"build of torch for the CUDA version `nvidia-smi` shows (the command for each: {TORCH_BUILDS})"
        )
    if visible_devices is not None and visible_devices.strip() in ("", "-1"):
        return (
            f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides every GPU from torch: unset it, or set it to a GPU's "
            f"index (e.g. 0)"
        )
    major = int(torch_cuda.split(".")[0])
    needed = MIN_DRIVER_FOR_CUDA.get(major)
    if needed and driver != "unknown" and _version_tuple(driver)[:2] >= needed:
        return (
            f"torch {torch_version} (CUDA {torch_cuda}) cannot use the GPU although NVIDIA driver {driver} "
            f"supports CUDA {major}: run `nvidia-smi` to see whether the GPU is visible and healthy here"
        )
    oldest = f" (CUDA {major} needs driver {'.'.join(map(str, needed))} or newer)" if needed else ""
    named = "the NVIDIA driver" if driver == "unknown" else f"NVIDIA driver {driver}"
    return (
        f"driver/CUDA mismatch: torch {torch_version} is built for CUDA {torch_cuda}, and {named} is too old for "
        f"it{oldest}: update the driver, or install a torch build for the CUDA version your driver supports, which "
        f"`nvidia-smi` shows (the command for each: {TORCH_BUILDS})"
    )


def why_no_cuda() -> str | None:
    """:func:`cuda_unusable_reason` for this runtime, or None where torch can use a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return None
    return cuda_unusable_reason(
        torch.__version__, torch.version.cuda, nvidia_driver_version(), os.environ.get("CUDA_VISIBLE_DEVICES")
    )


def check_preset_hardware(preset: str, needs_cuda: bool, hw: Hardware) -> None:
    """Stop with one line when ``preset`` needs a CUDA GPU (``expected.needs_cuda``) and this runtime has none usable:
    falling back to the CPU would load a 7B model there and run for days (notebook 00, "Check the runtime")."""
    from .errors import HardwareError

    if needs_cuda and hw.device != "cuda":
        raise HardwareError(f"preset {preset} needs a CUDA GPU, and torch cannot use one here: {why_no_cuda()}.")


def cpu_fallback_note(hw: Hardware) -> str | None:
    """The line ``runtime.start`` prints when it runs on the CPU although an NVIDIA driver is present (so a GPU
    preset was not picked): why CUDA is unusable and the fix. None where there is a usable GPU or no driver at all."""
    if hw.device == "cuda" or nvidia_driver_version() is None:
        return None
    return (
        f"Note: an NVIDIA driver is present, yet torch cannot use the GPU, so cpu-smoke runs on the CPU: "
        f"{why_no_cuda()}."
    )


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
