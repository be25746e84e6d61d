"""The training losses (bench.losses): each against a direct computation, the post-norm loss against
the RMSNorm formula, micro-batched steps against one whole-batch gradient, and the row record."""
import math

import pytest
import torch

from bench.losses import LOSSES, LossError, NormalisedMSELoss, PostNormLoss, TokenNormalisedLoss, make_loss
from bench.train import OptimiserSettings, build_cell, train_step
from methods.base import LayerSpec
from tests.conftest import tiny_model

SPEC = LayerSpec(d_model=16, d_mlp=48)


def _batch(tokens=40, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(tokens, d, generator=g) * torch.rand(tokens, 1, generator=g) * 3  # per-token scales differ
    return y + 0.3 * torch.randn(tokens, d, generator=g), y


def test_token_normalised_loss_is_each_tokens_error_over_its_own_norm():
    y_hat, y = _batch()
    total = 0.0
    for t in range(len(y)):  # written out token by token, in float64
        error = sum((float(y_hat[t, i]) - float(y[t, i])) ** 2 for i in range(y.shape[1]))
        total += error / math.sqrt(sum(float(v) ** 2 for v in y[t]))
    expected = total / y.numel()  # a mean over tokens AND dimensions
    assert TokenNormalisedLoss()(y_hat, y).item() == pytest.approx(expected, rel=1e-5)
    # divided by the norm, not the squared norm: doubling y and the error doubles the loss
    assert TokenNormalisedLoss()(2 * y_hat, 2 * y).item() == pytest.approx(2 * expected, rel=1e-5)


def test_token_normalised_loss_scales_a_tokens_relative_error_by_its_norm_not_its_square():
    """Why this loss: a 100 % error on a token whose output is 10^4 times smaller costs 10^-4 as much,
    where a batch NMSE (and any squared error) makes it 10^-8 as much: tiny outputs are not drowned."""
    y = torch.stack([torch.full((4,), 100.0), torch.full((4,), 0.01)])
    off_small, off_large = y.clone(), y.clone()
    off_small[1] *= 2  # 100 % error on the small token only
    off_large[0] *= 2  # 100 % error on the large token only
    loss = TokenNormalisedLoss()
    assert loss(off_small, y).item() == pytest.approx(4e-4 / 0.02 / 8)  # ||e||^2 / ||y|| / (T d)
    assert loss(off_large, y).item() == pytest.approx(4e4 / 200 / 8)
    assert loss(off_small, y).item() / loss(off_large, y).item() == pytest.approx(1e-4)
    nmse = NormalisedMSELoss()
    assert nmse(off_small, y).item() / nmse(off_large, y).item() == pytest.approx(1e-8)


def test_a_zero_output_token_gives_a_finite_loss():
    y = torch.zeros(3, 4)
    y[0] = 1.0
    assert torch.isfinite(TokenNormalisedLoss()(y.clone(), y))
    assert TokenNormalisedLoss()(y.clone(), y).item() == 0.0


def test_nmse_loss_is_the_batch_ratio():
    y_hat, y = _batch()
    mean = [sum(float(y[t, i]) for t in range(len(y))) / len(y) for i in range(y.shape[1])]
    error = sum((float(a) - float(b)) ** 2 for a, b in zip(y_hat.flatten(), y.flatten()))
    spread = sum((float(y[t, i]) - mean[i]) ** 2 for t in range(len(y)) for i in range(y.shape[1]))
    assert NormalisedMSELoss()(y_hat, y).item() == pytest.approx(error / spread, rel=1e-5)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_post_norm_loss_is_the_error_after_the_blocks_own_rmsnorm(arch):
    model = tiny_model(arch)
    norm = model.model.layers[1].post_feedforward_layernorm
    with torch.no_grad():
        norm.weight.normal_(0.0, 0.5)  # Gemma scales by (1 + w): a random w makes the gain matter
    y_hat, y = _batch(d=32)
    w, eps = norm.weight.detach(), norm.eps

    def rmsnorm(v):  # Gemma's RMSNorm, by hand: v / sqrt(mean(v^2) + eps) * (1 + w)
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)

    expected = (rmsnorm(y_hat) - rmsnorm(y)).pow(2).mean()
    loss = make_loss("post-norm", model, 1)
    assert isinstance(loss, PostNormLoss)
    torch.testing.assert_close(loss(y_hat, y), expected)
    assert not any(p.requires_grad for p in loss.norm.parameters())  # frozen: training never moves the LM
    assert loss.norm.weight.dtype == torch.float32 and loss.norm is not norm


