"""Per-step hardware metrics: memory and model FLOPs utilisation (MFU).

Memory is the peak CUDA memory allocated on a GPU, and the peak resident set size of the
process on a CPU (what the operating system had to hold for it: tensors, the Python heap,
loaded libraries); the two are not comparable with each other, only across steps and runs on
the same kind of device. MFU is the model's FLOPs per second (``model/flops.py``: the analytical
matmul count, 3x the forward, recomputation not counted) over the devices' dense bf16 peak;
it is reported on GPUs only, where a peak is known.
"""

from __future__ import annotations

import resource
import sys
from typing import Optional

import torch

# dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, from the vendors' data sheets
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def peak_tflops(device: torch.device, override: float = 0.0) -> Optional[float]:
    """The device's dense bf16 peak in TFLOP/s: ``override`` when > 0, else by GPU name; None
    on a CPU or an unknown GPU."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated (GPU) or peak resident set size of this process (CPU), GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def memory_label(device: torch.device) -> str:
    return "cuda peak" if device.type == "cuda" else "peak rss"
