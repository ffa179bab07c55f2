"""Where a run computes and how: device, torch threads, numeric precision, the memory allocator.

Precision (``hardware.precision`` = fp32 | bf16 | auto): bf16 runs the networks' matmuls under ``torch.autocast``
where the hardware has bf16 units (a CPU with AMX or AVX-512-BF16, a CUDA GPU that supports bf16); ``auto`` picks
bf16 on the CPUs where it is the faster of the two (AMX; AMD's AVX-512-BF16). Master weights
and optimizer state stay fp32, and so do the numbers that decide something: every network returns fp32, so TD
errors, losses, PER priorities and sharing thresholds are computed in fp32. On CUDA, fp32 matmuls use TF32.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import time
from dataclasses import dataclass

import torch

from marlrun.errors import UserError, require

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class HardwareConfig:
    """Where training runs and how the environment copies are spread. Defaults: hardware=auto (conf/hardware/ holds
    the cpu and cuda presets)."""

    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    torch_threads: int = 0  # intra-op threads for torch in the main process; 0 = OMP_NUM_THREADS if set, else the cores env workers leave free (1 to 4)
    num_envs: int = 4  # parallel environment copies stepped together (each step counts num_envs env steps)
    env_workers: int = 1  # worker processes that step the copies; 0 = step them in the main process (the native pursuit backend uses none)
    precision: str = "auto"  # fp32 | bf16 (the networks' matmuls under autocast; refused where the hardware has no bf16 units) | auto (bf16 where it is the faster: AMX, AMD's AVX-512-BF16)
    flush_denormal: bool = True  # CPU: flush denormal floats to zero (FTZ/DAZ), which the slow microcode path for them makes much faster

    def __post_init__(self) -> None:
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "hardware.device",
            f"unknown device '{self.device}'; use auto, cpu, cuda or cuda:N",
        )
        require(self.torch_threads >= 0, "hardware.torch_threads", "must be >= 0 (0 = automatic)")
        require(self.num_envs >= 1, "hardware.num_envs", "must be >= 1")
        require(self.env_workers >= 0, "hardware.env_workers", "must be >= 0 (0 = in the main process)")
        require(self.precision in PRECISIONS, "hardware.precision", f"unknown precision '{self.precision}'; pick one of {', '.join(PRECISIONS)}")


# ---------------------------------------------------------------------------- device and threads
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"hardware.device={name} but torch sees no CUDA GPU here; use hardware=cpu (or hardware=auto)")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"hardware.device={name} but only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def available_cores() -> int:
    """Cores this process may run on (a SLURM allocation or a container's CPU set, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def torch_threads(hardware: HardwareConfig, parallel_jobs: int = 1, env_workers: int | None = None) -> int:
    """Explicit setting; else OMP_NUM_THREADS where a launcher (Ray, joblib's workers) or the user set it; else this
    job's share of the cores (``parallel_jobs`` run side by side) less its environment worker processes (at least 1,
    at most 4). ``env_workers``: the processes the environment really started (``VecEnv.worker_processes``: none for
    the native and in-process backends, whatever ``hardware.env_workers`` says); default ``hardware.env_workers``.

    Never more threads than free cores: on a busy machine OpenMP's busy-waiting makes an oversubscribed learner
    ten times slower, not a little slower."""
    if hardware.torch_threads:
        return hardware.torch_threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    workers = hardware.env_workers if env_workers is None else env_workers
    share = max(1, min(4, available_cores() // parallel_jobs - workers))
    if share == 1:
        return 1
    global busy_at_start
    busy_at_start = busy_cores()
    return max(1, min(share, round(available_cores() - busy_at_start)))


busy_at_start: float | None = None  # cores other processes kept busy when torch_threads last looked (None: it did not)


def busy_cores(seconds: float = 0.3) -> float:
    """How many of this process's cores other processes keep busy, measured over ``seconds`` from /proc/stat (this
    process sleeps meanwhile); 0 where there is no /proc/stat. A learner given a core that another process is using
    gets a tenth of its speed, not half: OpenMP's threads spin while they wait for each other, and one of them waits
    for the core (SUPER-DDQN on 2 cores with one busy loop beside it: 15 env steps/s on 2 threads, 314 on 1)."""
    def sample() -> dict[str, tuple[int, int]]:
        times = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    values = [int(v) for v in fields[:8]]
                    times[name] = (sum(values), values[3] + values[4])  # total, idle + iowait
        return times

    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, AttributeError, ValueError):
        return 0.0
    busy = 0.0
    for cpu in mine & before.keys() & after.keys():
        total, idle = after[cpu][0] - before[cpu][0], after[cpu][1] - before[cpu][1]
        busy += 1 - idle / total if total > 0 else 0.0
    return busy


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc serves every allocation above a threshold (128 KiB, adjusted as it goes) with a fresh mmap
    and unmaps it on free, so a learner that allocates the same few-MB activations every step takes a page fault
    on every 4 KiB of them, every step: about a third of a small network's update on the CPU. A fixed 32 MiB mmap
    threshold (glibc's maximum) and no trimming keep those blocks on the heap. Returns whether it applied (glibc only)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


# ---------------------------------------------------------------------------- precision
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=8)
def cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in Linux's /proc/cpuinfo (``flags``, ``vendor_id``, ``model name``), None where
    there is no such line or no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key), None)
    except OSError:
        return None


def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's bf16 matmul units (its cpuinfo flags), empty where it has none or they cannot be read."""
    flags = (cpuinfo("flags") or "").split()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def cpu_vendor() -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD, ...), empty where it cannot be read."""
    return cpuinfo("vendor_id") or ""


def cpu_bf16_is_fast() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU: AMX (Intel Sapphire Rapids and later), or AVX-512-BF16 on an AMD
    CPU (Zen 4 and later). Intel's AVX-512-BF16 without AMX (Cooper Lake) is slower than its fp32."""
    units = cpu_bf16_units()
    return "amx_bf16" in units or ("avx512_bf16" in units and cpu_vendor() == "AuthenticAMD")


