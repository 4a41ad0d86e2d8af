"""model=smp: every segmentation-models-pytorch architecture on any encoder — forward and
backward at a tiny size, the size multiple each declares (and its message), the image-level
classification head, the convenience configs, and a sweep over them through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from segkit.models import ARCHITECTURES, build_model
from tests.helpers import compose_config, run_segkit

#: small encoders, so that each architecture builds and steps in about a second
SMALL = {arch: "resnet18" for arch in ARCHITECTURES} | {"Segformer": "mit_b0", "DPT": "tu-vit_tiny_patch16_224"}
#: the multiple each declares on its default encoder depth (the encoder's output stride)
MULTIPLE = {arch: 32 for arch in ARCHITECTURES} | {"PSPNet": 8, "DeepLabV3": 8, "DeepLabV3Plus": 16, "PAN": 16, "DPT": 32}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_a_step_and_declares_its_size_multiple(arch):
    torch.manual_seed(0)
    net = build_model("smp", in_channels=2, num_classes=3, arch=arch, encoder_name=SMALL[arch],
                      classification_head=True)
    assert net.size_multiple == MULTIPLE[arch] and net.name == f"{arch}/{SMALL[arch]}"
    side = max(net.min_size, 2 * net.size_multiple)
    x = torch.randn(2, 2, side, side)
    logits = net(x)
    assert logits.shape == (2, 3, side, side)
    image_logits = net.classify(x)
    assert image_logits.shape == (2, 1)
    (logits.square().mean() + image_logits.square().mean()).backward()
    encoder_grads = [p.grad for p in net.net.encoder.parameters() if p.requires_grad]
    assert encoder_grads and all(g is not None for g in encoder_grads[:3])
    assert sum(float(g.abs().sum()) for g in encoder_grads if g is not None) > 0
    with pytest.raises(ValueError, match=f"needs input height and width that are multiples of {MULTIPLE[arch]}, "
                                         f"got {side + MULTIPLE[arch] // 2}x{side}"):
        net(torch.randn(1, 2, side + MULTIPLE[arch] // 2, side))


def test_pan_says_its_smallest_input_and_names_are_case_insensitive():
    net = build_model("smp", 3, 1, arch="pan", encoder_name="resnet18")
    assert net.name == "PAN/resnet18" and net.min_size == 128
    with pytest.raises(ValueError, match=r"needs inputs of at least 128x128 .* got 64x64: data.image_size=128 or more"):
        net(torch.randn(1, 3, 64, 64))


def test_an_unknown_architecture_or_encoder_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"model.arch='UNet3D' is not an smp architecture; did you mean Unet\? choose one of Unet, "
                                         r"UnetPlusPlus, FPN, .*Segformer, DPT"):
        build_model("smp", 3, 1, arch="UNet3D")
    with pytest.raises(ValueError, match=r"model.encoder_name='resnet35' is no smp encoder: did you mean resnet50 or resnet34 or resnet152\? "):
        build_model("smp", 3, 1, arch="FPN", encoder_name="resnet35")


@pytest.mark.parametrize(("config", "arch", "encoder"), [
    ("deeplabv3plus", "DeepLabV3Plus", "resnet34"), ("fpn", "FPN", "resnet34"),
    ("unetplusplus", "UnetPlusPlus", "resnet34"), ("segformer", "Segformer", "mit_b0"),
    ("upernet", "UPerNet", "resnet34"), ("smp", "Unet", "resnet34"),
])
def test_the_convenience_configs_compose_to_their_architecture(config, arch, encoder):
    cfg = compose_config("train", [f"model={config}"])
    assert cfg.model.name == "smp" and cfg.model.arch == arch and cfg.model.encoder_name == encoder
    assert cfg.model.encoder_weights is None  # nothing downloads unless asked


@pytest.mark.slow
def test_a_sweep_over_architectures_trains_each_and_its_summary_compares_them(tmp_path):
    """The issue's 'done when': segkit-train -m model=unet,fpn,deeplabv3plus,segformer on the demo data."""
    sweep = tmp_path / "sweep"
    result = run_segkit("segkit-train", "-m", "model=unet,fpn,deeplabv3plus,segformer", "trainer.fast_dev_run=1",
                        "data.num_images=40", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (sweep / "summary.md").read_text()
    for model in ("unet", "fpn", "deeplabv3plus", "segformer"):
        assert f"model={model}" in summary, summary
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 4
    overrides = {run: (run / ".hydra" / "overrides.yaml").read_text() for run in runs}
    multiple_16 = [run for run, text in overrides.items() if "model=deeplabv3plus" in text]
    # every architecture's checkpoint loads and predicts, scored by segkit-eval: the three of size
    # multiple 32 as one ensemble, DeepLabV3+ (16) alone (an ensemble's windows must agree)
    for name, ckpts in (("eval32", [run for run in runs if run not in multiple_16]), ("eval16", multiple_16)):
        spec = "[" + ",".join(f"{run}/checkpoints/best.ckpt" for run in ckpts) + "]"
        result = run_segkit("segkit-eval", f"ckpt={spec}", f"output={tmp_path / name}", "worst=0", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        scores = json.loads((tmp_path / name / "scores.json").read_text())
        named = scores["checkpoint"] if isinstance(scores["checkpoint"], list) else [scores["checkpoint"]]
        assert len(named) == len(ckpts) and 0 <= scores["mean"]["dice"] <= 1
    # ONNX: FPN and Segformer export with parity, height and width dynamic (Segformer's batch was
    # fixed while the export was traced on a batch of 1)
    for name in ("fpn", "segformer"):
        run = next(run for run, text in overrides.items() if f"model={name}" in text)
        result = run_segkit("segkit-export", f"ckpt={run}/checkpoints/last.ckpt", f"output={tmp_path / name}.onnx",
                            cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        sidecar = json.loads((tmp_path / f"{name}.onnx.json").read_text())
        assert sidecar["input"]["dynamic"] == ["batch", "height", "width"] and all(c["ok"] for c in sidecar["parity"])


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One synthetic dataset for the per-architecture runs (written once, not twelve times)."""
    return tmp_path_factory.mktemp("synthetic-cache")


#: trained, evaluated and exported through the console apps by the sweep test below
SWEPT = ("Unet", "FPN", "DeepLabV3Plus", "Segformer")


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in SWEPT])
def test_every_architecture_trains_through_the_cli_config_and_predicts_from_its_checkpoint(arch, tmp_path, shared_cache):
    """(The architectures the sweep test does not already train through the CLI.)
    segkit-train's config path (fast_dev_run: a batch of training and validation, then the
    run dir), then the checkpoint alone rebuilds the network for the predictor: an image of
    the export size gives the module's own probabilities, an off-multiple one is padded."""
    import numpy as np

    from segkit.checkpoint import load_checkpoint
    from segkit.data.normalize import Normalizer
    from segkit.predictor import Predictor, Preprocessing
    from segkit.train import run_training

    side = 128 if arch == "PAN" else 64
    summary = run_training(compose_config("train", [
        "dataset=synthetic", "data.num_images=8", f"data.size={side}", f"data.image_size={side}", "data.batch_size=2",
        f"data.cache_dir={shared_cache}", "trainer.fast_dev_run=1", "logger=csv", "model=smp", f"model.arch={arch}",
        f"model.encoder_name={SMALL[arch]}", f"paths.run_dir={tmp_path / 'run'}"]))
    assert "val/dice" in summary["final"]
    loaded = load_checkpoint(summary["last_checkpoint"])
    assert loaded.module.net.name == f"{arch}/{SMALL[arch]}"
    predictor = Predictor(loaded.module, Preprocessing.from_checkpoint(loaded.preprocessing), tile=side, overlap=0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    got = predictor.predict(image, keep_probabilities=True)
    with torch.no_grad():
        x = Normalizer(loaded.preprocessing["normalize"])(torch.from_numpy(image)[None])
        expected = torch.sigmoid(loaded.module(x.contiguous()))[0].numpy()
    np.testing.assert_allclose(got.probabilities, expected, atol=1e-4)
    odd = predictor.predict(rng.integers(0, 256, (side + 7, side - 5, 3), dtype=np.uint8))
    assert odd.labels.shape == (side + 7, side - 5) and set(np.unique(odd.labels)) <= {0, 1}
