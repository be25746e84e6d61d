"""Where the run computes: the ``--device``, ``--dtype`` and ``--precision`` settings resolved
against this machine, and the machine's description that every row carries.

One module so that ``bench run``, ``bench perf`` and ``bench cost`` agree on what ``auto`` means.
"""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

DTYPES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")
PRECISIONS = ("auto", "fp32", "bf16")


def check_device_name(name: str) -> None:
    """The spellings ``--device`` takes; whether that device exists is ``resolve_device``'s question
    (asked where the run runs: a Ray driver need not have the workers' GPUs)."""
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; a GPU asked for must exist."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu or auto")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The LM's dtype: ``auto`` is bf16 on a GPU and fp32 on a CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the sparse layers' compute; None means no autocast.

    On CUDA, ``auto`` and ``bf16`` also let the matmuls left in fp32 use TF32 tensor cores; an
    explicit ``fp32`` turns TF32 off, so it means IEEE fp32 (the paper's reference setup).
    """
    if device.type == "cuda":
        tf32 = name != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if name == "bf16" or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def precision_label(autocast: torch.dtype | None, device: torch.device) -> str:
    """What the sparse layers' matmuls really run in: bf16 (autocast), tf32 or fp32."""
    if autocast is not None:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, str(autocast).replace("torch.", ""))
    return "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock stopped now is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its cores and torch threads (rows store this)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
