import re

import pytest
import torch

from segkit.models import build_model, count_parameters


def segnet_reference_count(in_channels, num_classes, base_width, depth=7, max_width=1024):
    """Closed-form parameter count: conv3x3 without bias (9·cin·cout) + BN (2·cout) per layer."""
    def convs(cin, cout, n):
        total, c = 0, cin
        for _ in range(n):
            total += 9 * c * cout + 2 * cout
            c = cout
        return total

    widths = [min(base_width * 2**i, max_width) for i in range(depth)]
    center = min(widths[-1] * 2, max_width)
    total, c = 0, in_channels
    for w in widths:
        total += convs(c, w, 2)
        c = w
    total += convs(c, center, 2)
    c = center
    for w in reversed(widths):
        total += convs(c + w, w, 3)
        c = w
    return total + c * num_classes + num_classes


@pytest.mark.parametrize(
    "name, params, size",
    [
        ("mobilenet_unet", {}, 64),
        ("unet", {"encoder_name": "resnet18"}, 64),
        ("segnet", {"base_width": 4}, 128),
    ],
)
@pytest.mark.parametrize("num_classes", [1, 5])
def test_output_shape(name, params, size, num_classes):
    model = build_model(name, in_channels=3, num_classes=num_classes, **params).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size * 2))
    assert out.shape == (2, num_classes, size, size * 2)


def test_in_channels():
    model = build_model("mobilenet_unet", in_channels=1, num_classes=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 8, 32, 32)


def test_parameter_counts():
    # the Airbus project reported ~6.5M for its MobileNetV2 U-Net
    assert count_parameters(build_model("mobilenet_unet", 3, 1)) == 6_628_945
    assert count_parameters(build_model("unet", 3, 1)) == 24_436_369  # resnet34 default
    for width, classes in [(8, 1), (4, 3)]:
        model = build_model("segnet", 3, classes, base_width=width)
        assert count_parameters(model) == segnet_reference_count(3, classes, width)


@pytest.mark.parametrize(
    "name, params, multiple, shape, suggestion",
    [
        ("mobilenet_unet", {}, 32, (70, 64), "96x64"),
        ("unet", {"encoder_name": "resnet18", "encoder_depth": 4, "decoder_channels": [64, 32, 16, 8]}, 16, (40, 48), "48x48"),
        ("segnet", {"base_width": 2}, 128, (1280, 1918), "1280x1920"),
    ],
)
def test_size_multiple_error(name, params, multiple, shape, suggestion):
    model = build_model(name, 3, 1, **params)
    assert model.size_multiple == multiple
    with pytest.raises(ValueError, match=f"multiples of {multiple}, got {shape[0]}x{shape[1]}.*{suggestion}"):
        model(torch.randn(1, 3, *shape))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet'; available: mobilenet_unet, segnet, smp, unet"):
        build_model("resnet", 3, 1)


