"""TC and STC against slow dense formulations, the shared sparse decode, and the norm constraints."""
from __future__ import annotations

import pytest
import torch

from methods import LayerSpec, SparseCodes, create
from methods.base import dense_codes, remove_parallel_gradient_, sparse_decode, topk_relu, transcoder_budget
from methods.transcoder import SkipTranscoder, Transcoder, TranscoderConfig

SPEC = LayerSpec(d_model=16, d_mlp=64)


def dense_topk_reference(pre: torch.Tensor, k: int) -> torch.Tensor:
    """TopK_k(ReLU(pre)) as a dense vector: keep entries >= the k-th largest, zero the rest."""
    z = pre.relu()
    kth = z.topk(k, dim=-1).values[..., -1:]
    return torch.where(z >= kth, z, torch.zeros_like(z))


def random_(layer: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)


def parallel_fraction(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """|cos| between each row's gradient and the row (0 once the parallel part is projected out)."""
    with torch.no_grad():
        return ((grad * rows).sum(-1) / (grad.norm(dim=-1) * rows.norm(dim=-1)).clamp_min(1e-12)).abs()


def adam_step(layer, x: torch.Tensor, lr: float = 0.05) -> None:
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr)
    y_hat, _ = layer(x)
    ((y_hat - torch.randn_like(y_hat)) ** 2).sum().backward()
    layer.project_gradients()
    optimiser.step()
    layer.constrain()


def test_tc_equals_dense_decoder_product() -> None:
    layer = create("tc", SPEC, expansion=4, k=5)
    random_(layer)
    x = torch.randn(20, 16)
    y_hat, codes = layer(x)
    z = dense_topk_reference(x @ layer.encoder.weight.T + layer.encoder.bias, 5)
    torch.testing.assert_close(dense_codes(codes, layer.n_units), z)
    torch.testing.assert_close(y_hat, z @ layer.decoder + layer.b_out)


def test_topk_relu_clips_negative_selections() -> None:
    codes = topk_relu(torch.tensor([[-3.0, -1.0, -2.0, 0.5]]), k=2)
    assert sorted(codes.values.tolist()[0]) == [0.0, 0.5]
    assert sorted(codes.indices.tolist()[0]) == [1, 3]


@pytest.mark.parametrize("lead", [(12,), (3, 4)])
def test_sparse_decode_matches_dense_product_and_gradients(lead) -> None:
    torch.manual_seed(0)
    n_units, k, d = 10, 3, 6
    indices = torch.rand(*lead, n_units).argsort(-1)[..., :k]  # distinct per token, shared across tokens
    values = torch.randn(*lead, k, requires_grad=True)
    rows = torch.randn(n_units, d, requires_grad=True)
    upstream = torch.randn(*lead, d)

    fast = sparse_decode(SparseCodes(values, indices), rows)
    (fast_values_grad, fast_rows_grad) = torch.autograd.grad((fast * upstream).sum(), (values, rows))
    slow = dense_codes(SparseCodes(values, indices), n_units) @ rows
    (slow_values_grad, slow_rows_grad) = torch.autograd.grad((slow * upstream).sum(), (values, rows))

    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast_values_grad, slow_values_grad)
    torch.testing.assert_close(fast_rows_grad, slow_rows_grad)


def test_tc_decoder_rows_stay_unit_norm() -> None:
    layer = create("tc", SPEC, expansion=4, k=8)
    x = torch.randn(64, 16)
    y_hat, _ = layer(x)
    ((y_hat - torch.randn_like(y_hat)) ** 2).sum().backward()
    layer.project_gradients()
    grad = layer.decoder.grad
    assert grad.grad_fn is None, "the projection recorded a graph into .grad"
    assert parallel_fraction(grad, layer.decoder).max() < 1e-5, "parallel gradient component survived"
    for _ in range(3):
        layer.zero_grad()
        adam_step(layer, x)
    torch.testing.assert_close(layer.decoder.norm(dim=-1), torch.ones(layer.n_units))


def test_tc_width_overrides_expansion() -> None:
    layer = create("tc", SPEC, width=40, k=2)
    assert layer.n_units == 40 and layer.n_params() == 2 * 16 * 40 + 40 + 16


def test_stc_starts_as_zero_and_equals_tc_plus_skip() -> None:
    layer = create("stc", SPEC, expansion=4, k=5)
    x = torch.randn(20, 16)
    assert torch.equal(layer(x)[0], torch.zeros(20, 16)), "W_dec and W_skip must start at zero"
    random_(layer)
    y_hat, _ = layer(x)
    z = dense_topk_reference(x @ layer.encoder.weight.T + layer.encoder.bias, 5)
    torch.testing.assert_close(y_hat, z @ layer.decoder + layer.b_out + x @ layer.skip.weight.T)
    assert layer.skip.bias is None


