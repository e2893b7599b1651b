"""GPU probe (SPEC §5): name → short type, NVML through a fake module at the edge, and the real
no-GPU fallback of this machine."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

from node.gpu import GpuInfo, detect_gpu, short_type


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H100 NVL", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A40", "A40"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA RTX A6000", "A6000"),
        ("NVIDIA A6000", "A6000"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX3090Ti"),
        ("NVIDIA GeForce RTX 4070 SUPER", "RTX4070SUPER"),
        ("NVIDIA GeForce GTX 1080 Ti", "GTX1080Ti"),
        ("cpu", "cpu"),
        ("Some Future Accelerator", "SomeFutureAccelerator"),
    ],
)
def test_short_type(name: str, short: str) -> None:
    assert short_type(name) == short


class _FakeNvml:
    """The few pynvml calls the probe makes, answering like one A100 would."""

    def __init__(self, name: Any = "NVIDIA A100-SXM4-80GB", *, init_error: bool = False) -> None:
        self.name = name
        self.init_error = init_error
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        assert index == 0
        return 7

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return self.name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=85_899_345_920, free=1, used=2)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"


def test_detects_the_gpu_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert detect_gpu() == GpuInfo(
        name="NVIDIA A100-SXM4-80GB", type="A100", memory_bytes=85_899_345_920, driver="550.54.15"
    )
    assert fake.shutdown


def test_old_pynvml_returning_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(b"NVIDIA L40S"))
    info = detect_gpu()
    assert (info.name, info.type) == ("NVIDIA L40S", "L40S")


def test_override_sets_the_type_and_keeps_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    info = detect_gpu("A100-80G")
    assert (info.name, info.type) == ("NVIDIA A100-SXM4-80GB", "A100-80G")


def test_no_nvml_library_means_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(init_error=True))
    assert detect_gpu() == GpuInfo(name="cpu", type="cpu", memory_bytes=None, driver=None)


def test_no_pynvml_module_means_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert detect_gpu().type == "cpu"
    assert detect_gpu("T4") == GpuInfo(name="cpu", type="T4", memory_bytes=None, driver=None)


def test_real_probe_on_this_machine() -> None:
    """Real NVML: on a host without an NVIDIA driver this is the cpu fallback."""
    info = detect_gpu()
    if info.name == "cpu":
        assert (info.type, info.memory_bytes, info.driver) == ("cpu", None, None)
    else:  # a GPU host: the type is derived from the real name
        assert info.type == short_type(info.name)
        assert info.memory_bytes and info.memory_bytes > 0
