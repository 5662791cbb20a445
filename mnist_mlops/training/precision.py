"""Numeric precision of the training forward pass, named as Lightning names it.

``bf16-mixed`` runs the forward (convolutions, matmuls) under ``torch.autocast`` in bfloat16
while weights, gradients and optimizer state stay float32. On CPUs with AMX tiles (this
project's Sapphire-Rapids-class machines) oneDNN's bf16 kernels train gap_v8 ~1.5x faster
than float32; on CPUs without AMX bf16 is emulated and slower, so ``auto`` keeps float32 there.
Evaluation always runs in float32: validation and test numbers describe the float32 model
that is logged and served, not a bf16 approximation of it.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "32-true", "bf16-mixed")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has fast bf16 matrix units (CUDA Ampere+, CPU AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(torch.backends.mkldnn.is_available() and amx is not None and amx())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16-mixed`` where the hardware runs bf16 natively, else ``32-true``."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16-mixed" if native_bf16(device) else "32-true"
    return precision


def forward_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training forward pass runs in for a resolved ``precision``."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
