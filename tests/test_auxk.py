"""The opt-in AuxK term: off by default, zero while no unit is dead, equal to a direct computation for
each family, moving only dead units' parameters, exact under micro-batching, and refused where a
method has no term."""
import pytest
import torch

import methods
from bench.losses import auxk_loss
from bench.train import AuxKSettings, OptimiserSettings, build_cell, train_step
from methods.base import LayerSpec

SPEC = LayerSpec(d_model=8, d_mlp=16)
DEAD = [1, 4, 6, 9]  # of the layers' units below


def _layer(name, **overrides):
    torch.manual_seed(0)
    layer = methods.create(name, SPEC, **{"k": 2, "expansion": 8, **overrides})
    with torch.no_grad():  # no zero blocks (STC's decoder, MxD's D): every path carries signal
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    layer.constrain()
    return layer


def _dead_mask(layer):
    dead = torch.zeros(layer.n_units, dtype=torch.bool)
    dead[DEAD] = True
    return dead


def _top_dead_dense(pre, dead, k_aux):
    """The dense [T, N] code of the k_aux dead units with the largest pre-activations, ReLU'd: by
    masking the live units to -inf (not by gathering the dead columns, as the methods do)."""
    masked = pre.masked_fill(~dead, float("-inf"))
    values, index = masked.topk(min(k_aux, int(dead.sum())), dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values.clamp_min(0))


def test_auxk_is_off_by_default_and_its_term_is_zero_while_no_unit_is_dead():
    assert AuxKSettings().coef == 0 and build_cell("tc", SPEC, 2, 8, OptimiserSettings(), seed=0).aux.coef == 0
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    plain = build_cell("tc", SPEC, 2, 8, OptimiserSettings(warmup_steps=1), seed=0)
    aux = build_cell("tc", SPEC, 2, 8, OptimiserSettings(warmup_steps=1), seed=0,
                     aux=AuxKSettings(coef=1.0, k=3, dead_window=10**6))
    for _ in range(2):
        train_step(plain, x, y)
        train_step(aux, x, y)
    assert aux.last_aux_loss == 0.0
    for a, b in zip(plain.layer.parameters(), aux.layer.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["tc", "stc", "sae"])
def test_transcoder_families_dead_estimate_is_the_dead_latents_decode(name):
    layer, x = _layer(name), torch.randn(20, 8)
    dead = _dead_mask(layer)
    y_hat, codes, e_hat = layer.forward_with_aux(x, dead, 3)
    pre = x @ layer.encoder.weight.T + layer.encoder.bias
    if name == "sae":
        pre = (x - layer.b_out) @ layer.encoder.weight.T + layer.encoder.bias  # W_enc (y - b_dec) + b_enc
    torch.testing.assert_close(e_hat, _top_dead_dense(pre, dead, 3) @ layer.decoder)  # no bias, no skip
    plain_y_hat, plain_codes = layer(x)
    torch.testing.assert_close(y_hat, plain_y_hat)
    assert torch.equal(codes.indices, plain_codes.indices)


def test_mxd_dead_estimate_routes_the_residual_through_the_dead_experts():
    layer, x = _layer("mxd"), torch.randn(20, 8)
    dead = _dead_mask(layer)
    _, _, e_hat = layer.forward_with_aux(x, dead, 3)
    dense = torch.nn.functional.gelu(x @ layer.encoder.weight.T + layer.encoder.bias) @ layer.decoder  # D^T z
    gates = _top_dead_dense(x @ layer.gate.weight.T + layer.gate.bias, dead, 3)  # a_aux
    torch.testing.assert_close(e_hat, dense * (gates @ layer.expert_weights))  # (D^T z) * (C a_aux)


