"""The device a batch runs on and the process-wide torch settings it needs: device and precision
resolution, the CPU's bf16 units and threads, cuDNN autotuning, determinism, peak memory. No Hydra here."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from pathlib import Path

import torch

from nst.errors import InputError

TF32_OFF_CUDA = "tf32 is a GPU mode (TensorFloat-32 tensor cores, CUDA only); on the CPU or mps use fp32 or bf16"
NO_MPS = "'mps' asked for, but MPS (Apple's GPU) is not available on this machine; use device=cpu or device=auto"


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def check_device_name(device: str) -> None:
    ok = device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise InputError("device", f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N, mps")


def check_here(device: str, precision: str) -> None:
    """What this machine has, asked each time a trial's settings are (cheap, never remembered: settings
    made for one machine may run on another). device=mps fails up front where there is no MPS: Apple's
    GPU belongs to the Mac that runs the command, and its trials run there (worker processes on the
    same machine; SLURM nodes are not Macs), so what this process sees is what every trial would see.
    A CUDA device is left to each trial (resolve_device), or to check_cuda_here where the trials run
    here: SLURM nodes can have GPUs the submitting machine lacks."""
    if device == "mps" and not mps_available():
        raise InputError("device", NO_MPS)
    if precision == "tf32" and (device in ("cpu", "mps") or device == "auto" and not torch.cuda.is_available()):
        raise InputError("precision", TF32_OFF_CUDA)


def check_cuda_here(device: str) -> None:
    """device=cuda or cuda:N, checked up front where the trials will run on this machine (nst.preflight:
    a single run, or a sweep whose launcher runs here), so that a command asking for a GPU that is not
    there is refused before anything is written, as device=mps is. Sweeps sent to SLURM nodes are left
    to each trial (resolve_device). Creates no CUDA context (worker processes come later)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise InputError("device", f"'{device}' asked for, but no CUDA device is available here; use device=cpu or device=auto")
    if device.startswith("cuda:") and int(device[5:]) >= count:
        raise InputError("device", f"'{device}' does not exist: {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":  # CUDA, else Apple's GPU, else the CPU
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_available():
            raise InputError("device", NO_MPS)
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise InputError("device", f"'{name}' asked for, but no CUDA device is available here; use device=cpu or device=auto")
    index = int(name[5:]) if name.startswith("cuda:") else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InputError("device", f"'{name}' does not exist: {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def _cpuinfo(field: str) -> str | None:
    """The first value of a field of /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    import platform

    return _cpuinfo("model name") or platform.processor() or "cpu"


CPU_BF16_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names, fastest first


def cpu_bf16_units() -> str | None:
    """The CPU's bfloat16 arithmetic units, as /proc/cpuinfo names them: 'amx_bf16' (Intel AMX tiles,
    Sapphire Rapids and later), 'avx512_bf16' (bf16 dot products in AVX-512), or None (bf16 is then
    emulated in fp32 arithmetic, no faster). NST_CPU_BF16 overrides what is read (one of those names,
    or 'none'): for tests, and for a CPU whose flags are hidden from this process."""
    forced = os.environ.get("NST_CPU_BF16")
    if forced is not None:
        forced = forced.strip().lower()
        if forced not in (*CPU_BF16_UNITS, "none"):
            raise InputError("NST_CPU_BF16", f"'{forced}' is not one of {', '.join(CPU_BF16_UNITS)}, none")
        return None if forced == "none" else forced
    flags = set((_cpuinfo("flags") or "").split())  # not Linux: none, so no bf16 units are assumed
    return next((unit for unit in CPU_BF16_UNITS if unit in flags), None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: tf32 on a CUDA GPU, fp32 on the CPU whatever its bf16 units. Both as measured (docs/speed.md):
    on an H200 bf16 was no faster than tf32 (bare evaluation at 512x384: 6.3 against 5.1 ms); on an
    Intel Xeon with AMX-BF16 (2 threads) bf16 evaluated 1.8-2.2x faster than fp32 but moved the
    standardised metrics 9.5 % from fp32's, beyond that run's float-noise floor of 5.3 %
    (benchmarks/precision.py, 64 px, 30 evaluations), so there it is offered (precision=bf16; the log
    says so), not chosen. On Apple's GPU (mps) auto is fp32: tf32 is CUDA's, and bf16 there is not
    measured."""
    if precision == "auto":
        return "tf32" if device.type == "cuda" else "fp32"
    if precision == "tf32" and device.type != "cuda":
        raise InputError("precision", TF32_OFF_CUDA)
    return precision


def _switch(variable: str) -> bool | None:
    """An on/off override from the environment (1/true/on, 0/false/off), or None: decide as measured."""
    value = os.environ.get(variable, "auto").strip().lower()
    if value in ("1", "true", "on"):
        return True
    if value in ("0", "false", "off"):
        return False
    return None


def channels_last(device: torch.device, precision: str) -> bool:
    """Whether the network runs in the channels-last (NHWC) layout: for bf16 on the CPU, where oneDNN's
    bf16 kernels want it (Intel Xeon with AMX-BF16, 2 threads, 256x192: 6.4 against 5.2 evaluations/s).
    Elsewhere it won nothing measurable (fp32 on that CPU +3 %, on an AMD EPYC -1.5 %; an H200's tf32
    bare evaluation +5 % with its optimiser loops unchanged, its bf16 slower), docs/speed.md.
    NST_CHANNELS_LAST=1/0 forces it (the benchmarks compare both)."""
    forced = _switch("NST_CHANNELS_LAST")
    if forced is not None:
        return forced
    return device.type == "cpu" and precision == "bf16"


def lbfgs_products_on_host(device: torch.device) -> bool:
    """Whether the vectorised L-BFGS keeps its float64 history products on the host
    (nst.optimizers.BatchLBFGS, small_on_host): on Apple's GPU, which has no float64. Elsewhere they
    stay on the device. NST_LBFGS_HOST_PRODUCTS=1/0 forces it (the tests take that path on the CPU)."""
    forced = _switch("NST_LBFGS_HOST_PRODUCTS")
    if forced is not None:
        return forced
    return device.type == "mps"


_THREADS = torch.get_num_threads()  # the process's own limit (OMP_NUM_THREADS, a worker's share of the cores)


def cpu_threads() -> int:
    """Intra-op threads for the next batch on the CPU: the cores idle just now (sampled from /proc/stat
    over 0.2 s), at least 1 and at most the process's limit. With all its threads busy-waiting on a
    core another process holds, torch ran a 4-trial batch 2x slower with 2 threads than with 1 against
    a busy Python loop, and up to 7x slower against another torch job (2 cores, benchmarks/threads.py);
    on an idle machine 2 threads are 1.6x faster. NST_CPU_THREADS=N forces N."""
    forced = os.environ.get("NST_CPU_THREADS", "auto").strip().lower()
    if forced != "auto":
        if not forced.isdigit() or int(forced) < 1:
            raise InputError("NST_CPU_THREADS", f"'{forced}' is not 'auto' or a number of threads >= 1")
        return int(forced)
    if _THREADS == 1:
        return 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        before = _cpu_ticks(cores)
        time.sleep(0.2)
        after = _cpu_ticks(cores)
    except (OSError, ValueError, IndexError):
        return _THREADS  # no /proc/stat (not Linux): the process's limit
    # the idle share of each CPU this process may run on (a SLURM cpuset, taskset), summed
    idle = sum(1 - (after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in after)
    return max(1, min(_THREADS, len(after), round(idle)))


_KEEP_FREED = 2**30  # bytes: allocations below this come from malloc's heap, and up to this much freed memory stays there
_kept: bool | None = None  # whether keep_freed_memory() has set malloc up in this process (None: not asked yet)


def keep_freed_memory() -> bool:
    """Have malloc keep freed memory for the next allocation instead of handing it back to the kernel
    (glibc on Linux; once per process, for batches on the CPU). By default glibc returns every block
    above 32 MB (and, as the heap shrinks, much smaller ones) to the kernel at once, so each tick's
    feature maps and Gram matrices came back as fresh pages, every page a fault and zeroed by the
    kernel: 12,000 page faults per evaluation of 8 trials at 32 px, 15 % of the time spent in the
    kernel. With every allocation under 1 GiB served from the heap and up to 1 GiB of freed memory
    kept there, the runner's L-BFGS loop at 32 px x 8 trials ran 1.24x faster and at 256 px x 4 trials
    1.07x (2 cores of an AMD EPYC, fp32, torch 2.14.1; docs/speed.md). The heap then holds more than
    the live tensors (torch's aligned blocks do not fit the holes at first): the peak resident memory
    was 11 % higher at 256 px x 4 trials, and the process keeps it until it exits.
    NST_KEEP_FREED_MEMORY=0 leaves malloc as it is. Returns whether malloc is set up so."""
    global _kept
    if _kept is not None:
        return _kept
    _kept = False
    if _switch("NST_KEEP_FREED_MEMORY") is False:
        return False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        glibc = None
    if not glibc or not glibc.startswith("glibc"):
        return False  # musl, macOS, Windows: their allocators have no such switches
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        trimmed = bool(mallopt(m_trim_threshold, _KEEP_FREED))
        mapped = bool(mallopt(m_mmap_threshold, _KEEP_FREED))
    except (ImportError, OSError, AttributeError):
        return False  # no ctypes or no mallopt: malloc as it is
    _kept = trimmed and mapped
    return _kept


def _cpu_ticks(cores: list[int] | None) -> dict:
    """{cpu: (busy, total) jiffies} from /proc/stat's per-CPU lines (the given CPUs, or all)."""
    out = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            cpu = int(name[3:])
            if cores is None or cpu in cores:
                v = [int(x) for x in fields[:8]]  # guest time is already counted in user and nice
                idle = v[3] + v[4]  # idle + iowait
                out[cpu] = (sum(v) - idle, sum(v))
    if not out:
        raise ValueError("no per-CPU lines")
    return out


@contextlib.contextmanager
def torch_settings():
    """Restore, on exit, the process-wide torch settings a batch changes (set_precision, set_determinism,
    the CPU's intra-op threads): a batch sets what it needs, and leaves the process as it found it."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved[:4]
        if torch.are_deterministic_algorithms_enabled() != saved[4]:
            torch.use_deterministic_algorithms(saved[4])
        if torch.get_num_threads() != saved[5]:
            torch.set_num_threads(saved[5])


def set_precision(precision: str, device: torch.device) -> None:
    if device.type == "cuda":
        # fp32 means fp32: cuDNN would otherwise use TF32 tensor cores for convolutions by default.
        # tf32 is for the network's convolutions only: matrix products (the Gram matrices, the
        # optimiser's history products) stay fp32 whatever the precision.
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = False


def set_determinism(deterministic: bool, device: torch.device, batch_size: int = 1) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        # each call imports torch._inductor (about 1.8 s per process): only when the setting changes
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic and cudnn_autotune(batch_size)


def cudnn_autotune(batch_size: int = 1) -> bool:
    """Whether cuDNN times its algorithms for each new input shape (torch.backends.cudnn.benchmark).
    Measured on an H200 (torch 2.11, tf32, docs/speed.md): for a batch of one, whose shape never
    changes, autotuning is worth it (bare evaluation at 512x384: 6.2 ms against 6.8 ms with cuDNN's
    heuristics; six 64 px trials one at a time: 6.6 s against 7.6 s). A batch shrinks as its trials
    finish, and every new size is tuned again: six trials batched took 7.7 s with autotuning and 4.5 s
    without. So: on for a batch of one, off for larger batches. NST_CUDNN_BENCHMARK=1/0 forces it."""
    forced = _switch("NST_CUDNN_BENCHMARK")
    if forced is not None:
        return forced
    return batch_size == 1


def peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    if device.type == "mps":
        # MPS keeps no peak: what the Metal driver holds for this process now (tensors and the
        # allocator's cache), an upper bound of the live tensors. Missing in an older torch: RSS below.
        try:
            return torch.mps.driver_allocated_memory() / 2**20, "mps_driver_allocated"
        except (AttributeError, RuntimeError):
            pass
    # ru_maxrss is the process's high-water mark (KiB on Linux): in a multirun it covers earlier trials too.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
