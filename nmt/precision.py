"""Choosing the device and the compute dtype by what the hardware does fast.

On a CPU with AVX512-BF16 (or AMX) a bf16 matrix product runs about 4x faster than fp32; on an AVX2-only CPU
bf16 is emulated and several times slower than fp32. `auto` therefore means bf16 autocast only where the CPU
has native bf16 instructions, fp32 elsewhere, and bf16 autocast on CUDA devices that support it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# int8 is for decoding on CPUs only (`nmt.quantize`): its products run in int8, everything else in fp32.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.qint8}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Native bf16 instructions, and torch's kernels allowed to use them: with `ATEN_CPU_CAPABILITY=avx2` (how an
    AVX2-only CPU is emulated on a newer one, with oneDNN capped the same way) bf16 is no longer fast, and
    oneDNN has no bf16 LSTM."""
    flags = cpu_flags()
    capped = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX", "AVX2")
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and not capped


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_kind() -> str:
    """A short description for every printed figure: which kind of CPU produced it."""
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = "AVX512-BF16" if cpu_has_fast_bf16() else "no AVX512-BF16 (bf16 slow)"
    return f"{cpu_name()}, {capability}, {bf16}"


def describe_device(device: torch.device) -> str:
    """The hardware behind `device`, for every printed figure: the CPU kind, or the GPU's name."""
    return cpu_kind() if device.type == "cpu" else torch.cuda.get_device_name(device)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from nmt.errors import NMTError

    try:
        device = torch.device(requested)
    except RuntimeError:
        raise NMTError(f"unknown device {requested!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NMTError(f"device {requested!r} asked for, but CUDA is not available here")
    return device


_warned_slow_bf16 = False


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for `requested` in {auto, fp32, bf16, fp16} on `device`."""
    global _warned_slow_bf16
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    dtype = DTYPES[requested]
    if dtype == torch.qint8 and device.type != "cpu":
        from nmt.errors import NMTError

        raise NMTError("dtype int8 is for decoding on CPUs; use bf16 or fp16 on a GPU")
    if device.type == "cpu" and dtype == torch.float16:
        from nmt.errors import NMTError

        raise NMTError("dtype fp16 is for CUDA only; use bf16 or fp32 on the CPU")
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16() and not _warned_slow_bf16:
        log.warning("this CPU has no native bf16 (no AVX512-BF16): bf16 will be several times slower than fp32")
        _warned_slow_bf16 = True
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype in (torch.float32, torch.qint8):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]