def test_lowrank_dead_estimate_is_the_dead_experts_sum():
    layer, x = _layer("lowrank-moe-r4"), torch.randn(20, 8)
    dead = _dead_mask(layer)
    _, _, e_hat = layer.forward_with_aux(x, dead, 3)
    gates = _top_dead_dense(x @ layer.gate.weight.T + layer.gate.bias, dead, 3)
    expected = torch.zeros(20, 8)
    for n in range(layer.n_units):  # sum_n a_n U_n V_n^T x, expert by expert
        u, v = layer.out_factors[n].T, layer.in_factors[n].T  # [d, R]
        expected += gates[:, n:n + 1] * (x @ v @ u.T)
    torch.testing.assert_close(e_hat, expected, rtol=1e-4, atol=1e-5)


def test_the_auxk_term_is_the_normalised_fit_of_the_residual():
    e_hat, e = torch.randn(10, 4), torch.randn(10, 4)
    expected = ((e_hat - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    torch.testing.assert_close(auxk_loss(e_hat, e), expected)


# Parameters (by name) holding one row per unit, and those every unit shares: the AuxK gradient must
# reach only the dead units' rows, and never a shared parameter.
PER_UNIT = {"tc": ["encoder.weight", "encoder.bias", "decoder"], "stc": ["encoder.weight", "encoder.bias", "decoder"],
            "mxd": ["gate.weight", "gate.bias", "expert_weights"],
            "mxd-glu": ["gate.weight", "gate.bias", "expert_weights"],
            "lowrank-moe-r4": ["gate.weight", "gate.bias", "in_factors", "out_factors"]}
SHARED = {"tc": ["b_out"], "stc": ["b_out", "skip.weight"], "mxd": ["encoder.weight", "encoder.bias", "decoder", "b_out"],
          "mxd-glu": ["gate_proj.weight", "up_proj.weight", "decoder", "b_out"], "lowrank-moe-r4": ["b_out"]}


@pytest.mark.parametrize("name", sorted(PER_UNIT))
def test_the_auxk_gradient_reaches_only_dead_units(name):
    layer, x = _layer(name), torch.randn(40, 8)
    y = torch.randn(40, 8)
    dead = _dead_mask(layer)
    y_hat, _, e_hat = layer.forward_with_aux(x, dead, 3)
    auxk_loss(e_hat, (y - y_hat).detach()).backward()
    params = dict(layer.named_parameters())
    for pname in PER_UNIT[name]:
        grad = params[pname].grad
        assert grad is not None and grad[dead].abs().sum() > 0, f"no AuxK gradient reaches dead rows of {pname}"
        assert grad[~dead].abs().sum() == 0, f"AuxK moved live rows of {pname}"
    for pname in SHARED[name]:
        assert params[pname].grad is None or params[pname].grad.abs().sum() == 0, f"AuxK moved shared {pname}"


def _with_dead_units(cell):
    cell.tokens_since_selected[DEAD] = cell.aux.dead_window
    return cell


@pytest.mark.parametrize("name", ["tc", "mxd", "sae"])
def test_a_micro_batched_auxk_step_has_the_whole_batch_gradient(name):
    torch.manual_seed(2)
    x, y = torch.randn(60, 8), torch.randn(60, 8)
    aux = AuxKSettings(coef=0.5, k=3, dead_window=100)
    for micro_batches in (1, 4):
        cell = _with_dead_units(build_cell(name, SPEC, 2, 8, OptimiserSettings(warmup_steps=1), seed=0, aux=aux))
        cell.layer.load_state_dict(_layer(name).state_dict())
        cell.micro_batches = micro_batches
        reference = _layer(name)  # the whole batch's loss + 0.5 AuxK, computed by the test in one piece
        source = y if name == "sae" else x
        y_hat, _, e_hat = reference.forward_with_aux(source, cell.tokens_since_selected >= 100, 3)
        e = (y - y_hat).detach()
        term = ((e_hat - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
        token_normalised = ((y_hat - y) ** 2).sum(-1) / y.norm(dim=-1)
        (token_normalised.sum() / y.numel() + 0.5 * term).backward()
        reference.project_gradients()
        train_step(cell, x, y)
        assert cell.status == "ok" and cell.last_aux_loss == pytest.approx(term.item(), rel=1e-5)
        for (pname, a), b in zip(cell.layer.named_parameters(), reference.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=f"{name} {pname} x{micro_batches}")


def test_auxk_moves_dead_units_a_plain_step_leaves_alone():
    torch.manual_seed(3)
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    plain = _with_dead_units(build_cell("tc", SPEC, 2, 8, OptimiserSettings(warmup_steps=1), seed=0))
    aux = _with_dead_units(build_cell("tc", SPEC, 2, 8, OptimiserSettings(warmup_steps=1), seed=0,
                                      aux=AuxKSettings(coef=1.0, k=3, dead_window=10)))
    chosen = plain.layer(x)[1]
    idle = [u for u in DEAD if not (chosen.indices == u).any()]
    assert idle, "the test needs a dead unit the TopK does not pick on this batch"
    before = plain.layer.decoder[idle].clone()
    train_step(plain, x, y)
    train_step(aux, x, y)
    assert torch.equal(plain.layer.decoder[idle], before)
    assert not torch.equal(aux.layer.decoder[idle], before) and aux.last_aux_loss > 0


def test_a_row_records_the_auxk_settings_and_term():
    from bench.config import RunConfig
    from bench.rows import IDENTITY_SETTINGS, cell_row, settings_row

    off = settings_row(RunConfig(), "tiny", 1, torch.device("cpu"), torch.float32, None)
    on = settings_row(RunConfig(aux_k_coef=1 / 32, aux_k=16, dead_window=1000), "tiny", 1, torch.device("cpu"),
                      torch.float32, None)
    assert (off["aux_k_coef"], off["aux_k"], off["dead_window"]) == (0.0, None, None)
    assert (on["aux_k_coef"], on["aux_k"], on["dead_window"]) == (1 / 32, 16, 1000)
    assert {"aux_k_coef", "aux_k", "dead_window"} <= set(IDENTITY_SETTINGS)
    cell = _with_dead_units(build_cell("tc", SPEC, 2, 8, OptimiserSettings(warmup_steps=1), seed=0,
                                       aux=AuxKSettings(coef=1.0, k=3, dead_window=10)))
    train_step(cell, torch.randn(32, 8), torch.randn(32, 8))
    assert cell_row(cell, on)["final_aux_loss"] == cell.last_aux_loss > 0
    assert "final_aux_loss" not in cell_row(build_cell("tc", SPEC, 2, 8, OptimiserSettings(), seed=0), off)


def test_auxk_is_refused_for_a_method_without_a_term(scratch_registry):
    from pathlib import Path

    from bench.config import RunConfig
    from bench.validation import UsageError, check_names, check_ranges

    methods.load_plugin(Path(__file__).parent / "plugins" / "dense_mlp_plugin.py")
    with pytest.raises(UsageError, match="--aux-k-coef needs methods with an AuxK term .*; dense-mlp has none"):
        check_names(RunConfig(methods=["tc", "dense-mlp"], aux_k_coef=0.1))
    check_names(RunConfig(methods=["tc", "mxd"], aux_k_coef=0.1))  # built-in methods pass
    with pytest.raises(ValueError, match="'dense-mlp' has none"):
        build_cell("dense-mlp", SPEC, 2, 8, OptimiserSettings(), seed=0, aux=AuxKSettings(coef=0.1))
    with pytest.raises(UsageError, match="--aux-k-coef must be a finite number >= 0"):
        check_ranges(RunConfig(aux_k_coef=-1.0))
    with pytest.raises(UsageError, match="--dead-window must be a positive integer"):
        check_ranges(RunConfig(dead_window=0))


def test_every_builtin_method_has_an_auxk_term():
    assert all(methods.get_method(m).cls.supports_aux() for m in methods.method_names())