def cpu_model() -> str:
    """The CPU's model name, else what the platform says."""
    return cpuinfo("model name") or platform.processor()


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_bf16_units())


def resolve_precision(name: str, device: torch.device, auto_bf16: bool = True) -> str:
    """``fp32`` or ``bf16`` for ``hardware.precision=name`` on ``device``; bf16 where it cannot run is a UserError.

    ``auto`` is bf16 where the CPU's bf16 matmuls are the faster (``cpu_bf16_is_fast``), else fp32. With AMX bf16
    matmuls run about 5x faster than fp32; on an AMD EPYC with AVX-512-BF16 (Zen 4) the SUPER-DDQN update took 12.8
    against 23.5 ms in fp32 (``marlrun bench --case super_ddqn-update``, both in one run). An Intel CPU with
    AVX-512-BF16 but no AMX can run bf16 (``bf16`` is allowed there), but slower: oneDNN's bf16 batched matmuls at
    the update's shapes ran at 106 against 170 GFLOP/s in fp32 on such a Xeon, and the update took 31.0 against
    22.2 ms. On a CUDA GPU the small networks of these games are bound by kernel launches, not arithmetic,
    so autocast's extra cast kernels cost more than bf16 saves; fp32 there runs its matmuls in TF32.

    ``auto_bf16`` false (the algorithm's ``Algorithm.auto_bf16``: networks too small for bf16 to pay) makes ``auto``
    fp32 everywhere: MADDPG's 64-unit MLPs trained at 1,735 env steps/s in bf16 against 2,501 in fp32 on an AMD EPYC
    whose bf16 is otherwise the faster (``marlrun bench``, each precision in turn).
    """
    if name not in PRECISIONS:
        raise UserError(f"hardware.precision: unknown precision '{name}'; pick one of {', '.join(PRECISIONS)}")
    supported = bf16_supported(device)
    if name == "bf16" and not supported:
        where = "this GPU" if device.type == "cuda" else "this CPU (it has neither AMX nor AVX-512-BF16)"
        raise UserError(f"hardware.precision=bf16: {where} has no bf16 matmul units; use hardware.precision=fp32 (or auto)")
    if name == "auto":
        return "bf16" if device.type == "cpu" and cpu_bf16_is_fast() and auto_bf16 else "fp32"
    return name


def explain(hardware: HardwareConfig, device: torch.device, precision: str, threads: int, env_workers: int,
            auto_bf16: bool = True) -> dict[str, str]:
    """What runs and why: the device, the precision and the torch threads, each with the reason ``auto`` (or the
    setting) chose it, for the start banner, summary.json and TensorBoard."""
    units = ", ".join(cpu_bf16_units()) or "no bf16 units"
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        where = f"cpu ({cpu_model()}; {available_cores()} cores; {units})"
    if hardware.precision != "auto":
        why_precision = f"hardware.precision={hardware.precision}"
    elif device.type == "cuda":
        why_precision = "auto: fp32 on a GPU (matmuls in TF32): these small networks are bound by kernel launches, not arithmetic"
    elif not auto_bf16:
        why_precision = "auto: this algorithm's networks are too small for bf16 to pay"
    elif precision == "bf16":
        why_precision = f"auto: this CPU's bf16 matmuls are the faster ({units})"
    else:
        why_precision = f"auto: fp32, this CPU's bf16 matmuls are not the faster ({units})"
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if hardware.torch_threads:
        why_threads = f"hardware.torch_threads={hardware.torch_threads}"
    elif omp.isdigit() and int(omp) > 0:
        why_threads = f"OMP_NUM_THREADS={omp}"
    else:
        why_threads = f"auto: the {available_cores()} cores this process may use, less {env_workers} environment worker process(es), 1 to 4"
        if busy_at_start is not None and busy_at_start >= 0.5:
            why_threads += f", less the {busy_at_start:.1f} cores other processes kept busy at start"
    return {"device": where, "precision": precision, "precision_why": why_precision, "torch_threads": str(threads),
            "torch_threads_why": why_threads}


def allow_tf32(device: torch.device) -> None:
    """fp32 matmuls and convolutions in TF32 on CUDA GPUs that have it (process-wide)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the networks' matmuls run in at ``precision``."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str):
    """The context the networks run in: bf16 autocast for ``precision='bf16'``, nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def flush_denormals(on: bool) -> None:
    """Flush denormal floats to zero on the CPU (x86's FTZ and DAZ flags), or not.

    Arithmetic that produces or reads denormals (below 1.2e-38, where Adam's moments of rarely used weights and the
    gradients of dying units end up) takes a slow microcode path, six to nine times slower per element here: a
    learner's step gets slower as training goes on. The flags belong to each thread and a thread takes them from
    the one that starts it, so this must run before torch's first parallel operation starts its thread pool.
    """
    torch.set_flush_denormal(on)


def setup(hardware: HardwareConfig, auto_bf16: bool = True) -> tuple[torch.device, str]:
    """Apply ``hardware`` to this process (denormals, allocator, TF32); returns the device and the precision to run
    (``auto_bf16``: see ``resolve_precision``).

    Torch's thread count is set once the environment is built and its worker processes are known (torch_threads)."""
    device = resolve_device(hardware.device)
    precision = resolve_precision(hardware.precision, device, auto_bf16)
    flush_denormals(hardware.flush_denormal)
    keep_freed_memory()
    allow_tf32(device)
    return device, precision
