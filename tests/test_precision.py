"""What `--precision` means on each device: autocast dtype, TF32 on CUDA, and the label rows record.

The CUDA cases only set and read torch's backend flags, so they run without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from bench.devices import precision_label, resolve_precision
from bench.perf.timing import warm_up

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(autouse=True)
def restore_tf32_flags():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("name, autocast, tf32, label", [
    ("auto", torch.bfloat16, True, "bf16"),
    ("bf16", torch.bfloat16, True, "bf16"),
    ("fp32", None, False, "fp32"),  # an explicit fp32 is IEEE fp32, as in the paper's setup
])
def test_cuda_precision(name: str, autocast, tf32: bool, label: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = not tf32  # the setting must be made, not inherited
    assert resolve_precision(name, CUDA) is autocast
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert precision_label(autocast, CUDA) == label


def test_float32_matmuls_on_cuda_under_auto_are_labelled_tf32() -> None:
    resolve_precision("auto", CUDA)
    assert precision_label(None, CUDA) == "tf32"


@pytest.mark.parametrize("name, autocast, label", [("auto", None, "fp32"), ("fp32", None, "fp32"),
                                                   ("bf16", torch.bfloat16, "bf16")])
def test_cpu_precision(name: str, autocast, label: str) -> None:
    assert resolve_precision(name, CPU) is autocast
    assert precision_label(autocast, CPU) == label


def test_warm_up_runs_for_the_time_asked_and_at_least_once() -> None:
    calls = []
    assert warm_up(lambda: calls.append(1), CPU, 0.0) == 1 == len(calls)
    slow = warm_up(lambda: sum(range(20_000)), CPU, 0.05)
    assert slow > 1
