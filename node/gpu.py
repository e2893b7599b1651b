"""The GPU this node runs on, read through NVML (SPEC §5), and its short type for prices.

No GPU, no driver or no NVML library: type and name `cpu`. `--gpu-type` overrides the type
(the detected name is kept, so the meter still records the real hardware).
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)

CPU = "cpu"

# Ordered: the first pattern found in the name wins, so longer names come before their prefixes
# (GH200 before H200, RTX A6000 before A6000 before A600, H100 NVL stays H100).
_TYPES: tuple[tuple[str, str], ...] = (
    (r"GH200", "GH200"),
    (r"GB200", "GB200"),
    (r"B200", "B200"),
    (r"B100", "B100"),
    (r"H200", "H200"),
    (r"H100", "H100"),
    (r"H800", "H800"),
    (r"H20\b", "H20"),
    (r"A100", "A100"),
    (r"A800", "A800"),
    (r"A10G", "A10G"),
    (r"A10\b", "A10"),
    (r"A30\b", "A30"),
    (r"A40\b", "A40"),
    (r"A16\b", "A16"),
    (r"A2\b", "A2"),
    (r"L40S", "L40S"),
    (r"L40\b", "L40"),
    (r"L20\b", "L20"),
    (r"L4\b", "L4"),
    (r"T4\b", "T4"),
    (r"V100", "V100"),
    (r"P100", "P100"),
    (r"P40\b", "P40"),
    (r"P4\b", "P4"),
    (r"K80\b", "K80"),
    (r"RTX\s+PRO\s+(\d{4})\s+Blackwell", r"RTXPRO\1"),
    (r"RTX\s+(A\d{4})", r"\1"),  # RTX A6000 → A6000
    (r"\bA(\d{4})\b", r"A\1"),  # A6000, A5000, A4000 (workstation)
    (r"RTX\s+(\d{4})\s+Ada", r"RTX\1Ada"),  # RTX 6000 Ada Generation
    (r"(?:GeForce\s+)?(RTX|GTX)\s+(\d{3,4})\s*(Ti|SUPER)?", r"\1\2\3"),
    (r"Quadro\s+(RTX\s+)?(\w+)", r"Quadro\2"),
    (r"TITAN\s+(\w+)", r"TITAN\1"),
)


@dataclass
class GpuInfo:
    name: str  # full name as NVML reports it, e.g. "NVIDIA A100-SXM4-80GB"
    type: str  # short type used for prices, e.g. "A100"
    memory_bytes: int | None
    driver: str | None


def short_type(name: str) -> str:
    """`NVIDIA A100-SXM4-80GB` → `A100`, `NVIDIA GeForce RTX 4090` → `RTX4090`.

    An unknown name becomes its words without the vendor prefix, joined (never empty).
    """
    text = name.strip()
    if not text or text.lower() == CPU:
        return CPU
    for pattern, replacement in _TYPES:
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match:
            short = re.sub(r"\s+", "", match.expand(replacement)).upper()
            return short[:-2] + "Ti" if short.endswith("TI") and "TITAN" not in short else short
    words = re.sub(r"^(NVIDIA|Tesla)\s+", "", text, flags=re.IGNORECASE).split()
    return "".join(words) or CPU


def detect_gpu(override: str | None = None) -> GpuInfo:
    """GPU 0 through NVML; `cpu` without one. `override` replaces the short type only."""
    info = _probe()
    if override:
        info.type = override.strip()
    return info


def _probe() -> GpuInfo:
    cpu = GpuInfo(name=CPU, type=CPU, memory_bytes=None, driver=None)
    nvml = _load_pynvml()
    if nvml is None:
        return cpu
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError: no driver / no library on this host
        log.info("no NVML (%s): metering as cpu", exc)
        return cpu
    try:
        if nvml.nvmlDeviceGetCount() < 1:
            return cpu
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        name = _text(nvml.nvmlDeviceGetName(handle))
        memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        return GpuInfo(name=name, type=short_type(name), memory_bytes=memory, driver=driver)
    except Exception as exc:
        log.warning("NVML could not describe GPU 0 (%s): metering as cpu", exc)
        return cpu
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


def _load_pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
