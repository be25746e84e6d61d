import math

import torch

from bench.evaluate import compare_ce, reconstruction_metrics
from methods import create
from methods.base import LayerSpec, dense_codes


def test_reconstruction_metrics_match_a_direct_computation():
    torch.manual_seed(0)
    layer = create("tc", LayerSpec(8, 16), k=3, expansion=4).eval()
    x, y = torch.randn(100, 8), torch.randn(100, 8)
    metrics = reconstruction_metrics(layer, x, y, batch_size=7)
    y_hat, codes = layer(x)
    dense = dense_codes(codes, layer.n_units)
    assert math.isclose(metrics.nmse, (((y_hat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()).item(), rel_tol=1e-5)
    assert math.isclose(metrics.l0, (dense != 0).sum(1).float().mean().item(), rel_tol=1e-6)
    assert metrics.dead_units == int(((dense != 0).sum(0) == 0).sum())
    assert metrics.l0 <= 3


def test_dead_units_counts_units_never_active():
    layer = create("tc", LayerSpec(8, 16), k=2, expansion=4).eval()
    with torch.no_grad():
        layer.encoder.weight.zero_()
        layer.encoder.bias.fill_(-1.0)
        layer.encoder.bias[:3] = 1.0  # only units 0..2 can ever fire
    metrics = reconstruction_metrics(layer, torch.randn(20, 8), torch.randn(20, 8))
    assert metrics.dead_units == layer.n_units - 2 or metrics.dead_units == layer.n_units - 3
    assert metrics.l0 == 2.0


def test_compare_ce():
    clean = torch.tensor([3.0, 3.2, 2.8, 3.0], dtype=torch.float64)
    spliced = clean + torch.tensor([0.1, 0.2, 0.1, 0.2], dtype=torch.float64)
    zero = clean + 1.0
    result = compare_ce(clean, spliced, zero)
    assert math.isclose(result.delta_ce, 0.15)
    assert math.isclose(result.ce_recovered, 0.85)
    assert math.isclose(result.delta_ce_stderr, torch.tensor([0.1, 0.2, 0.1, 0.2]).std().item() / 2, rel_tol=1e-6)
