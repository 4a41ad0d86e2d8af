"""Choosing the accelerator and numeric precision for the machine at hand."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["MACHINE_KEYS", "connection_problem", "cpu_has_native_bf16", "cuda_has_native_bf16", "resolve_accelerator", "resolve_devices",
           "resolve_machine", "resolve_precision"]

#: the trainer settings resolved for the machine at hand; a run saves what was asked for
#: (``auto``) beside what it resolved to, so that ``resume=`` on another machine resolves again
MACHINE_KEYS = ("accelerator", "devices", "precision")

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


def cuda_has_native_bf16(device: int | None = None) -> bool:
    """True on a CUDA GPU with bf16 tensor cores (compute capability 8.0, Ampere, and newer).

    Older GPUs (V100, T4) emulate bf16 slowly, so they get ``16-mixed`` with a gradient scaler.
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_accelerator(accelerator: str) -> str:
    """``"auto"`` → ``"gpu"`` when CUDA is available, else ``"cpu"``; anything else unchanged."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """``"auto"`` → ``bf16-mixed`` on a GPU with bf16 tensor cores (Ampere and newer), ``16-mixed``
    (Lightning adds the gradient scaler) on older GPUs; ``bf16-mixed`` on a CPU with native bf16;
    else ``32-true``.

    Any other value (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ``64`` …) is passed through.
    """
    if str(precision) != "auto":
        return str(precision)
    accelerator = resolve_accelerator(accelerator)
    if accelerator in ("gpu", "cuda"):
        return "bf16-mixed" if cuda_has_native_bf16() else "16-mixed"
    if accelerator == "cpu" and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_devices(devices: Any, accelerator: str) -> tuple[Any, str]:
    """``"auto"`` → one device, with a note when the machine has more GPUs (DDP over all of
    them is asked for with ``trainer.devices=-1`` or a count, never implied); anything else
    unchanged. Returns ``(devices, note)``."""
    if str(devices) != "auto":
        return devices, ""
    if resolve_accelerator(accelerator) in ("gpu", "cuda"):
        count = torch.cuda.device_count()
        if count > 1:
            return 1, (f"one GPU of the {count} here (devices=auto); trainer.devices={count} (or -1) trains on all "
                       f"of them with DDP")
    return 1, ""


def resolve_machine(trainer: Any) -> tuple[dict[str, Any], str]:
    """Resolve ``trainer.accelerator``, ``devices`` and ``precision`` (a config node) for this
    machine, in place. Returns the values asked for (to save for a resume elsewhere) and one
    line saying what they became."""
    requested = {key: trainer.get(key) for key in MACHINE_KEYS}
    accelerator = resolve_accelerator(str(requested["accelerator"]))
    devices, note = resolve_devices(requested["devices"], accelerator)
    precision = resolve_precision(requested["precision"], accelerator)
    trainer.accelerator, trainer.devices, trainer.precision = accelerator, devices, precision

    def asked(key: str, value: Any) -> str:  # "bf16-mixed (auto)": what it became, and what was asked for
        return f"{value} ({requested[key]})" if str(requested[key]) != str(value) else str(value)

    line = (f"machine: accelerator {asked('accelerator', accelerator)}, devices {asked('devices', devices)}, "
            f"precision {asked('precision', precision)}")
    return requested, f"{line}; {note}" if note else line


def connection_problem(host: str, port: int, timeout: float) -> str | None:
    """``None`` when ``host`` accepts a connection on ``port`` within ``timeout`` seconds, else
    why not (the OS's reason): the quick probe before a download or a tracker that would
    otherwise retry for minutes on a machine without the network."""
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return err.strerror or type(err).__name__
    return None
