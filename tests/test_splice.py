import pytest
import torch

from bench.evaluate import CrossEntropyEvaluator, next_token_losses
from bench.models import layer_spec, mlp_module
from bench.splice import SplicedMLP, ZeroMLP, replaced_mlp, spliced, zero_ablated
from methods.base import SparseCodes, SparseLayer


class PassThrough(SparseLayer):
    """Returns its input: spliced at the MLP output site, the LM must be unchanged."""

    input_site = "mlp_output"

    def __init__(self, spec):
        from methods.base import MethodConfig

        super().__init__(spec, MethodConfig(k=1))
        self.n_units = 1
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        idx = torch.zeros(*x.shape[:-1], 1, dtype=torch.long)
        return x * self.scale, SparseCodes(torch.ones_like(idx, dtype=x.dtype), idx)


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def test_pass_through_splice_leaves_the_model_unchanged(any_arch_model):
    _, model = any_arch_model
    ids = torch.randint(0, 96, (2, 12))
    clean = _logits(model, ids)
    with spliced(model, 1, PassThrough(layer_spec(model, 1))):
        assert isinstance(mlp_module(model, 1), SplicedMLP)
        torch.testing.assert_close(_logits(model, ids), clean)
    with zero_ablated(model, 1):
        assert not torch.allclose(_logits(model, ids), clean)
    torch.testing.assert_close(_logits(model, ids), clean)


def test_the_original_mlp_comes_back_after_an_error():
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    original = mlp_module(model, 2)
    with pytest.raises(RuntimeError):
        with replaced_mlp(model, 2, ZeroMLP()):
            raise RuntimeError("boom")
    assert mlp_module(model, 2) is original


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_replayed_prefix_gives_the_full_forward_ce(any_arch_model, layer):
    """The cached-prefix evaluation must equal a plain full forward, clean and ablated."""
    _, model = any_arch_model
    contexts = torch.randint(0, 96, (5, 16))
    evaluator = CrossEntropyEvaluator(model, layer, contexts, batch_size=2)
    for replacement in (None, ZeroMLP()):
        with replaced_mlp(model, layer, replacement):
            full = next_token_losses(_logits(model, contexts), contexts).mean(dim=1).double()
        torch.testing.assert_close(evaluator.per_sequence_ce(replacement), full)


def test_next_token_losses_match_cross_entropy():
    logits, ids = torch.randn(2, 7, 50), torch.randint(0, 50, (2, 7))
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(next_token_losses(logits, ids), reference.view(2, 6))
