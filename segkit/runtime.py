"""Choosing the accelerator and numeric precision for the machine at hand."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

__all__ = ["cpu_has_native_bf16", "resolve_accelerator", "resolve_precision"]

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16 on x86; Linux only).

    Without them bf16 autocast is emulated and slower than fp32, so it is no default there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _BF16_FLAGS)


def resolve_accelerator(accelerator: str) -> str:
    """``"auto"`` → ``"gpu"`` when CUDA is available, else ``"cpu"``; anything else unchanged."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """``"auto"`` → ``16-mixed`` on CUDA; ``bf16-mixed`` on a CPU with native bf16; else ``32-true``.

    Any other value (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ``64`` …) is passed through.
    """
    if str(precision) != "auto":
        return str(precision)
    accelerator = resolve_accelerator(accelerator)
    if accelerator in ("gpu", "cuda"):
        return "16-mixed"
    if accelerator == "cpu" and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"
