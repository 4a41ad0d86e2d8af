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
    with pytest.raises(ValueError, match="bad.pth: encoder weights do not fit"):
        build_model("mobilenet_unet", 3, 1, encoder_weights=str(tmp_path / "bad.pth"))


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
