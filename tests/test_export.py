"""segkit-export: ONNX and TorchScript outputs equal PyTorch's, on two input sizes."""

import json
import logging
import os
import pathlib
import re

import numpy as np
import pytest
import torch

from segkit.checkpoint import load_checkpoint
from segkit.export import run_export
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run / "checkpoints" / "last.ckpt"


def export(ckpt, *overrides):
    return run_export(compose_config("export", [f"ckpt={ckpt}", *overrides]))


def export_steps(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "segkit.export"]


def test_onnx_matches_pytorch(ckpt, tmp_path, caplog):
    import onnxruntime as ort

    caplog.set_level(logging.INFO, logger="segkit.export")
    info = export(ckpt, "format=onnx", f"output={tmp_path / 'model.onnx'}")
    # the ~20 s of work are narrated step by step, in order, as they start
    steps = export_steps(caplog)
    assert len(steps) == 4, steps
    assert steps[0] == f"loading checkpoint {ckpt}"
    assert steps[1].startswith("exporting to ONNX at 64x64 (opset 18;")
    assert steps[2].startswith("exported in ") and "checking parity with PyTorch on two inputs: 2x3x64x64 and 1x3x" in steps[2]
    assert steps[3].startswith(f"onnx model written to {tmp_path / 'model.onnx'} (parity with PyTorch")
    assert [c["ok"] for c in info["parity"]] == [True, True]
    assert max(c["max_abs_diff"] for c in info["parity"]) < 1e-4
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["preprocessing"]["normalize"]["mean"] == [0.485, 0.456, 0.406]
    assert sidecar["output"]["activation"] == "sigmoid"
    # independently of the export's own check: another size, batch 3
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 96, 160)
    module = load_checkpoint(ckpt).module
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, rtol=1e-3, atol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in 2.14
def test_torchscript_with_probabilities(ckpt, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segkit.export")
    info = export(ckpt, "format=torchscript", "activation=probabilities", f"output={tmp_path / 'model.pt'}")
    assert [m.split(" ")[0] for m in export_steps(caplog)] == ["loading", "exporting", "exported", "torchscript"]
    assert "exporting to TorchScript at 64x64 (traced;" in export_steps(caplog)[1]
    assert all(c["ok"] for c in info["parity"])
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.sigmoid(load_checkpoint(ckpt).module(x))
    torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)


def test_export_refuses_to_overwrite_and_unknown_formats(ckpt, tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="model.pt"):
        export(ckpt, "format=torchscript", f"output={target}")
    assert target.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="format=tflite: choose onnx or torchscript"):
        export(ckpt, "format=tflite")


@pytest.fixture
def no_export_work(monkeypatch):
    """Loading the checkpoint is the first piece of export work: it must not be reached."""
    def refuse(*args, **kwargs):
        raise AssertionError("the export work started before the output folder was checked")

    monkeypatch.setattr("segkit.export.load_checkpoint", refuse)


def test_output_under_a_file_fails_before_the_export(ckpt, tmp_path, caplog, no_export_work):
    # fails for root too: a folder cannot be made where a file is
    (tmp_path / "afile").write_text("not a folder")
    caplog.set_level(logging.INFO, logger="segkit.export")
    with pytest.raises(PermissionError, match=r"cannot write to .*afile \(.*afile is a file, not a folder\): choose another output= \(a file name, or a folder ending in /\)"):
        export(ckpt, "format=onnx", f"output={tmp_path / 'afile' / 'model.onnx'}")
    assert export_steps(caplog) == []


def test_an_output_folder_gets_the_file_inside(ckpt, tmp_path):
    """``output=exp/`` (or an existing folder) is a folder: the model goes inside, named after the checkpoint."""
    export(ckpt, "format=torchscript", f"output={tmp_path / 'exp'}/")
    assert (tmp_path / "exp" / f"{ckpt.stem}.pt").is_file() and (tmp_path / "exp" / f"{ckpt.stem}.pt.json").is_file()