SHAPES = [(LayerSpec(16, 64), 4), (LayerSpec(768, 3072), 32), (LayerSpec(640, 2048), 8)]


@pytest.mark.parametrize("spec,expansion", SHAPES)
def test_stc_width_pays_for_the_skip(spec: LayerSpec, expansion: int) -> None:
    d, budget = spec.d_model, transcoder_budget(spec, expansion)
    config = TranscoderConfig(expansion=expansion)
    width = SkipTranscoder.width_for(spec, config)
    assert width < expansion * d
    # The best achievable: no other width lands closer to the budget.
    assert abs(SkipTranscoder.expected_n_params(spec, config) - budget) <= (2 * d + 1) / 2
    unmatched = TranscoderConfig(expansion=expansion, match_params=False)
    assert SkipTranscoder.width_for(spec, unmatched) == expansion * d


def test_stc_decoder_grows_from_zero_inside_the_unit_ball() -> None:
    layer = create("stc", SPEC, expansion=4, k=8)
    layer.constrain()  # zero rows: no division by zero
    assert torch.equal(layer.decoder, torch.zeros_like(layer.decoder))
    adam_step(layer, torch.randn(64, 16), lr=1e-2)
    norms = layer.decoder.norm(dim=-1)
    assert torch.isfinite(layer.decoder).all()
    assert 0 < norms.max() < 0.5, "a small first update must not be renormalised up to unit norm"


def test_stc_rows_on_the_sphere_stay_there_and_inside_rows_are_free() -> None:
    layer = create("stc", SPEC, expansion=4, k=8)
    random_(layer)
    with torch.no_grad():
        layer.decoder.mul_(3.0)
        layer.decoder[::2] /= layer.decoder[::2].norm(dim=-1, keepdim=True) * 4  # even rows: norm 1/4
    layer.constrain()
    norms = layer.decoder.norm(dim=-1)
    torch.testing.assert_close(norms[1::2], torch.ones_like(norms[1::2]))
    torch.testing.assert_close(norms[::2], torch.full_like(norms[::2], 0.25))

    y_hat, _ = layer(torch.randn(64, 16))
    ((y_hat - torch.randn_like(y_hat)) ** 2).sum().backward()
    raw = layer.decoder.grad.clone()
    layer.project_gradients()
    assert parallel_fraction(layer.decoder.grad[1::2], layer.decoder[1::2]).max() < 1e-5
    assert parallel_fraction(raw[1::2], layer.decoder[1::2]).max() > 1e-2  # there was something to remove
    torch.testing.assert_close(layer.decoder.grad[::2], raw[::2])  # inside the ball: untouched
    torch.optim.SGD(layer.parameters(), lr=1e-2).step()
    layer.constrain()
    assert layer.decoder.norm(dim=-1).max() <= 1 + 1e-6


def reference_remove_parallel_gradient(weight: torch.Tensor, grad: torch.Tensor, min_norm: float) -> torch.Tensor:
    """The slow twin of remove_parallel_gradient_: unit rows materialised, g - (g . u) u where ||w|| >= min_norm."""
    norms = weight.norm(dim=-1, keepdim=True)
    unit = weight / norms.clamp_min(1e-8)
    parallel = (grad * unit).sum(dim=-1, keepdim=True)
    return grad - torch.where(norms >= min_norm, parallel, 0.0) * unit


@pytest.mark.parametrize("shape", [(40, 16), (7, 3, 16)])  # TC/MxD rows; low-rank [N, R, d] factors
@pytest.mark.parametrize("min_norm", [0.0, 1 - 1e-4])
def test_fused_gradient_projection_matches_its_reference_twin(shape, min_norm: float) -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))
    with torch.no_grad():
        weight[:5] /= weight[:5].norm(dim=-1, keepdim=True)  # some rows on the sphere, some off it
        weight[5] = 0.0  # a zero row has no direction: left untouched
    weight.grad = torch.randn_like(weight)
    expected = reference_remove_parallel_gradient(weight.detach(), weight.grad.clone(), min_norm)
    remove_parallel_gradient_(weight, min_norm=min_norm)
    torch.testing.assert_close(weight.grad, expected)
    assert not weight.grad.requires_grad and weight.grad.grad_fn is None


def test_stc_is_a_transcoder() -> None:
    """The harness may treat STC as a TC with an extra path; keep the inheritance honest."""
    assert issubclass(SkipTranscoder, Transcoder)
