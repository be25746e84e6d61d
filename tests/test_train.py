import math

import torch

from bench.train import OptimiserSettings, build_cell, normalised_mse, train_cells, warmup_then_constant
from methods.base import LayerSpec

SPEC = LayerSpec(d_model=16, d_mlp=48)


def test_normalised_mse_is_the_nmse_formula():
    y = torch.randn(50, 16) * 3 + 1
    y_hat = y + 0.1 * torch.randn_like(y)
    expected = ((y_hat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    torch.testing.assert_close(normalised_mse(y_hat, y), expected)
    assert normalised_mse(y.mean(0).expand_as(y), y).item() == 1.0


def test_warmup_then_constant():
    f = warmup_then_constant(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_then_constant(0)(0) == 1.0


TEACHER = torch.randn(16, 16, generator=torch.Generator().manual_seed(123)) / 4


def _teacher_batches(n, seed=0):
    """Batches of one fixed teacher y = ReLU(x W); ``seed`` only changes the inputs."""
    g = torch.Generator().manual_seed(seed)
    w = TEACHER
    for _ in range(n):
        x = torch.randn(256, 16, generator=g)
        yield x, torch.relu(x @ w)


def test_cells_learn_a_teacher_and_share_the_batches():
    settings = OptimiserSettings(lr=3e-3, warmup_steps=5)
    cells = [build_cell(m, SPEC, k, 4, settings, seed=0) for m in ("tc", "mxd") for k in (2, 8)]
    x, y = next(_teacher_batches(1, seed=9))
    before = [normalised_mse(c.layer(x)[0], y).item() for c in cells]
    train_cells(cells, _teacher_batches(150))
    after = [normalised_mse(c.layer(x)[0], y).item() for c in cells]
    assert all(c.steps == 150 and c.tokens == 150 * 256 and c.status == "ok" for c in cells)
    assert all(a < 0.5 * b for a, b in zip(after, before)), (before, after)


def test_cell_init_depends_only_on_the_seed():
    settings = OptimiserSettings()
    a = build_cell("tc", SPEC, 4, 4, settings, seed=3)
    build_cell("mxd", SPEC, 4, 4, settings, seed=7)
    b = build_cell("tc", SPEC, 4, 4, settings, seed=3)
    assert torch.equal(a.layer.encoder.weight, b.layer.encoder.weight)


def test_a_diverging_cell_fails_alone():
    settings = OptimiserSettings(lr=1e-3, warmup_steps=1)
    good, bad = (build_cell("tc", SPEC, 4, 4, settings, seed=0) for _ in range(2))
    with torch.no_grad():
        bad.layer.b_out.fill_(math.nan)
    train_cells([good, bad], _teacher_batches(3))
    assert good.status == "ok" and good.steps == 3
    assert bad.status == "failed" and "loss became nan at step 0" in bad.error


def test_an_exploding_cell_is_stopped_as_diverged():
    cell = build_cell("tc", SPEC, 4, 4, OptimiserSettings(warmup_steps=1), seed=0)
    with torch.no_grad():
        cell.layer.b_out.fill_(1e6)
    train_cells([cell], _teacher_batches(2))
    assert cell.status == "failed" and "diverged" in cell.error and cell.steps == 0


def test_bf16_autocast_keeps_fp32_master_weights_and_learns():
    settings = OptimiserSettings(lr=3e-3, warmup_steps=5)
    cell = build_cell("mxd", SPEC, 8, 4, settings, seed=0, autocast_dtype=torch.bfloat16)
    x, y = next(_teacher_batches(1, seed=9))
    before = normalised_mse(cell.layer(x)[0], y).item()
    train_cells([cell], _teacher_batches(100))
    assert all(p.dtype == torch.float32 for p in cell.layer.parameters())
    assert cell.status == "ok" and normalised_mse(cell.layer(x)[0], y).item() < 0.5 * before


def test_out_of_memory_splits_the_batch_and_keeps_the_gradient():
    """After an OOM the step is retried in pieces; the update equals the one-piece update."""
    settings = OptimiserSettings(lr=1e-3, warmup_steps=1)
    reference = build_cell("mxd", SPEC, 4, 4, settings, seed=0)
    flaky = build_cell("mxd", SPEC, 4, 4, settings, seed=0)
    real_forward = flaky.layer.forward

    def forward_needing_small_batches(x):
        if len(x) > 64:
            raise torch.OutOfMemoryError("simulated")
        return real_forward(x)

    flaky.forward = forward_needing_small_batches
    notices = []
    x, y = next(_teacher_batches(1))
    train_cells([reference], [(x, y)])
    train_cells([flaky], [(x, y)], on_notice=notices.append)
    assert flaky.micro_batches == 4 and flaky.status == "ok" and flaky.steps == 1
    assert len(notices) == 2 and "in 4 pieces (same effective batch)" in notices[-1]
    for a, b in zip(reference.layer.parameters(), flaky.layer.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_out_of_memory_at_one_token_fails_the_cell_only():
    cell = build_cell("tc", SPEC, 4, 4, OptimiserSettings(), seed=0)
    cell.forward = lambda x: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated"))
    train_cells([cell], [(torch.randn(4, 16), torch.randn(4, 16))])
    assert cell.status == "failed" and "out of memory" in cell.error


def test_compiled_cells_train_like_eager_ones():
    """`--compile`: the torch.compile'd twin takes the same steps (CPU inductor; about 20 s)."""
    from bench.train import train_step

    spec = LayerSpec(16, 32, gated=True, activation="gelu_pytorch_tanh")
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    for method in ("tc", "mxd"):
        compiled = build_cell(method, spec, 4, 4, OptimiserSettings(warmup_steps=1), seed=0, compile=True)
        eager = build_cell(method, spec, 4, 4, OptimiserSettings(warmup_steps=1), seed=0, compile=False)
        assert compiled.forward is not compiled.layer and eager.compute is eager.layer
        for _ in range(3):
            train_step(compiled, x, y)
            train_step(eager, x, y)
        assert compiled.status == eager.status == "ok" and compiled.steps == 3
        for a, b in zip(compiled.layer.parameters(), eager.layer.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_adamw_steps_like_the_reference_loop():
    """bench.train's fused AdamW is a fast path: its updates equal torch's per-tensor loop."""
    from bench.train import adamw

    torch.manual_seed(0)
    fused_params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    loop_params = [torch.nn.Parameter(p.detach().clone()) for p in fused_params]
    settings = OptimiserSettings(lr=1e-2)
    fused = adamw(fused_params, settings)
    assert fused.defaults["fused"]
    loop = torch.optim.AdamW(loop_params, lr=1e-2, betas=settings.betas, weight_decay=0.0, foreach=False)
    for _ in range(4):
        grads = [torch.randn_like(p) for p in fused_params]
        for params, optimiser in ((fused_params, fused), (loop_params, loop)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimiser.step()
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b)