def test_read_only_output_folder_fails_before_the_export(ckpt, tmp_path, monkeypatch, no_export_work):
    """The write probe of ``require_writable`` refused, as on a read-only folder (root included)."""
    write_bytes = pathlib.Path.write_bytes

    def read_only(path, data):
        if path.name.startswith(".segkit-write-test"):
            raise PermissionError(13, "Permission denied", str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    with pytest.raises(PermissionError, match=r"cannot write to .*ro \(Permission denied\): choose another output="):
        export(ckpt, "format=torchscript", f"output={tmp_path / 'ro' / 'model.pt'}")
    assert not (tmp_path / "ro" / "model.pt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o500 does not stop root from writing "
                    "(test_read_only_output_folder_fails_before_the_export covers this case)")
def test_chmod_read_only_output_folder_fails_before_the_export(ckpt, tmp_path, no_export_work):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"cannot write to .*ro \(Permission denied\): choose another output="):
            export(ckpt, "format=torchscript", f"output={folder / 'model.pt'}")
    finally:
        folder.chmod(0o700)


def test_missing_checkpoint_creates_no_folders(tmp_path):
    missing = tmp_path / "typo" / "checkpoints" / "best.ckpt"
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        export(missing, "format=onnx")
    assert not (tmp_path / "typo").exists()


def _checkpoint_of(ckpt, tmp_path, model: dict, multiple: int):
    """``ckpt`` with its network swapped for ``model`` (freshly initialised): a segkit checkpoint
    of another architecture without training one."""
    from segkit.module import SegmentationModule

    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["hyper_parameters"]["model"] = model
    torch.manual_seed(0)
    checkpoint["state_dict"] = SegmentationModule(**checkpoint["hyper_parameters"]).state_dict()
    checkpoint["segkit"]["preprocessing"]["size_multiple"] = multiple
    path = tmp_path / "other.ckpt"
    torch.save(checkpoint, path)
    return path


def test_an_architecture_fixed_to_its_export_size_is_exported_at_that_size_with_a_warning(ckpt, tmp_path, caplog):
    """PSPNet's pyramid pooling exports only for the size it was traced at: dynamic_size=auto
    exports it with height and width fixed (batch dynamic), says so, and records the size;
    dynamic_size=true refuses it."""
    import onnxruntime as ort

    from segkit.export import ExportParityError

    psp = _checkpoint_of(ckpt, tmp_path, {"name": "smp", "arch": "PSPNet", "encoder_name": "resnet18"}, 8)
    with pytest.raises(ExportParityError, match=r"onnx export of PSPNet/resnet18 differs from PyTorch on input \(1, 3, 80, 72\): max \|diff\| "):
        export(psp, "dynamic_size=true", f"output={tmp_path / 'strict.onnx'}")
    assert not (tmp_path / "strict.onnx").exists()
    caplog.set_level(logging.INFO, logger="segkit.export")
    info = export(psp, f"output={tmp_path / 'psp.onnx'}")
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and re.fullmatch(
        r"the onnx export of PSPNet/resnet18 does not run right on other sizes than 64x64 \(max \|diff\| [0-9.e-]+ at other "
        r"sizes\): exporting again with height and width fixed to 64x64 \(the batch stays dynamic\)\. Feed it images or "
        r"windows of that size, or export at your image size with size=\[height,width\]", warning[0]), warning
    assert info["input"]["dynamic"] == ["batch"] and info["input"]["size"] == [64, 64]
    assert [c["input"] for c in info["parity"]] == [[2, 3, 64, 64], [1, 3, 64, 64]]
    assert json.loads((tmp_path / "psp.onnx.json").read_text())["input"]["size"] == [64, 64]
    session = ort.InferenceSession(str(tmp_path / "psp.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = load_checkpoint(psp).module(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 + 1e-3 * np.abs(expected).max()


def test_parity_is_measured_against_the_outputs_scale(ckpt, tmp_path, monkeypatch):
    """max |diff| <= atol + rtol * max |output|: float32 noise of 1e-4 on logits of tens passes
    (an element-wise check failed U-Net on values near zero), an error of 2% of the scale does not."""
    from segkit import export as export_module

    real = export_module._runner

    def shifted(by):
        def runner(fmt, path):
            run = real(fmt, path)
            return lambda x: (out := run(x)) + by * np.abs(out).max()
        return runner

    monkeypatch.setattr(export_module, "_runner", shifted(5e-4))
    info = export(ckpt, "format=torchscript", f"output={tmp_path / 'a.pt'}")
    assert all(c["ok"] and c["max_abs_diff"] > 1e-4 for c in info["parity"])
    monkeypatch.setattr(export_module, "_runner", shifted(0.02))
    with pytest.raises(export_module.ExportParityError, match=r"torchscript export of unet/mobilenet_v2 differs from PyTorch "
                                                              r"on input \(2, 3, 64, 64\): max \|diff\| .* against outputs up to"):
        export(ckpt, "format=torchscript", f"output={tmp_path / 'b.pt'}")
