"""segkit-export: ONNX and TorchScript outputs equal PyTorch's, on two input sizes."""

import json

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


def test_onnx_matches_pytorch(ckpt, tmp_path):
    import onnxruntime as ort

    info = export(ckpt, "format=onnx", f"output={tmp_path / 'model.onnx'}")
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
def test_torchscript_with_probabilities(ckpt, tmp_path):
    info = export(ckpt, "format=torchscript", "activation=probabilities", f"output={tmp_path / 'model.pt'}")
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
