"""Compute device and mixed-precision choice, shared by training and inference."""

from __future__ import annotations

import torch

from radmtl.errors import RadmtlError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise RadmtlError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RadmtlError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def amp_dtype_for(setting: str, device: torch.device, fp16_fallback: bool = True) -> torch.dtype | None:
    """Autocast dtype for ``train.amp``: bf16 where the GPU supports it (no loss scaling needed).

    On a GPU without bf16, ``auto`` falls back to fp16 when ``fp16_fallback`` (training, which
    has a GradScaler) and to full precision otherwise. CPU: always off.
    """
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if fp16_fallback else None
