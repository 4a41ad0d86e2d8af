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

__all__ = ["ExportParityError", "ExportedNet", "export_onnx", "export_torchscript", "run_export"]

log = logging.getLogger(__name__)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


class ExportParityError(ValueError):
    """The exported model does not give PyTorch's outputs (or does not run) on the checked inputs."""


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


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """ONNX via the ``torch.export`` exporter, batch/height/width dynamic."""
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
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
    example = torch.randn(1, channels, height, width, generator=generator)

    tmp = temporary_path(output)
    shapes = [(2, channels, height, width), (1, channels, height + 2 * multiple, width + multiple)]
    try:
        step = time.perf_counter()
        log.info("exporting to %s at %dx%d (%s; batch, height and width stay dynamic)", FORMAT_NAMES[fmt], height, width,
                 f"opset {cfg.opset}" if fmt == "onnx" else "traced")
        if fmt == "onnx":
            export_onnx(model, example, tmp, int(cfg.opset))
        else:
            export_torchscript(model, example, tmp)
        log.info("exported in %.1f s; checking parity with PyTorch on two input sizes: %s",
                 time.perf_counter() - step, " and ".join("x".join(map(str, shape)) for shape in shapes))
        run = _runner(fmt, tmp)
        checks = []
        for shape in shapes:
            x = torch.randn(*shape, generator=generator)
            with torch.no_grad():
                reference = model(x).numpy()
            try:
                got = run(x)
            except Exception as err:  # noqa: BLE001 — the runtime's own error, on a shape the export should take
                raise ExportParityError(
                    f"the {fmt} export of {loaded.module.net.name} does not run on input {shape} "
                    f"({type(err).__name__}: {' '.join(str(err).split())[:200]}): the exporter fixed a size or batch "
                    f"that should stay dynamic; nothing written. {_PARITY_HELP[fmt]}") from None
            if got.shape != reference.shape:
                raise ExportParityError(f"{fmt} output shape {got.shape} != PyTorch {reference.shape} for input {shape}; "
                                        f"nothing written. {_PARITY_HELP[fmt]}")
            diff = float(np.abs(got - reference).max())
            ok = bool(np.allclose(got, reference, rtol=float(cfg.rtol), atol=float(cfg.atol)))
            checks.append({"input": list(shape), "max_abs_diff": diff, "ok": ok})
            if not ok:
                raise ExportParityError(
                    f"{fmt} export of {loaded.module.net.name} differs from PyTorch on input {shape}: max |diff| "
                    f"{diff:.3g} (atol {cfg.atol}, rtol {cfg.rtol}); nothing written. {_PARITY_HELP[fmt]}"
                )
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
                  "channels": channels, "size_multiple": multiple, "dynamic": ["batch", "height", "width"]},
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
