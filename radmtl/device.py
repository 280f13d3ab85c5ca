"""Compute device and mixed-precision choice, shared by training and inference."""

from __future__ import annotations

import ctypes
import functools
import logging
import platform

import torch

from radmtl.errors import RadmtlError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise RadmtlError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RadmtlError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value on 64-bit
_TOP_PAD_BYTES = 64 * 2**20


@functools.cache  # process-wide settings: once is enough, later calls are free
def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's malloc keep freed tensor memory in the process instead of returning it to the OS.

    By default glibc serves every allocation over its mmap threshold (128 KiB at first) with a fresh
    mmap and unmaps it on free, so a CPU training step that allocates the same 4-16 MB activations
    and gradients again page-faults and zeroes them anew each time: with this, a training step of
    configs/quick.yaml took 254-377 ms instead of 350-454 ms (2 cores; issue 9 note). PyTorch's
    performance guide reaches the same end by preloading jemalloc or tcmalloc; mallopt needs no
    extra library and no environment set before Python starts. The memory kept is what the step
    peaks at anyway. Returns whether glibc accepted the settings (False off glibc, e.g. macOS).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, 2**31 - 1),
                (_M_TOP_PAD, _TOP_PAD_BYTES))
    accepted = all(libc.mallopt(param, value) == 1 for param, value in settings)
    logger.debug("glibc malloc tuned to keep freed memory for reuse: %s", accepted)
    return accepted


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), so autocast to bf16 is faster.

    torch exposes the check only as private helpers of ``torch.cpu``; a torch without them counts as
    no support, which keeps training in float32 (slower, never wrong).
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def amp_dtype_for(setting: str, device: torch.device, *, training: bool) -> torch.dtype | None:
    """Autocast dtype for ``train.amp``: bf16 where the GPU supports it (no loss scaling needed).

    ``training`` decides the two cases where training and inference differ. On a GPU without bf16,
    ``auto`` falls back to fp16 in training, which has a GradScaler, and to full precision in
    inference.

    CPU: off, except ``bf16`` asked for explicitly in training on a CPU that computes bf16 natively:
    there a training step of configs/quick.yaml is about 1.6× faster (``scripts/bench_cpu_bf16.py``
    prints it for this machine). A CPU without it would emulate bf16 and run slower than float32, so
    it trains in float32 with a warning. ``auto`` stays off on a CPU, and inference on a CPU stays
    float32, so the σ-scaling fit and ``radmtl infer`` compute the same numbers.
    """
    if setting == "off":
        return None
    if device.type == "cpu":
        if setting != "bf16" or not training:
            return None
        if cpu_has_native_bf16():
            return torch.bfloat16
        logger.warning("train.amp: bf16 asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX), "
                       "where it would be slower than float32; training in float32")
        return None
    if device.type != "cuda":
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if training else None
