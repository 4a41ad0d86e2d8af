import pytest
from omegaconf import OmegaConf

from segkit import runtime


@pytest.mark.parametrize(
    "cuda, capability, cpu_bf16, expected",
    [(True, (7, 5), False, "16-mixed"),  # T4: bf16 only emulated, so fp16 with a gradient scaler
     (True, (7, 0), True, "16-mixed"),  # V100 (the CPU's bf16 does not matter on a GPU)
     (True, (8, 0), False, "bf16-mixed"),  # A100
     (True, (9, 0), False, "bf16-mixed"),  # H100
     (False, None, True, "bf16-mixed"),
     (False, None, False, "32-true")],
)
def test_auto_precision(monkeypatch, cuda, capability, cpu_bf16, expected):
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(runtime.torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: cpu_bf16)
    assert runtime.resolve_precision("auto", "auto") == expected


@pytest.mark.parametrize("count", [1, 4])
def test_devices_auto_is_one_gpu_and_says_how_to_use_all(monkeypatch, count):
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(runtime.torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    trainer = OmegaConf.create({"accelerator": "auto", "devices": "auto", "precision": "auto", "max_epochs": 3})
    requested, line = runtime.resolve_machine(trainer)
    assert requested == {"accelerator": "auto", "devices": "auto", "precision": "auto"}
    assert (trainer.accelerator, trainer.devices, trainer.precision) == ("gpu", 1, "bf16-mixed")
    assert line.startswith("machine: accelerator gpu (auto), devices 1 (auto), precision bf16-mixed (auto)")
    assert (f"trainer.devices={count} (or -1) trains on all of them with DDP" in line) is (count > 1)
    assert runtime.resolve_devices(2, "gpu") == (2, "") and runtime.resolve_devices(-1, "auto") == (-1, "")


def test_explicit_values_pass_through(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("32-true", "cpu") == "32-true"
    assert runtime.resolve_precision(64, "cpu") == "64"
    assert runtime.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert runtime.resolve_accelerator("cpu") == "cpu"


def test_bf16_flag_detection_reads_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "Path", lambda _: cpuinfo)
    for flags, expected in [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 sse", True)]:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        runtime.cpu_has_native_bf16.cache_clear()
        assert runtime.cpu_has_native_bf16() is expected
    runtime.cpu_has_native_bf16.cache_clear()