def test_local_encoder_weights(tmp_path):
    source = build_model("mobilenet_unet", 3, 1)
    path = tmp_path / "encoder.pth"
    torch.save(source.net.encoder.state_dict(), path)
    loaded = build_model("mobilenet_unet", 3, 1, encoder_weights=str(path))
    for key, value in source.net.encoder.state_dict().items():
        assert torch.equal(loaded.net.encoder.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("mobilenet_unet", 3, 1, encoder_weights=str(tmp_path / "missing.pth"))
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth: encoder weights do not fit the encoder: \d+ missing \(e.g. .*\); "
                                         r"1 unexpected \(e.g. nonsense\) of \d+ keys. Are they for another encoder"):
        build_model("mobilenet_unet", 3, 1, encoder_weights=str(tmp_path / "bad.pth"))
    # not a weights file at all: one line, not torch's unpickler internals
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match=r"text.pth: not a PyTorch weights file torch.load can read \(.*\); "
                                         r"model.encoder_weights takes a file saved with torch.save") as err:
        build_model("mobilenet_unet", 3, 1, encoder_weights=str(tmp_path / "text.pth"))
    assert "\n" not in str(err.value) and len(str(err.value)) < 500
    # a segkit checkpoint: its encoder's weights
    torch.save({"state_dict": {f"net.net.encoder.{k}": v for k, v in source.net.encoder.state_dict().items()}},
               tmp_path / "run.ckpt")
    from_run = build_model("mobilenet_unet", 3, 1, encoder_weights=str(tmp_path / "run.ckpt"))
    for key, value in source.net.encoder.state_dict().items():
        assert torch.equal(from_run.net.encoder.state_dict()[key], value)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on a machine without the internet."""
    import socket

    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable (test guard)")

    def refuse_connection(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable (test guard)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_connection)
    return attempts


def test_named_weights_offline_and_not_cached_fail_at_once_naming_cache_and_local_file(no_network, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValueError, match=(
            r"model.encoder_weights=imagenet: the pretrained weights of encoder mobilenet_v2 \(smp-hub/mobilenet_v2.imagenet "
            rf"on the Hugging Face hub\) are not in the cache \({re.escape(str(tmp_path / 'hub'))}\) and huggingface.co "
            r"cannot be reached .* model.encoder_weights=/path/to/encoder.pth")):
        build_model("mobilenet_unet", 3, 1, encoder_weights="imagenet")
    assert no_network == [("huggingface.co", 443)]  # one quick probe, nothing that could hang
    with pytest.raises(ValueError, match=r"encoder resnet34 has no such pretrained weights; it has imagenet"):
        build_model("smp", 3, 1, arch="FPN", encoder_weights="instagram")


def test_named_weights_in_the_cache_load_without_the_network(no_network, tmp_path, monkeypatch):
    """The Hugging Face cache simulated with a small file, as torchgeo's tests do: the weights
    smp would download, already there, load with every connection refused."""
    from huggingface_hub import constants
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    settings = encoders["mobilenet_v2"]["pretrained_settings"]["imagenet"]
    torch.manual_seed(3)
    source = get_encoder("mobilenet_v2", weights=None)
    snapshot = (tmp_path / "hub" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"])
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    net = build_model("mobilenet_unet", 3, 1, encoder_weights="imagenet")
    assert no_network == []
    for key, value in source.state_dict().items():
        assert torch.equal(net.net.encoder.state_dict()[key], value), key


def _cached_smp_config(tmp_path, monkeypatch, encoder: str, config: dict) -> None:
    """The config.json smp downloads beside an encoder's weights, in a simulated cache."""
    import json

    from huggingface_hub import constants
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    snapshot = (tmp_path / "hub" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"])
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_pretraining_statistics_come_from_the_weights_own_config(no_network, tmp_path, monkeypatch):
    from segkit.models import pretraining_statistics

    _cached_smp_config(tmp_path, monkeypatch, "resnet34", {"mean": [0.1, 0.2, 0.6], "std": [0.3, 0.2, 0.1]})
    stats = pretraining_statistics({"name": "unet", "encoder_weights": "imagenet"}, 3)
    assert stats["mean"] == [0.1, 0.2, 0.6] and stats["std"] == [0.3, 0.2, 0.1]
    assert "smp-hub/resnet34.imagenet" in stats["source"]
    # one channel: smp sums the first convolution's RGB weights, so the RGB means; four: they repeat
    one = pretraining_statistics({"name": "smp", "encoder_name": "resnet34", "encoder_weights": "imagenet"}, 1)
    assert one["mean"] == pytest.approx([0.3]) and one["std"] == pytest.approx([0.2])
    four = pretraining_statistics({"name": "smp", "encoder_name": "resnet34", "encoder_weights": "imagenet"}, 4)
    assert four["mean"] == [0.1, 0.2, 0.6, 0.1]
    # configs in 0..255 units (input_range) become fractions of the pixel range
    _cached_smp_config(tmp_path, monkeypatch, "resnet34", {"mean": [25.5, 51.0, 102.0], "std": [51.0, 51.0, 51.0],
                                                           "input_range": [0, 255]})
    assert pretraining_statistics({"name": "unet", "encoder_weights": "imagenet"}, 3)["mean"] == pytest.approx([0.1, 0.2, 0.4])
    # timm's encoders keep them in timm's pretrained config, nothing to fetch
    tu = pretraining_statistics({"name": "smp", "encoder_name": "tu-resnet18", "encoder_weights": "imagenet"}, 3)
    assert tu["mean"] == pytest.approx([0.485, 0.456, 0.406]) and tu["std"] == pytest.approx([0.229, 0.224, 0.225])
    # from scratch, a local file, an architecture without an encoder: the data's normalisation stays
    for model in ({"name": "unet", "encoder_weights": None}, {"name": "unet", "encoder_weights": str(tmp_path / "e.pth")},
                  {"name": "segnet"}):
        assert pretraining_statistics(model, 3) is None
    assert no_network == []
    # a config without statistics is named, with the way around it
    _cached_smp_config(tmp_path, monkeypatch, "resnet34", {"input_space": "RGB"})
    with pytest.raises(ValueError, match=r"config.json: the config of smp-hub/resnet34.imagenet gives no readable "
                                         r"mean/std .*model.normalize_from_weights=false"):
        pretraining_statistics({"name": "unet", "encoder_weights": "imagenet"}, 3)


def test_pretraining_statistics_offline_and_not_cached_fail_at_once(no_network, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from segkit.models import pretraining_statistics

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValueError, match=r"encoder mobilenet_v2 .* are not in the cache"):
        pretraining_statistics({"name": "mobilenet_unet", "encoder_weights": "imagenet"}, 3)
    assert no_network == [("huggingface.co", 443)]


def test_training_from_pretrained_weights_normalises_with_their_statistics(no_network, tmp_path, monkeypatch, caplog):
    """The run's checkpoint (what predict, eval and export apply) carries the encoder's pretraining
    mean/std in place of the dataset's; normalize_from_weights=false keeps the dataset's."""
    import logging

    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    from segkit.checkpoint import load_checkpoint
    from segkit.train import run_training
    from tests.helpers import compose_config

    _cached_smp_config(tmp_path, monkeypatch, "mobilenet_v2", {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    settings = encoders["mobilenet_v2"]["pretrained_settings"]["imagenet"]
    snapshot = (tmp_path / "hub" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"])
    save_file({k: v.contiguous() for k, v in get_encoder("mobilenet_v2", weights=None).state_dict().items()},
              snapshot / "model.safetensors")
    common = ["dataset=synthetic", "data.num_images=8", "data.size=64", "data.image_size=64", "data.batch_size=4",
              f"data.cache_dir={tmp_path / 'work'}", "trainer.fast_dev_run=1", "logger=csv", "model=mobilenet_unet",
              "model.encoder_weights=imagenet"]
    with caplog.at_level(logging.INFO, logger="segkit.stage"):
        summary = run_training(compose_config("train", [*common, f"paths.run_dir={tmp_path / 'run'}"]))
    normalize = load_checkpoint(summary["last_checkpoint"]).preprocessing["normalize"]
    assert normalize == {"normalization": "standard", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                         "max_pixel_value": 255.0}
    assert ("normalize: mean [0.100, 0.200, 0.300], std [0.400, 0.500, 0.600] of the pretrained encoder "
            "(smp-hub/mobilenet_v2.imagenet (config.json)) in place of data.normalize") in caplog.text
    kept = run_training(compose_config("train", [*common, "model.normalize_from_weights=false",
                                                 f"paths.run_dir={tmp_path / 'run2'}"]))
    normalize = load_checkpoint(kept["last_checkpoint"]).preprocessing["normalize"]
    assert normalize == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "max_pixel_value": 255.0}
    # data normalised per image (dataset=folder's default): standard with the encoder's statistics,
    # in the dtype's range, not the per-image mode with unused mean/std beside it
    per_image = run_training(compose_config("train", [*common, "~data.normalize", "+data.normalize.normalization=image",
                                                      f"paths.run_dir={tmp_path / 'run3'}"]))
    normalize = load_checkpoint(per_image["last_checkpoint"]).preprocessing["normalize"]
    assert normalize == {"normalization": "standard", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                         "max_pixel_value": None}
    assert no_network == []
    # the checkpoint holds the trained weights: predict, eval and export rebuild it with the
    # pretrained weights gone from the cache and no network
    for path in snapshot.iterdir():
        path.unlink()
    assert load_checkpoint(summary["last_checkpoint"]).module.hparams.model["encoder_weights"] is None
    assert no_network == []
