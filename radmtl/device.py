"""Compute device and mixed-precision choice, shared by training and inference."""

from __future__ import annotations

import logging

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
