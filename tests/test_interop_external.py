"""methods/external.py: the JumpReLU/ReLU layers that carry other libraries' dictionaries."""
from __future__ import annotations

import itertools

import pytest
import torch

from methods import expand_method_names, method_names
from methods.base import LayerSpec, dense_codes
from methods.external import ThresholdAutoencoder, ThresholdConfig, ThresholdTranscoder

SPEC = LayerSpec(8, 32)


def _layer(cls=ThresholdTranscoder, jump=True, skip=False, width=12):
    layer = cls(SPEC, ThresholdConfig(width=width, jump=jump, skip=skip))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return layer


def test_never_registered_so_all_methods_never_trains_them():
    assert not {"external-jumprelu-transcoder", "external-relu-sae"} & set(method_names())
    assert all("external" not in name for name in expand_method_names(["all"]))


@pytest.mark.parametrize("cls,jump,skip", list(itertools.product((ThresholdTranscoder, ThresholdAutoencoder),
                                                                  (True, False), (True, False))))
def test_parameter_count_matches_the_closed_form(cls, jump, skip):
    layer = _layer(cls, jump, skip)
    d, n = SPEC.d_model, 12
    assert layer.n_params() == cls.expected_n_params(SPEC, layer.config)
    assert layer.n_params() == 2 * d * n + n + d + (n if jump else 0) + (d * d if skip else 0)
    assert layer.n_units == n and layer.config.k == n
    assert layer.to_config()["config"]["width"] == n


def test_codes_list_exactly_the_active_units_and_pad_with_zeros():
    layer = _layer()
    x = torch.randn(2, 5, SPEC.d_model, generator=torch.Generator().manual_seed(1))  # [batch, seq, d] as spliced
    pre = x @ layer.encoder.weight.T + layer.encoder.bias
    z = pre.relu() * (pre > layer.threshold)  # JumpReLU by its definition
    y_hat, codes = layer(x)
    assert codes.values.shape[:2] == (2, 5)
    assert codes.values.shape[-1] == max(int((z != 0).sum(-1).max()), 1)  # as wide as the busiest token
    torch.testing.assert_close(dense_codes(codes, 12), z)
    torch.testing.assert_close(y_hat, z @ layer.decoder + layer.b_out)


def test_a_token_with_no_active_unit_gets_one_zero_code():
    layer = _layer(jump=False)
    with torch.no_grad():
        layer.encoder.bias.fill_(-1e6)  # nothing can fire
    y_hat, codes = layer(torch.randn(3, SPEC.d_model))
    assert codes.values.shape == (3, 1) and torch.equal(codes.values, torch.zeros(3, 1))
    torch.testing.assert_close(y_hat, layer.b_out.expand(3, -1))


def test_the_sae_reads_the_mlp_output_and_subtracts_its_input_shift():
    layer = _layer(ThresholdAutoencoder, jump=False)
    with torch.no_grad():
        layer.input_shift.copy_(layer.b_out)
    y = torch.randn(4, SPEC.d_model)
    pre = (y - layer.b_out) @ layer.encoder.weight.T + layer.encoder.bias
    assert layer.input_site == "mlp_output"
    torch.testing.assert_close(layer(y)[0], pre.relu() @ layer.decoder + layer.b_out)


@pytest.mark.parametrize("cls,jump", list(itertools.product((ThresholdTranscoder, ThresholdAutoencoder), (True, False))))
def test_saved_under_the_interop_name_it_loads_back_as_the_same_function(tmp_path, cls, jump):
    """bench eval --load saves the converted layer in the run; later commands load it through load_layer."""
    from methods import load_layer, save_layer

    layer = _layer(cls, jump=jump)
    with torch.no_grad():
        layer.input_shift.normal_()  # a buffer, not a parameter: it must travel too
    kind = "sae" if cls is ThresholdAutoencoder else "transcoder"
    layer.name = f"external-{'jumprelu' if jump else 'relu'}-{kind}"  # as bench.interop names it
    loaded = load_layer(save_layer(layer, tmp_path / "c"))
    assert type(loaded) is cls and loaded.name == layer.name
    x = torch.randn(6, SPEC.d_model, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loaded(x)[0], layer(x)[0])
