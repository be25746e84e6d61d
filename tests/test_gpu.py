"""The CUDA path of every method: the same maths as on the CPU, gradients included, and bf16 training.

Skipped where there is no GPU (CI never has one); ``scripts/gpu_check.sh`` runs this file on a lent
GPU before it measures anything. In float64 the CUDA kernels (embedding_bag's, the gathered dot
products, TopK) must reproduce the CPU's result to rounding, so a wrong index or a missing
accumulation shows; bf16 autocast is then checked against the float32 result.
"""
from __future__ import annotations

import copy

import pytest
import torch

import methods
from methods import expand_method_names as expand_methods
from bench.train import OptimiserSettings, build_cell, train_step
from methods.lowrank_moe import gather_dot, gather_dot_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPEC = methods.LayerSpec(d_model=64, d_mlp=128, gated=True, activation="gelu_pytorch_tanh")
ALL = expand_methods(["all"])


def randomised(name: str) -> methods.SparseLayer:
    torch.manual_seed(0)
    layer = methods.create(name, SPEC, expansion=4, k=8)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
        layer.constrain()
    return layer


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu_in_float64_with_gradients(name: str) -> None:
    cpu = randomised(name).double()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(96, SPEC.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    outputs = []
    for layer, device in ((cpu, "cpu"), (gpu, "cuda")):
        source = x.detach().to(device).requires_grad_()  # a leaf on each device (x.to("cpu") is x itself)
        estimate, codes = layer(source)
        (estimate * torch.linspace(-1, 1, SPEC.d_model, dtype=torch.float64, device=device)).sum().backward()
        outputs.append((estimate, codes.indices.sort(-1).values, source.grad,
                        {n: p.grad for n, p in layer.named_parameters()}))
    (y_cpu, idx_cpu, gx_cpu, g_cpu), (y_gpu, idx_gpu, gx_gpu, g_gpu) = outputs
    assert torch.equal(idx_cpu, idx_gpu.cpu()), "TopK picked other units on the GPU"
    assert relative_error(y_gpu, y_cpu) < 1e-12
    assert relative_error(gx_gpu, gx_cpu) < 1e-12
    for param, grad in g_cpu.items():
        assert g_gpu[param] is not None, param
        assert relative_error(g_gpu[param], grad) < 1e-12 if grad.norm() > 0 else g_gpu[param].norm() == 0, param


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_stays_close_to_float32(name: str) -> None:
    layer = randomised(name).cuda()
    x = torch.randn(512, SPEC.d_model, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    reference, codes = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        estimate, low_codes = layer(x)
    # bf16 rounding flips a near-tie in the TopK for a few tokens (a large local change, not an error);
    # where the selection agrees the output must be within bf16's rounding.
    same = (codes.indices.sort(-1).values == low_codes.indices.sort(-1).values).all(-1)
    assert estimate.isfinite().all() and same.float().mean() > 0.85
    assert relative_error(estimate.float()[same], reference[same]) < 1e-2


@pytest.mark.parametrize("name", ALL)
def test_bf16_training_on_cuda_lowers_the_loss(name: str) -> None:
    generator = torch.Generator("cuda").manual_seed(3)
    torch.manual_seed(3)
    teacher = torch.nn.Sequential(torch.nn.Linear(SPEC.d_model, SPEC.d_mlp), torch.nn.GELU(),
                                  torch.nn.Linear(SPEC.d_mlp, SPEC.d_model)).cuda()
    cell = build_cell(name, SPEC, 8, 4, OptimiserSettings(lr=1e-3, warmup_steps=0), seed=0, device="cuda",
                      autocast_dtype=torch.bfloat16)
    losses = []
    for _ in range(60):
        x = torch.randn(256, SPEC.d_model, device="cuda", generator=generator)
        with torch.no_grad():
            y = teacher(x)
        train_step(cell, x, y)
        losses.append(cell.last_loss)
    assert cell.status == "ok", cell.error
    assert all(p.dtype == torch.float32 for p in cell.layer.parameters()), "master weights must stay fp32"
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), losses


def test_gather_dot_on_cuda_with_bf16_activations_and_fp32_table() -> None:
    generator = torch.Generator("cuda").manual_seed(4)
    x = torch.randn(200, 64, device="cuda", generator=generator).bfloat16().requires_grad_()
    table = torch.randn(300, 64, device="cuda", generator=generator).requires_grad_()
    rows = torch.randint(0, 300, (200, 12), device="cuda", generator=generator)
    weights = torch.randn(200, 12, device="cuda", generator=generator)
    fast = gather_dot(x, rows, table)
    assert fast.dtype == torch.bfloat16
    (fast.float() * weights).sum().backward()
    grads = x.grad.clone(), table.grad.clone()
    x.grad = table.grad = None
    slow = gather_dot_reference(x.float(), rows, table)
    (slow * weights).sum().backward()
    assert relative_error(fast.float(), slow) < 1e-2
    assert relative_error(grads[0].float(), x.grad.float()) < 1e-2 and relative_error(grads[1], table.grad) < 1e-2
