import pytest

from segkit import runtime


@pytest.mark.parametrize(
    "cuda, bf16, expected",
    [(True, False, "16-mixed"), (True, True, "16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")],
)
def test_auto_precision(monkeypatch, cuda, bf16, expected):
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: bf16)
    assert runtime.resolve_precision("auto", "auto") == expected


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