def test_post_norm_loss_follows_the_norm_of_the_chosen_layer():
    model = tiny_model("gemma3")
    with torch.no_grad():
        model.model.layers[2].post_feedforward_layernorm.weight.fill_(3.0)
    y_hat, y = _batch(d=32)
    assert make_loss("post-norm", model, 2)(y_hat, y).item() == pytest.approx(
        16 * make_loss("post-norm", model, 1)(y_hat, y).item(), rel=1e-5)  # gain 1 + 3 = 4 on a zero-w norm


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_post_norm_is_refused_in_one_line_without_a_post_mlp_norm(arch):
    with pytest.raises(LossError) as caught:
        make_loss("post-norm", tiny_model(arch), 1)
    message = str(caught.value)
    assert "\n" not in message and "post_feedforward_layernorm" in message and "has none" in message


def test_an_unknown_loss_is_refused():
    with pytest.raises(LossError, match="unknown loss 'mse'; choose from token-normalised, nmse, post-norm"):
        make_loss("mse")


def _gemma3_loss(name):
    if name != "post-norm":
        return make_loss(name)
    model = tiny_model("gemma3", d=16)
    with torch.no_grad():
        model.model.layers[1].post_feedforward_layernorm.weight.normal_(0.0, 0.5)
    return make_loss(name, model, 1)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("method", ["tc", "mxd", "sae"])
def test_micro_batched_steps_have_the_whole_batch_gradient(name, method):
    """An OOM retry splits the batch: the accumulated gradient must be the whole batch's, which the
    test computes itself (one loss over the whole batch, one backward, the method's projection)."""
    loss = _gemma3_loss(name)
    torch.manual_seed(1)
    x = torch.randn(96, 16)
    y = torch.relu(x @ torch.randn(16, 16)) * torch.rand(96, 1) + 0.1 * torch.randn(96, 16)
    grads = []
    for micro_batches in (1, 3, 8):
        cell = build_cell(method, SPEC, 4, 4, OptimiserSettings(warmup_steps=1), seed=0, loss=loss)
        with torch.no_grad():  # a non-zero decoder, so every parameter gets a gradient
            for p in cell.layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        cell.micro_batches = micro_batches
        reference = build_cell(method, SPEC, 4, 4, OptimiserSettings(warmup_steps=1), seed=0)
        reference.layer.load_state_dict(cell.layer.state_dict())
        source = y if method == "sae" else x
        loss(reference.layer(source)[0], y).backward()
        reference.layer.project_gradients()
        train_step(cell, x, y)
        assert cell.status == "ok"
        for (pname, a), b in zip(cell.layer.named_parameters(), reference.layer.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=f"{name} {pname} {micro_batches}")
        grads.append([p.grad.clone() for p in cell.layer.parameters()])


@pytest.mark.parametrize("name", LOSSES)
def test_final_train_loss_is_the_chosen_loss_before_the_step(name):
    loss = _gemma3_loss(name)
    x, y = _batch(tokens=64, seed=3)
    cell = build_cell("tc", SPEC, 4, 4, OptimiserSettings(warmup_steps=1), seed=0, loss=loss)
    cell.micro_batches = 2
    with torch.no_grad():
        expected = loss(cell.layer(x)[0], y).item()
    train_step(cell, x, y)
    assert cell.last_loss == pytest.approx(expected, rel=1e-5)


def test_each_loss_trains_a_teacher():
    """Each loss halves itself on a teacher; the two on the MLP output's own scale halve the NMSE too
    (post-norm cannot: RMSNorm ignores each token's scale, so only the direction of y_hat is fitted)."""
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(16, 16, generator=g) / 4
    batches = [(x, torch.relu(x @ teacher)) for x in (torch.randn(128, 16, generator=g) for _ in range(40))]
    x, y = batches[0]
    for name in LOSSES:
        loss = _gemma3_loss(name)
        cell = build_cell("tc", SPEC, 8, 4, OptimiserSettings(lr=3e-3, warmup_steps=5), seed=0, loss=loss)
        with torch.no_grad():
            before = [loss(cell.layer(x)[0], y).item(), NormalisedMSELoss()(cell.layer(x)[0], y).item()]
        for xb, yb in batches:
            train_step(cell, xb, yb)
        with torch.no_grad():
            after = [loss(cell.layer(x)[0], y).item(), NormalisedMSELoss()(cell.layer(x)[0], y).item()]
        assert cell.status == "ok" and after[0] < 0.5 * before[0], (name, before, after)
        assert name == "post-norm" or after[1] < 0.5 * before[1], (name, before, after)


def test_a_run_records_its_loss_and_treats_it_as_identity():
    from bench.config import RunConfig
    from bench.rows import IDENTITY_SETTINGS, first_difference, settings_row
    from bench.validation import UsageError, check_types

    assert "loss" in IDENTITY_SETTINGS and RunConfig().loss == "token-normalised"
    row = settings_row(RunConfig(loss="nmse"), "tiny", 1, torch.device("cpu"), torch.float32, None)
    assert row["loss"] == "nmse"
    assert first_difference({**row, "loss": "token-normalised"}, row) == "loss 'token-normalised' -> 'nmse'"
    with pytest.raises(UsageError, match="--loss must be one of token-normalised, nmse, post-norm, got 'mse'"):
        check_types(RunConfig(loss="mse"))
