"""``segkit-export``: the trained network as ONNX or TorchScript, checked against PyTorch.

The exported graph maps a normalised ``(B, C, H, W)`` float32 batch to ``(B, K, H, W)``
logits (``activation: probabilities`` appends the sigmoid / softmax); batch, height and
width are dynamic (multiples of the model's size multiple). A JSON file beside the model
(``<file>.json``) records what the graph does not: normalisation, image size, class
names, threshold. The export is written under a temporary name, run on inputs of two
sizes and compared with the PyTorch network; only a model within tolerance is put in place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from segkit.checkpoint import load_checkpoint
from segkit.data.io import refuse_overwrite, require_writable, temporary_path, write_json_atomic

__all__ = ["ExportParityError", "ExportedNet", "export_checked", "export_onnx", "export_torchscript", "run_export"]

log = logging.getLogger(__name__)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


class ExportParityError(ValueError):
    """The exported model does not give PyTorch's outputs (or does not run) on the checked inputs.

    ``other_size``: it failed only on an input of another height/width than it was exported
    at (``reason`` says how), which a fixed-size export avoids."""

    def __init__(self, message: str, other_size: bool = False, reason: str = "") -> None:
        super().__init__(message)
        self.other_size = other_size
        self.reason = reason


_PARITY_HELP = {
    "onnx": "The README's architecture table says which architectures export to ONNX with parity; format=torchscript "
            "is the other format, checked the same way",
    "torchscript": "format=onnx is the other format, checked the same way",
}


class ExportedNet(nn.Module):
    """The bare network of a :class:`SegmentationNet`: tensor in, tensor out, no Python checks."""

    def __init__(self, net: nn.Module, activation: str = "logits", binary: bool = True) -> None:
        super().__init__()
        if activation not in ("logits", "probabilities"):
            raise ValueError(f"activation must be 'logits' or 'probabilities', got {activation!r}")
        self.net = net
        self.probabilities = activation == "probabilities"
        self.binary = binary  # sigmoid (one output channel) or softmax

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.net(image)
        logits = out[0] if isinstance(out, tuple) else out
        if not self.probabilities:
            return logits
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_size: bool = True) -> None:
    """ONNX via the ``torch.export`` exporter: batch dynamic, height and width too where
    ``dynamic_size``. ``example`` should have a batch of 2 or more: ``torch.export``
    specialises a dimension it sees as 1 (Segformer's and DPT's batch were fixed that way)."""
    auto = torch.export.Dim.AUTO
    dims = {0: auto, 2: auto, 3: auto} if dynamic_size else {0: auto}
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # the graph optimiser logs every initializer it merges
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every step
            torch.onnx.export(
                model, (example,), str(path), input_names=["image"], output_names=["output"], opset_version=opset,
                dynamo=True, external_data=False, dynamic_shapes={"image": dims},
            )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript by tracing (the networks have no data-dependent control flow).

    PyTorch 2.14 marks TorchScript deprecated in favour of ``torch.export``; it is kept for
    deployments (LibTorch, older runtimes) that still load it."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _runner(fmt: str, path: Path):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: loaded(x).detach().numpy()


def _export_and_check(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, name: str, multiple: int,
                      dynamic: bool, opset: int, atol: float, rtol: float) -> list[dict[str, Any]]:
    """Export ``model`` to ``path`` and run it against PyTorch: at the export size with batches
    2 and 1, and (``dynamic``) batch 1 at a larger size. Parity: max |diff| <= atol + rtol *
    max |PyTorch output| (the outputs' scale: logits of tens differ by 1e-4 in float32 where
    a value crosses zero, which an element-wise tolerance would call a failure)."""
    _, channels, height, width = example.shape
    shapes = [(2, channels, height, width), (1, channels, height, width)]
    if dynamic:
        shapes[1] = (1, channels, height + 2 * multiple, width + multiple)
    step = time.perf_counter()
    log.info("exporting to %s at %dx%d (%s; %s)", FORMAT_NAMES[fmt], height, width,
             f"opset {opset}" if fmt == "onnx" else "traced",
             "batch, height and width stay dynamic" if dynamic else "the batch stays dynamic, the size is fixed")
    if fmt == "onnx":
        export_onnx(model, example, path, opset, dynamic_size=dynamic)
    else:
        export_torchscript(model, example, path)
    log.info("exported in %.1f s; checking parity with PyTorch on two inputs: %s",
             time.perf_counter() - step, " and ".join("x".join(map(str, shape)) for shape in shapes))
    run = _runner(fmt, path)
    generator = torch.Generator().manual_seed(1)
    checks = []
    for shape in shapes:
        other_size = tuple(shape[2:]) != (height, width)
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            reference = model(x).numpy()
        try:
            got = run(x)
        except Exception as err:  # noqa: BLE001 — the runtime's own error, on a shape the export should take
            reason = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            raise ExportParityError(
                f"the {fmt} export of {name} does not run on input {shape} ({reason}): the exporter fixed a size or "
                f"batch that should stay dynamic; nothing written. {_PARITY_HELP[fmt]}",
                other_size=other_size, reason="it does not run at other sizes") from None
        if got.shape != reference.shape:
            raise ExportParityError(f"{fmt} output shape {got.shape} != PyTorch {reference.shape} for input {shape}; "
                                    f"nothing written. {_PARITY_HELP[fmt]}", other_size=other_size,
                                    reason="its output has the wrong shape at other sizes")
        diff = float(np.abs(got - reference).max())
        scale = float(np.abs(reference).max())
        ok = bool(diff <= atol + rtol * scale)
        checks.append({"input": list(shape), "max_abs_diff": diff, "max_abs_output": scale, "ok": ok})
        if not ok:
            raise ExportParityError(
                f"{fmt} export of {name} differs from PyTorch on input {shape}: max |diff| {diff:.3g} against "
                f"outputs up to {scale:.3g} (allowed: atol {atol:g} + rtol {rtol:g} x {scale:.3g}); nothing "
                f"written. {_PARITY_HELP[fmt]}", other_size=other_size, reason=f"max |diff| {diff:.3g} at other sizes")
    return checks


def export_checked(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, name: str, multiple: int,
                   dynamic_size: str = "auto", opset: int = 18, atol: float = 1e-4, rtol: float = 1e-3,
                   ) -> tuple[list[dict[str, Any]], bool]:
    """Export ``model`` to ``path`` and check it against PyTorch (:func:`_export_and_check`);
    ``dynamic_size`` ``auto`` exports again with the size fixed (and warns) when the dynamic
    export fails only at other sizes, ``true`` raises then, ``false`` fixes it at once.
    Returns the checks and whether height and width are dynamic."""
    mode = str(dynamic_size).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"dynamic_size={dynamic_size}: choose auto, true or false")
    _, _, height, width = example.shape
    try:
        return _export_and_check(fmt, model, example, path, name, multiple, mode != "false", opset, atol, rtol), mode != "false"
    except ExportParityError as err:
        if mode != "auto" or not err.other_size:
            raise
        log.warning("the %s export of %s does not run right on other sizes than %dx%d (%s): exporting again with "
                    "height and width fixed to %dx%d (the batch stays dynamic). Feed it images or windows of that "
                    "size, or export at your image size with size=[height,width]", fmt, name, height, width, err.reason,
                    height, width)
    return _export_and_check(fmt, model, example, path, name, multiple, False, opset, atol, rtol), False


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt``; returns the content of the sidecar JSON (with the parity numbers).

    Each step is logged as it starts (the whole export takes tens of seconds on a CPU); the
    output folder is checked before any of them, so an unwritable place fails at once.
    """
    started = time.perf_counter()
    fmt = str(cfg.format)
    if fmt not in SUFFIXES:
        raise ValueError(f"format={fmt}: choose {' or '.join(SUFFIXES)}")
    ckpt = Path(str(cfg.ckpt))
    if not ckpt.is_file():  # before require_writable creates the folders of a mistyped path
        raise FileNotFoundError(f"{ckpt}: checkpoint file not found")
    output = Path(str(cfg.output)) if cfg.get("output") else ckpt.with_suffix(SUFFIXES[fmt])
    if cfg.get("output") and (str(cfg.output).endswith(("/", os.sep)) or output.is_dir()):
        output = output / (ckpt.stem + SUFFIXES[fmt])  # a folder: the file goes inside, named after the checkpoint
    sidecar = output.with_name(output.name + ".json")
    refuse_overwrite([output, sidecar], bool(cfg.overwrite))
    where = "choose another output= (a file name, or a folder ending in /)"
    if not cfg.get("output"):
        where += "; by default it is written beside the checkpoint"
    require_writable(output.parent, where)
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise ImportError(f"format=onnx needs the export extra: pip install 'segkit[export]' ({err})") from err

    log.info("loading checkpoint %s", ckpt)
    loaded = load_checkpoint(cfg.ckpt)
    prep = loaded.preprocessing
    multiple = int(prep.get("size_multiple") or 1)
    size = cfg.get("size") or prep.get("image_size") or [256, 256]
    if isinstance(size, int):
        size = [size, size]
    height, width = (-(-int(s) // multiple) * multiple for s in size)
    model = ExportedNet(loaded.module.net.net, str(cfg.activation), binary=loaded.num_classes == 1).eval()
    channels = int(prep["in_channels"])
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, channels, height, width, generator=generator)

    tmp = temporary_path(output)
    try:
        checks, dynamic = export_checked(fmt, model, example, tmp, loaded.module.net.name, multiple,
                                         str(cfg.get("dynamic_size", "auto")), int(cfg.opset), float(cfg.atol), float(cfg.rtol))
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    info = {
        "checkpoint": str(ckpt),
        "format": fmt,
        "file": str(output),
        "input": {"name": "image", "layout": ("NCHW float32, normalised as preprocessing.normalize says (albumentations "
                  "Normalize arguments; null: pixels / the dtype's maximum; max_pixel_value null: the dtype's maximum)"),
                  "channels": channels, "size_multiple": multiple,
                  "dynamic": ["batch", "height", "width"] if dynamic else ["batch"],
                  "size": None if dynamic else [height, width]},
        "output": {"name": "output", "values": str(cfg.activation),
                   "activation": "sigmoid" if loaded.num_classes == 1 else "softmax"},
        "preprocessing": prep,
        "parity": checks,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(sidecar, info)
    log.info("%s model written to %s (parity with PyTorch: max |diff| %s; %.1f s in all); preprocessing in %s",
             fmt, output, ", ".join(f"{c['max_abs_diff']:.2g}" for c in checks), info["seconds"], sidecar)
    return info
