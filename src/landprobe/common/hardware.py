"""What the machine can do fast: a warning where an opt-in low-precision path would be slow.

bf16 autocast on a CPU pays only where the CPU has bf16 arithmetic (AVX512-BF16 or AMX tiles).
Elsewhere PyTorch emulates it: measured on a 2-core AMD EPYC with AVX2 only, a forward pass of
full-size WARSHIP-XZNet β on 16 patches of 41x41 took 2.46 s per patch under bf16 autocast and
0.081 s in float32 (30x slower; benchmarks/bench_bf16_cpu.py), while on the AMX machines this project was first measured on
bf16 made conv training about 6x faster.
"""

from __future__ import annotations

import platform
import warnings

import torch

__all__ = ["cpu_model", "cpu_has_native_bf16", "warn_if_slow_autocast"]


def cpu_model() -> str:
    """The CPU's model name, as a run records where it was measured (Linux ``/proc/cpuinfo``;
    ``platform.processor()`` elsewhere; ``"unknown"`` if neither says).

    Example:
        >>> from landprobe.common.hardware import cpu_model
        >>> isinstance(cpu_model(), str) and cpu_model() != ""
        True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_has_native_bf16() -> bool | None:
    """True if this CPU has bf16 arithmetic PyTorch uses (AVX512-BF16 or AMX), False if it
    has neither, None if this build of PyTorch cannot tell (other architectures).

    Example:
        >>> from landprobe.common.hardware import cpu_has_native_bf16
        >>> cpu_has_native_bf16() in (True, False, None)
        True
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None                     # the two checks below are x86 instructions
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [c for c in checks if callable(c)]
    if not checks:
        return None
    try:
        return any(bool(c()) for c in checks)
    except (RuntimeError, AttributeError):
        return None


def warn_if_slow_autocast(device: torch.device | str, dtype: torch.dtype | None, what: str,
                          stacklevel: int = 3) -> None:
    """Warn (once per call site) when ``dtype`` asks for bf16 autocast on a CPU that emulates bf16.

    Example:
        >>> import torch
        >>> from landprobe.common.hardware import warn_if_slow_autocast
        >>> warn_if_slow_autocast("cpu", None, "dtype=None")         # float32: never a warning
    """
    device = torch.device(device)
    if dtype != torch.bfloat16 or device.type != "cpu" or cpu_has_native_bf16() is not False:
        return
    warnings.warn(
        f"{what} asks for bf16 autocast on a CPU without bf16 arithmetic (no AVX512-BF16 or AMX; "
        f"capability {torch.backends.cpu.get_cpu_capability()}): PyTorch emulates it, and convolutions "
        f"run many times slower than in float32 (30x for WARSHIP-XZNet beta on an AVX2 CPU). "
        f"Use float32 here (dtype=None, or amp='off' / --amp off in the recipe).",
        RuntimeWarning,
        stacklevel=stacklevel,
    )
